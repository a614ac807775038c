//! The mesh's sockets: binding published ports, VIPs and DNS addresses (or
//! taking the sockets a predecessor handed over, see
//! [`crate::io::inherit`]), and what the mesh gives a successor.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use super::super::spec::Protocol;
use super::super::udp;
use super::Mesh;

pub(super) enum Bound {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

/// The socket a predecessor handed over for `proto`/`addr`, if any (see
/// [`crate::io::inherit`]): the successor accepts from the same backlog, so
/// a client connecting during a handover waits instead of being refused.
fn inherited(proto: Protocol, addr: SocketAddr) -> Option<Bound> {
    let fd = crate::io::inherit::take(&crate::io::inherit::listener_name(proto.as_str(), addr))?;
    let b = match proto {
        Protocol::Tcp => Bound::Tcp(std::net::TcpListener::from(fd)),
        Protocol::Udp => Bound::Udp(std::net::UdpSocket::from(fd)),
    };
    let (local, nb) = match &b {
        Bound::Tcp(l) => (l.local_addr(), l.set_nonblocking(true)),
        Bound::Udp(s) => (s.local_addr(), s.set_nonblocking(true)),
    };
    match (local, nb) {
        (Ok(a), Ok(())) if a == addr => Some(b),
        (local, _) => {
            tracing::warn!(proto = proto.as_str(), %addr, ?local,
                "an inherited socket is not bound there; binding afresh");
            None
        }
    }
}

impl Bound {
    /// A second descriptor of the same socket, kept to hand it over.
    pub(super) fn dup(&self) -> io::Result<OwnedFd> {
        match self {
            Bound::Tcp(l) => l.as_fd().try_clone_to_owned(),
            Bound::Udp(s) => s.as_fd().try_clone_to_owned(),
        }
    }
}

pub(super) fn bind(proto: Protocol, addr: SocketAddr, freebind: bool) -> io::Result<Bound> {
    if let Some(b) = inherited(proto, addr) {
        return Ok(b);
    }
    if freebind {
        return bind_free(proto, addr);
    }
    Ok(match proto {
        Protocol::Tcp => {
            let l = std::net::TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Bound::Tcp(l)
        }
        Protocol::Udp => {
            let s = std::net::UdpSocket::bind(addr)?;
            s.set_nonblocking(true)?;
            Bound::Udp(s)
        }
    })
}

/// Binds an address the node may not have yet (a VIP, the DNS address).
pub(super) fn bind_free(proto: Protocol, addr: SocketAddr) -> io::Result<Bound> {
    use socket2::{Domain, Socket, Type};
    if let Some(b) = inherited(proto, addr) {
        return Ok(b);
    }
    let ty = match proto {
        Protocol::Tcp => Type::STREAM,
        Protocol::Udp => Type::DGRAM,
    };
    let s = Socket::new(Domain::for_address(addr), ty, None)?;
    s.set_freebind_v4(true)?;
    if proto == Protocol::Tcp {
        s.set_reuse_address(true)?;
    }
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    Ok(match proto {
        Protocol::Tcp => {
            s.listen(1024)?;
            Bound::Tcp(s.into())
        }
        Protocol::Udp => Bound::Udp(s.into()),
    })
}

impl Mesh {
    /// Every listening socket (published ports, VIPs, DNS), named for a
    /// successor that takes this node over.
    pub fn descriptors(&self) -> Vec<(String, BorrowedFd<'_>)> {
        let listeners = self.listeners.iter().map(|((proto, addr), l)| {
            (
                crate::io::inherit::listener_name(proto.as_str(), *addr),
                l.fd.as_fd(),
            )
        });
        let dns = self
            .dns
            .values()
            .flat_map(|d| d.fds.iter().map(|(n, fd)| (n.clone(), fd.as_fd())));
        let relay = self.relay.iter().map(|r| {
            (
                crate::io::inherit::listener_name("tcp", r.addr),
                r.fd.as_fd(),
            )
        });
        listeners.chain(dns).chain(relay).collect()
    }

    /// The tasks that take no new connections now (down or ejected), by
    /// service: what a successor should not send to before probing them.
    pub fn unhealthy(&self) -> Vec<(String, Ipv4Addr)> {
        let mut v: Vec<(String, Ipv4Addr)> = self
            .services
            .iter()
            .flat_map(|(name, s)| {
                s.tasks
                    .lock()
                    .expect("tasks lock")
                    .iter()
                    .filter(|t| {
                        matches!(
                            t.state(),
                            crate::mesh::health::State::Down | crate::mesh::health::State::Ejected
                        )
                    })
                    .map(|t| (name.clone(), t.addr))
                    .collect::<Vec<_>>()
            })
            .collect();
        v.sort();
        v
    }

    /// Marks `tasks` (service, address) Down, as a predecessor last saw
    /// them; probes bring them back.
    pub fn resume_unhealthy(&self, tasks: &[(String, Ipv4Addr)]) -> usize {
        let now = Instant::now();
        let mut n = 0;
        for (name, addr) in tasks {
            let Some(svc) = self.services.get(name) else {
                continue;
            };
            let changed = svc
                .tasks
                .lock()
                .expect("tasks lock")
                .iter()
                .filter(|t| t.addr == *addr)
                .any(|t| {
                    t.health
                        .lock()
                        .expect("health lock")
                        .resume_down(now)
                        .is_some()
                });
            if changed {
                svc.rebuild();
                n += 1;
            }
        }
        n
    }

    /// The upstream sockets of every UDP session, named for a successor
    /// (copies: the sessions go on here until this process stops).
    pub fn session_descriptors(&self) -> Vec<(String, OwnedFd)> {
        self.listeners
            .iter()
            .filter_map(|((_, addr), l)| Some(udp::descriptors(*addr, l.sessions.as_ref()?)))
            .flatten()
            .collect()
    }

    /// Stops accepting on every listener and stops the DNS responders,
    /// keeping the services (and so the connections they relay) running:
    /// the first step of handing the node over, once the successor serves
    /// the same sockets.
    pub fn stop_accepting(&mut self) {
        for (_, l) in self.listeners.drain() {
            let _ = l.stop.send(true);
        }
        for (_, d) in self.dns.drain() {
            let _ = d.stop.send(true);
        }
        if let Some(r) = self.relay.take() {
            let _ = r.stop.send(true);
        }
    }
}
