//! Test backends ("tasks") that run as threads inside a host namespace: an
//! HTTP server that names itself and the client it saw (reading a PROXY v2
//! header first when asked), and a UDP echo. Each stops when its handle is
//! dropped or `stop()`ped, so a test can kill a task mid-run.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use vxmesh_dataplane::wire::proxy_v2;
use vxmesh_netns::Testbed;

pub struct Backend {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<(), vxmesh_netns::Error>>>,
}

impl Backend {
    /// Stops accepting and closes the listeners (the task "dies").
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

fn answer(mut s: TcpStream, name: &str, proxy: bool) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut buf = vec![0u8; 4096];
    let mut have = 0;
    let mut client = peer;
    if proxy {
        // Read until the PROXY header parses.
        loop {
            match proxy_v2::Header::parse(&buf[..have]) {
                Ok((h, used)) => {
                    if let Some((src, _)) = h.addresses {
                        client = src.to_string();
                    }
                    buf.copy_within(used..have, 0);
                    have -= used;
                    break;
                }
                Err(proxy_v2::Error::Incomplete) => {}
                Err(_) => return,
            }
            match s.read(&mut buf[have..]) {
                Ok(0) | Err(_) => return,
                Ok(n) => have += n,
            }
        }
    }
    while !buf[..have].windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf[have..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => have += n,
        }
        if have == buf.len() {
            return;
        }
    }
    let req = String::from_utf8_lossy(&buf[..have]).to_string();
    if req.starts_with("GET /slow") {
        // 100 chunks of 64 KiB with a pause between: a long transfer.
        let _ =
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6553600\r\nConnection: close\r\n\r\n");
        let chunk = vec![b'x'; 65536];
        for _ in 0..100 {
            if s.write_all(&chunk).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        return;
    }
    let body = format!("{name} {client}");
    let _ = s.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}

/// Starts an HTTP task `name` on `addr:80` and a UDP echo on `addr:53` in
/// namespace `ns`.
pub fn start(tb: &Testbed, ns: &str, name: &str, addr: Ipv4Addr, proxy: bool) -> Backend {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (st, n, rtx) = (stop.clone(), name.to_string(), ready_tx.clone());
    let http = tb
        .thread_in_ns(ns, move || {
            let l = TcpListener::bind(SocketAddr::new(addr.into(), 80)).expect("bind :80");
            l.set_nonblocking(true).unwrap();
            rtx.send(()).unwrap();
            while !st.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        let n = n.clone();
                        std::thread::spawn(move || answer(s, &n, proxy));
                    }
                    // Polling keeps the stop flag observable; not a sync point.
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        })
        .expect("http thread");
    let (st, n) = (stop.clone(), name.to_string());
    let udp = tb
        .thread_in_ns(ns, move || {
            let s = UdpSocket::bind(SocketAddr::new(addr.into(), 53)).expect("bind :53");
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 1500];
            while !st.load(Ordering::SeqCst) {
                if let Ok((len, from)) = s.recv_from(&mut buf) {
                    let mut reply = format!("{n}:").into_bytes();
                    reply.extend_from_slice(&buf[..len]);
                    let _ = s.send_to(&reply, from);
                }
            }
        })
        .expect("udp thread");
    for _ in 0..2 {
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("backend ready");
    }
    Backend {
        stop,
        threads: vec![http, udp],
    }
}

/// One HTTP GET from namespace `ns` to `to`; Ok(body) or Err(reason).
pub fn get(
    tb: &Testbed,
    ns: &str,
    to: SocketAddr,
    path: &str,
) -> Result<(String, SocketAddr), String> {
    let path = path.to_string();
    tb.in_ns(ns, move || -> Result<(String, SocketAddr), String> {
        let mut s =
            TcpStream::connect_timeout(&to, Duration::from_secs(3)).map_err(|e| e.to_string())?;
        let local = s.local_addr().map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out).to_string();
        let body = text
            .split("\r\n\r\n")
            .nth(1)
            .ok_or_else(|| format!("no HTTP answer: {text:?}"))?;
        Ok((body.to_string(), local))
    })
    .map_err(|e| e.to_string())?
}

/// One HTTP/1.1 request from namespace `ns` to `to` with `headers` (the
/// Host header among them, or none) and `body`, `Connection: close`: the
/// status code and the body.
pub fn request(
    tb: &Testbed,
    ns: &str,
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String), String> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let text = format!("{head}\r\n{body}");
    tb.in_ns(ns, move || -> Result<(u16, String), String> {
        let mut s =
            TcpStream::connect_timeout(&to, Duration::from_secs(3)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(text.as_bytes()).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).map_err(|e| e.to_string())?;
        let answer = String::from_utf8_lossy(&out).to_string();
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no HTTP answer: {answer:?}"))?;
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no status line: {head:?}"))?;
        Ok((code, body.to_string()))
    })
    .map_err(|e| e.to_string())?
}

/// One UDP datagram from a socket bound in `ns` at `from`; the reply.
pub fn udp_ask(
    tb: &Testbed,
    ns: &str,
    from: SocketAddr,
    to: SocketAddr,
    msg: &str,
) -> Result<String, String> {
    let msg = msg.to_string();
    tb.in_ns(ns, move || -> Result<String, String> {
        let s = UdpSocket::bind(from).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send_to(msg.as_bytes(), to).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 1500];
        let (n, src) = s.recv_from(&mut buf).map_err(|e| e.to_string())?;
        if src != to {
            return Err(format!(
                "reply from {src}, not from the published address {to}"
            ));
        }
        Ok(String::from_utf8_lossy(&buf[..n]).to_string())
    })
    .map_err(|e| e.to_string())?
}
