//! The active health probe of one task: async I/O only. Every verdict it
//! reaches goes through the pure state machine in [`super::health`].

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

use super::service::{Service, Task};
use super::spec::{HealthKind, HealthSpec};

/// One probe: true when the task answered as the spec wants.
pub async fn probe_once(addr: SocketAddr, spec: &HealthSpec) -> bool {
    if let HealthKind::Udp { send, expect } = &spec.kind {
        return probe_udp(addr, send.as_bytes(), expect.as_bytes(), spec.timeout).await;
    }
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        match &spec.kind {
            HealthKind::Tcp => Some(true),
            HealthKind::Udp { .. } => None,
            HealthKind::Http { path, status } => {
                let req = format!(
                    "GET {path} HTTP/1.0\r\nHost: {}\r\nUser-Agent: vxmesh-health\r\nConnection: close\r\n\r\n",
                    addr.ip()
                );
                s.write_all(req.as_bytes()).await.ok()?;
                let mut head = [0u8; 64];
                let mut n = 0;
                while n < 12 {
                    let m = s.read(&mut head[n..]).await.ok()?;
                    if m == 0 {
                        break;
                    }
                    n += m;
                }
                let line = std::str::from_utf8(&head[..n]).ok()?;
                let code: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(code == *status)
            }
        }
    };
    matches!(timeout(spec.timeout, attempt).await, Ok(Some(true)))
}

/// A UDP probe: `send` on a socket connected to `addr`. With `expect`,
/// up only when a reply holding `expect` comes within `limit`; without,
/// down only when the task's host answers ICMP port unreachable (the
/// connected socket reports ECONNREFUSED), so silence counts as up.
async fn probe_udp(addr: SocketAddr, send: &[u8], expect: &[u8], limit: Duration) -> bool {
    let Ok(s) = UdpSocket::bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0)).await else {
        return false;
    };
    if s.connect(addr).await.is_err() || s.send(send).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 2048];
    let deadline = tokio::time::Instant::now() + limit;
    // Bounded by the deadline; a stray reply that does not match is
    // skipped, one that does ends the probe.
    loop {
        match tokio::time::timeout_at(deadline, s.recv(&mut buf)).await {
            Err(_) => return expect.is_empty(),
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => return false,
            Ok(Err(_)) => return false,
            Ok(Ok(n)) => {
                if expect.is_empty() || contains(&buf[..n], expect) {
                    return true;
                }
            }
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Probes `task` of `svc` every interval until the task leaves the service.
pub async fn run(svc: Arc<Service>, task: Arc<Task>) {
    loop {
        let spec = svc.spec.load_full();
        let Some(port) = spec.probe_port() else {
            return;
        };
        let started = Instant::now();
        let ok = probe_once(SocketAddr::new(task.addr.into(), port), &spec.health).await;
        let now = Instant::now();
        task.probe_duration.observe(now - started);
        let (t1, t2) = {
            let mut h = task.health.lock().expect("health lock");
            (h.observe_probe(ok, now), h.tick(now))
        };
        for t in [t1, t2].into_iter().flatten() {
            svc.transition(&task, t);
        }
        tokio::time::sleep(spec.health.interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::net::TcpListener;

    /// A one-shot HTTP server on loopback answering `status` to anything.
    async fn server(status: u16) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut req = [0u8; 512];
                let _ = s.read(&mut req).await;
                let _ = s
                    .write_all(
                        format!("HTTP/1.0 {status} X\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                    )
                    .await;
            }
        });
        addr
    }

    fn spec(kind: HealthKind) -> HealthSpec {
        HealthSpec {
            kind,
            timeout: Duration::from_millis(500),
            ..HealthSpec::default()
        }
    }

    #[tokio::test]
    async fn http_probe_wants_the_configured_status() {
        let ok = server(200).await;
        let http = |status| {
            spec(HealthKind::Http {
                path: "/healthz".into(),
                status,
            })
        };
        assert!(probe_once(ok, &http(200)).await);
        assert!(
            !probe_once(ok, &http(204)).await,
            "another status is a failure"
        );
        let teapot = server(418).await;
        assert!(!probe_once(teapot, &http(200)).await);
    }

    /// A UDP server on loopback that answers `reply` to each datagram.
    async fn udp_server(reply: &'static [u8]) -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((_, from)) = s.recv_from(&mut buf).await {
                let _ = s.send_to(reply, from).await;
            }
        });
        addr
    }

    fn udp(send: &str, expect: &str) -> HealthSpec {
        HealthSpec {
            kind: HealthKind::Udp {
                send: send.into(),
                expect: expect.into(),
            },
            timeout: Duration::from_millis(300),
            ..HealthSpec::default()
        }
    }

    #[tokio::test]
    async fn udp_probe_wants_the_expected_reply_or_no_port_unreachable() {
        let pong = udp_server(b"PONG from task").await;
        assert!(probe_once(pong, &udp("PING", "PONG")).await);
        assert!(
            !probe_once(pong, &udp("PING", "OK")).await,
            "a reply without the expected bytes is a failure"
        );
        // Nobody listens: the kernel answers ICMP port unreachable.
        let closed = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        assert!(!probe_once(closed, &udp("", "")).await, "ICMP: down");
        assert!(!probe_once(closed, &udp("PING", "PONG")).await);
        // A server that never answers: up without `expect`, down with it.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let quiet = silent.local_addr().unwrap();
        assert!(probe_once(quiet, &udp("PING", "")).await, "silence: up");
        assert!(!probe_once(quiet, &udp("PING", "PONG")).await);
        drop(silent);
    }

    #[test]
    fn a_udp_only_service_is_probed_on_its_udp_port() {
        use crate::mesh::spec::{PortSpec, Protocol};
        let mut spec = crate::mesh::service::tests::spec(Duration::ZERO);
        spec.ports = vec![PortSpec {
            protocol: Protocol::Udp,
            published: 5353,
            target: 53,
            listen: None,
        }];
        assert_eq!(spec.probe_port(), None, "a TCP check has no port");
        spec.health = udp("", "");
        assert_eq!(spec.probe_port(), Some(53));
    }

    #[tokio::test]
    async fn tcp_probe_is_a_connect() {
        let up = server(200).await;
        assert!(probe_once(up, &spec(HealthKind::Tcp)).await);
        // A port nobody listens on (bound, then closed).
        let gone = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(!probe_once(gone, &spec(HealthKind::Tcp)).await);
    }
}
