//! The underlay sockets. One socket per receiving worker is bound to
//! `<data-path address>:<port>` (with SO_REUSEPORT when there are several:
//! the kernel spreads datagrams over them by a hash of the 4-tuple, and the
//! sender's outer source port comes from the inner flow, so a flow stays on
//! one socket and one worker); a small pool of sending sockets, also
//! bound to the data-path address (so the outer source address is always
//! the node's), gives each inner flow its own outer source port, the way the
//! kernel's `udp_flow_src_port` spreads flows for ECMP and RSS.
//!
//! Why a pool and not a raw socket: ordinary UDP sockets keep UDP GSO/GRO
//! and batched `sendmmsg` open for the offload work, and need no
//! `CAP_NET_RAW`. The price is that the source port takes one of `pool`
//! values (ephemeral ports chosen by the kernel) instead of any port in the
//! range.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

use crate::wire::flow;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnderlayConfig {
    /// The node's data-path address: the only address bound.
    pub local: Ipv4Addr,
    /// VXLAN destination (and listening) port; 4789 by default.
    pub port: u16,
    /// Number of sending sockets (distinct outer source ports).
    pub source_ports: usize,
    /// Number of receiving sockets, one per underlay worker; at least 1.
    pub receivers: usize,
    /// Socket buffer sizes in bytes.
    pub buffer_bytes: usize,
}

impl UnderlayConfig {
    pub fn new(local: Ipv4Addr) -> UnderlayConfig {
        UnderlayConfig {
            local,
            port: crate::wire::vxlan::DEFAULT_PORT,
            source_ports: 16,
            receivers: 1,
            buffer_bytes: 4 << 20,
        }
    }
}

#[derive(Debug)]
pub struct Underlay {
    rx: Vec<UdpSocket>,
    tx: Vec<UdpSocket>,
    port: u16,
    local: Ipv4Addr,
    /// UDP_SEGMENT works on these sockets (cleared on the first refusal).
    gso: std::sync::atomic::AtomicBool,
    gro_on: std::sync::atomic::AtomicBool,
}

fn socket(local: Ipv4Addr, port: u16, buffer: usize, reuse: bool) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    if reuse {
        s.set_reuse_port(true)?;
    }
    // Best effort: the kernel clamps to net.core.[rw]mem_max.
    let _ = s.set_recv_buffer_size(buffer);
    let _ = s.set_send_buffer_size(buffer);
    s.bind(&SocketAddr::V4(SocketAddrV4::new(local, port)).into())
        .map_err(|e| io::Error::new(e.kind(), format!("binding {local}:{port}: {e}")))?;
    s.set_nonblocking(true)?;
    super::sys::clear_dont_fragment(&s)?;
    Ok(s.into())
}

/// The `n` underlay sockets of `kind` a predecessor handed over, if all of
/// them are there and bound where `fits` says; otherwise none (what was
/// there closes and the sockets are bound afresh).
fn inherited(kind: &str, n: usize, fits: impl Fn(&SocketAddrV4) -> bool) -> Option<Vec<UdpSocket>> {
    let mut got = Vec::new();
    while let Some(fd) = super::inherit::take(&super::inherit::underlay_name(kind, got.len())) {
        got.push(UdpSocket::from(fd));
    }
    if got.is_empty() {
        return None;
    }
    let ok = got.len() == n
        && got.iter().all(|s| {
            matches!(s.local_addr(), Ok(SocketAddr::V4(a)) if fits(&a))
                && s.set_nonblocking(true).is_ok()
        });
    if !ok {
        tracing::warn!(
            kind,
            inherited = got.len(),
            want = n,
            "inherited underlay sockets do not fit the config; binding afresh"
        );
        return None;
    }
    tracing::info!(kind, sockets = n, "underlay sockets taken over");
    Some(got)
}

impl Underlay {
    /// Binds the sockets, or takes the ones a predecessor handed over
    /// ([`super::inherit`]): the receivers then keep what queued in their
    /// buffers while the daemon changed hands.
    pub fn bind(cfg: &UnderlayConfig) -> io::Result<Underlay> {
        let n = cfg.receivers.max(1);
        let rx_want = SocketAddrV4::new(cfg.local, cfg.port);
        let rx_inherited = inherited("rx", n, |a| *a == rx_want);
        let rx = match rx_inherited {
            Some(rx) => rx,
            None => {
                if n > 1 {
                    // A plain bind first: SO_REUSEPORT would let a second
                    // daemon on the same address share the port silently
                    // instead of failing.
                    drop(socket(cfg.local, cfg.port, 0, false)?);
                }
                (0..n)
                    .map(|_| socket(cfg.local, cfg.port, cfg.buffer_bytes, n > 1))
                    .collect::<io::Result<Vec<_>>>()?
            }
        };
        let m = cfg.source_ports.max(1);
        let tx = match inherited("tx", m, |a| *a.ip() == cfg.local) {
            Some(tx) => tx,
            None => (0..m)
                .map(|_| socket(cfg.local, 0, cfg.buffer_bytes, false))
                .collect::<io::Result<Vec<_>>>()?,
        };
        Ok(Underlay {
            rx,
            tx,
            port: cfg.port,
            local: cfg.local,
            gso: std::sync::atomic::AtomicBool::new(true),
            gro_on: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Every socket's descriptor, named for a successor.
    pub fn descriptors(&self) -> Vec<(String, std::os::fd::BorrowedFd<'_>)> {
        use std::os::fd::AsFd;
        let rx = self.rx.iter().enumerate();
        let tx = self.tx.iter().enumerate();
        rx.map(|(i, s)| (super::inherit::underlay_name("rx", i), s.as_fd()))
            .chain(tx.map(|(i, s)| (super::inherit::underlay_name("tx", i), s.as_fd())))
            .collect()
    }

    /// Receiving socket `i` (one per underlay worker).
    pub fn rx(&self, i: usize) -> &UdpSocket {
        &self.rx[i % self.rx.len()]
    }

    /// Number of receiving sockets.
    pub fn receivers(&self) -> usize {
        self.rx.len()
    }

    /// Asks the kernel to hand over runs of datagrams from one sender as
    /// one buffer (UDP_GRO) on every receiving socket; [`Underlay::recv`]
    /// reports the stride. False where the kernel refuses.
    pub fn enable_gro(&self) -> bool {
        let ok = self.rx.iter().all(|s| {
            nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::UdpGroSegment, &true).is_ok()
        });
        self.gro_on.store(ok, std::sync::atomic::Ordering::Relaxed);
        ok
    }

    /// True when UDP_GRO is on for the receiving socket.
    pub fn gro(&self) -> bool {
        self.gro_on.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Receives from socket `i` into `buf`: bytes, sender, and the datagram size when the
    /// kernel coalesced several of the same size (UDP_GRO) into `buf`.
    pub fn recv(
        &self,
        i: usize,
        buf: &mut [u8],
        cmsg: &mut [u8],
    ) -> io::Result<(usize, Ipv4Addr, Option<usize>)> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrIn};
        let mut iov = [std::io::IoSliceMut::new(buf)];
        let msg = recvmsg::<SockaddrIn>(
            std::os::fd::AsRawFd::as_raw_fd(self.rx(i)),
            &mut iov,
            Some(cmsg),
            MsgFlags::empty(),
        )
        .map_err(io::Error::from)?;
        let mut seg = None;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::UdpGroSegments(s) = c {
                    seg = usize::try_from(s).ok().filter(|s| *s > 0);
                }
            }
        }
        let from = msg.address.map(|a| a.ip()).unwrap_or(Ipv4Addr::UNSPECIFIED);
        Ok((msg.bytes, from, seg))
    }

    pub fn local(&self) -> Ipv4Addr {
        self.local
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sends one VXLAN datagram to `peer`, from the source port that the
    /// inner flow hash picks.
    pub fn send(&self, flow_hash: u32, peer: Ipv4Addr, datagram: &[u8]) -> io::Result<usize> {
        let i = flow::scale(flow_hash, self.tx.len() as u32) as usize;
        self.tx[i].send_to(datagram, SocketAddrV4::new(peer, self.port))
    }

    /// Sends `data`, datagrams of `seg` bytes back to back (the last may be
    /// shorter), in one `sendmsg` with UDP_SEGMENT. `Unsupported` when the
    /// socket has no UDP GSO: after the first refusal it is not tried
    /// again, and the caller sends the datagrams one by one.
    pub fn send_gso(
        &self,
        flow_hash: u32,
        peer: Ipv4Addr,
        data: &[u8],
        seg: usize,
    ) -> io::Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.gso.load(Relaxed) {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        let i = flow::scale(flow_hash, self.tx.len() as u32) as usize;
        let dst = SocketAddrV4::new(peer, self.port);
        let size = seg as u16;
        let cmsg = [nix::sys::socket::ControlMessage::UdpGsoSegments(&size)];
        let iov = [std::io::IoSlice::new(data)];
        let addr = nix::sys::socket::SockaddrIn::from(dst);
        match nix::sys::socket::sendmsg(
            std::os::fd::AsRawFd::as_raw_fd(&self.tx[i]),
            &iov,
            &cmsg,
            nix::sys::socket::MsgFlags::empty(),
            Some(&addr),
        ) {
            Ok(_) => Ok(()),
            Err(nix::errno::Errno::EAGAIN) => Err(io::Error::from(io::ErrorKind::WouldBlock)),
            Err(e) => {
                tracing::warn!(error = %e, "UDP GSO refused; sending datagrams one by one");
                self.gso.store(false, Relaxed);
                Err(io::Error::from(io::ErrorKind::Unsupported))
            }
        }
    }

    /// True while UDP GSO is in use.
    pub fn gso(&self) -> bool {
        self.gso.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The outer source ports in use, for the admin API and tests.
    pub fn source_ports(&self) -> Vec<u16> {
        self.tx
            .iter()
            .filter_map(|s| s.local_addr().ok().map(|a| a.port()))
            .collect()
    }
}
