//! The active health probe of one task: async I/O only. Every verdict it
//! reaches goes through the pure state machine in [`super::health`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::service::{Service, Task};
use super::spec::{HealthKind, HealthSpec};

/// One probe: true when the task answered as the spec wants.
pub async fn probe_once(addr: SocketAddr, spec: &HealthSpec) -> bool {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        match &spec.kind {
            HealthKind::Tcp => Some(true),
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
