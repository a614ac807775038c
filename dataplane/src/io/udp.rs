//! The underlay sockets. One socket bound to `<data-path address>:<port>`
//! receives every VXLAN datagram; a small pool of sending sockets, also
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
    /// Socket buffer sizes in bytes.
    pub buffer_bytes: usize,
}

impl UnderlayConfig {
    pub fn new(local: Ipv4Addr) -> UnderlayConfig {
        UnderlayConfig {
            local,
            port: crate::wire::vxlan::DEFAULT_PORT,
            source_ports: 16,
            buffer_bytes: 4 << 20,
        }
    }
}

#[derive(Debug)]
pub struct Underlay {
    rx: UdpSocket,
    tx: Vec<UdpSocket>,
    port: u16,
    local: Ipv4Addr,
}

fn socket(local: Ipv4Addr, port: u16, buffer: usize) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel clamps to net.core.[rw]mem_max.
    let _ = s.set_recv_buffer_size(buffer);
    let _ = s.set_send_buffer_size(buffer);
    s.bind(&SocketAddr::V4(SocketAddrV4::new(local, port)).into())
        .map_err(|e| io::Error::new(e.kind(), format!("binding {local}:{port}: {e}")))?;
    s.set_nonblocking(true)?;
    super::sys::clear_dont_fragment(&s)?;
    Ok(s.into())
}

impl Underlay {
    pub fn bind(cfg: &UnderlayConfig) -> io::Result<Underlay> {
        let rx = socket(cfg.local, cfg.port, cfg.buffer_bytes)?;
        let tx = (0..cfg.source_ports.max(1))
            .map(|_| socket(cfg.local, 0, cfg.buffer_bytes))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Underlay {
            rx,
            tx,
            port: cfg.port,
            local: cfg.local,
        })
    }

    pub fn rx(&self) -> &UdpSocket {
        &self.rx
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

    /// The outer source ports in use, for the admin API and tests.
    pub fn source_ports(&self) -> Vec<u16> {
        self.tx
            .iter()
            .filter_map(|s| s.local_addr().ok().map(|a| a.port()))
            .collect()
    }
}
