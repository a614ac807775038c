//! The traffic that runs while an event happens: a 1 ms ping stream, a
//! 50 kpps UDP stream across the overlay and an HTTP loop through a
//! published port, and what each lost.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vxmesh_netns::Testbed;

/// What one event cost the traffic.
#[derive(Debug, Default, Clone)]
pub(super) struct Cost {
    pub(super) ping_gap_ms: f64,
    pub(super) pings_lost: u64,
    pub(super) pings_sent: u64,
    pub(super) udp_lost: u64,
    pub(super) udp_sent: u64,
    pub(super) http_failed: u64,
    pub(super) http_ok: u64,
}

/// Runs the three streams while `event` happens; `port` is the published
/// port the HTTP loop asks.
pub(super) fn measure(
    tb: &Testbed,
    port: u16,
    event: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Cost> {
    let stop = Arc::new(AtomicBool::new(false));
    // The UDP sink on h1's overlay address: the highest gap in sequence
    // numbers is not needed, only how many arrived.
    let got = Arc::new(AtomicU64::new(0));
    let sink = tb.thread_in_ns(&tb.ns("h1"), {
        let (stop, got) = (stop.clone(), got.clone());
        move || -> std::io::Result<()> {
            let s = UdpSocket::bind("10.0.9.1:9000")?;
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            let mut buf = [0u8; 2048];
            // Drains for a moment after the sender stopped.
            let mut quiet_since = None;
            loop {
                match s.recv(&mut buf) {
                    Ok(_) => {
                        got.fetch_add(1, Ordering::Relaxed);
                        quiet_since = None;
                    }
                    Err(_) if stop.load(Ordering::Relaxed) => {
                        let q = *quiet_since.get_or_insert_with(Instant::now);
                        if q.elapsed() > Duration::from_millis(300) {
                            return Ok(());
                        }
                    }
                    Err(_) => {}
                }
            }
        }
    })?;
    let sender = tb.thread_in_ns(&tb.ns("h2"), {
        let stop = stop.clone();
        move || -> std::io::Result<u64> {
            let s = UdpSocket::bind("10.0.9.2:0")?;
            let to = SocketAddrV4::new(Ipv4Addr::new(10, 0, 9, 1), 9000);
            let payload = [0u8; 64];
            let start = Instant::now();
            let mut sent = 0u64;
            // 50 datagrams every millisecond: 50 kpps.
            while !stop.load(Ordering::Relaxed) {
                let due = (start.elapsed().as_micros() as u64) / 20;
                while sent < due {
                    let _ = s.send_to(&payload, to);
                    sent += 1;
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            Ok(sent)
        }
    })?;
    let pinger = tb.thread_in_ns(&tb.ns("h2"), {
        let stop = stop.clone();
        move || ping_stream(Ipv4Addr::new(10, 0, 9, 1), &stop)
    })?;
    let http = tb.thread_in_ns(&tb.ns("cl"), {
        let stop = stop.clone();
        move || {
            let (mut ok, mut failed) = (0u64, 0u64);
            let to = SocketAddr::from(([198, 18, 0, 1], port));
            while !stop.load(Ordering::Relaxed) {
                let r = crate::http::get(to, "/", Duration::from_secs(5));
                if r.is_ok_and(|r| r.status == 200) {
                    ok += 1;
                } else {
                    failed += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (ok, failed)
        }
    })?;
    std::thread::sleep(Duration::from_millis(1000));
    let r = event();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let udp_sent = sender.join().expect("sender")??;
    sink.join().expect("sink")??;
    let (pings_sent, pings_got, gap) = pinger.join().expect("pinger")??;
    let (http_ok, http_failed) = http.join().expect("http")?;
    r?;
    Ok(Cost {
        ping_gap_ms: gap.as_secs_f64() * 1000.0,
        pings_lost: pings_sent - pings_got,
        pings_sent,
        udp_lost: udp_sent.saturating_sub(got.load(Ordering::Relaxed)),
        udp_sent,
        http_failed,
        http_ok,
    })
}

/// The ICMP checksum of `b` (RFC 1071).
fn icmp_csum(b: &[u8]) -> u16 {
    let mut s: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// Echo requests every millisecond until `stop`: (sent, answered, the
/// longest time between two answers).
fn ping_stream(to: Ipv4Addr, stop: &AtomicBool) -> std::io::Result<(u64, u64, Duration)> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::io::Read;
    let mut s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
    s.set_nonblocking(true)?;
    let dst = SocketAddrV4::new(to, 0).into();
    let id = (std::process::id() as u16) ^ 0x4d4d;
    let (mut sent, mut got) = (0u64, 0u64);
    let mut last = Instant::now();
    let mut gap = Duration::ZERO;
    let start = Instant::now();
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        let due = start.elapsed().as_millis() as u64;
        while sent <= due {
            let mut pkt = [0u8; 16];
            pkt[0] = 8;
            pkt[4..6].copy_from_slice(&id.to_be_bytes());
            pkt[6..8].copy_from_slice(&(sent as u16).to_be_bytes());
            let c = icmp_csum(&pkt);
            pkt[2..4].copy_from_slice(&c.to_be_bytes());
            let _ = s.send_to(&pkt, &dst);
            sent += 1;
        }
        while let Ok(n) = s.read(&mut buf) {
            // A raw socket hands over the IP header too.
            let ihl = usize::from(buf[0] & 0x0f) * 4;
            if n < ihl + 8 || buf[12..16] != to.octets() {
                continue;
            }
            let icmp = &buf[ihl..n];
            if icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() {
                got += 1;
                let now = Instant::now();
                gap = gap.max(now - last);
                last = now;
            }
        }
        // Pacing, not synchronisation.
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok((sent, got, gap))
}
