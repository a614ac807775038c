//! The tasks' HTTP server for `vxmesh-bench mesh` (the binary
//! `vxmesh-bench-backend`), and a one-shot client to check a path serves.
//!
//! HTTP/1.1 with keep-alive, GET only: `/1m` (and anything under it)
//! answers a 1 MiB body, every other path 1 KiB. Responses are built once
//! at start, so a request costs one read and one write. A fixed pool of
//! threads each accepts and serves one connection at a time with blocking
//! I/O: no thread is created per connection, which is what keeps thousands
//! of new connections per second cheap on two cores. `Connection: close`
//! (or HTTP/1.0 without keep-alive) closes after the response, server
//! first, as nginx does.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// Body of every path but `/1m`.
pub const SMALL: usize = 1024;
/// Body of `/1m`.
pub const LARGE: usize = 1 << 20;
/// Largest request head accepted.
const MAX_HEAD: usize = 8192;
/// An idle keep-alive connection is closed after this (frees its worker).
const IDLE: Duration = Duration::from_secs(30);

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// `/1m`: the 1 MiB body.
    pub large: bool,
    /// Close after the response.
    pub close: bool,
}

/// Parses one request head at the start of `buf`. `Ok(None)`: incomplete;
/// `Ok(Some((req, used)))`: the head is `used` bytes (no body is read:
/// GET only). `Err`: not HTTP.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, &'static str> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or("");
    let mut parts = first.split(' ');
    let (_method, path, version) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(p), Some(v)) if v.starts_with("HTTP/1.") => (m, p, v),
        _ => return Err("not an HTTP/1.x request line"),
    };
    // HTTP/1.1 keeps the connection unless told; HTTP/1.0 closes unless told.
    let mut close = version == "HTTP/1.0";
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("connection") {
                let v = v.trim();
                if v.eq_ignore_ascii_case("close") {
                    close = true;
                } else if v.eq_ignore_ascii_case("keep-alive") {
                    close = false;
                }
            }
        }
    }
    let large = path == "/1m" || path.starts_with("/1m/") || path.starts_with("/1m?");
    Ok(Some((Request { large, close }, end + 4)))
}

/// The four responses (small or large, keep-alive or close), built once.
pub struct Responses {
    small: [Vec<u8>; 2],
    large: [Vec<u8>; 2],
}

impl Responses {
    /// Responses naming the task `name` in an `X-Task` header.
    pub fn new(name: &str) -> Responses {
        let one = |len: usize, close: bool| {
            let mut r = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                 Content-Length: {len}\r\nX-Task: {name}\r\nConnection: {}\r\n\r\n",
                if close { "close" } else { "keep-alive" }
            )
            .into_bytes();
            r.resize(r.len() + len, b'x');
            r
        };
        Responses {
            small: [one(SMALL, false), one(SMALL, true)],
            large: [one(LARGE, false), one(LARGE, true)],
        }
    }

    /// The response to `r`.
    pub fn to(&self, r: Request) -> &[u8] {
        let set = if r.large { &self.large } else { &self.small };
        &set[usize::from(r.close)]
    }
}

/// Serves one connection until the client closes, asks to close, sends
/// something that is not HTTP, or stays idle for [`IDLE`].
pub fn handle(mut s: TcpStream, resp: &Responses) {
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(IDLE));
    let mut buf = vec![0u8; MAX_HEAD];
    let mut have = 0;
    loop {
        match parse_request(&buf[..have]) {
            Ok(Some((req, used))) => {
                if s.write_all(resp.to(req)).is_err() {
                    return;
                }
                if req.close {
                    let _ = s.shutdown(Shutdown::Write);
                    // Drain what the client still sends until it closes, so
                    // the close is clean (no RST over unread bytes).
                    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                    return;
                }
                buf.copy_within(used..have, 0);
                have -= used;
                continue;
            }
            Ok(None) if have < buf.len() => {}
            Ok(None) | Err(_) => return,
        }
        match s.read(&mut buf[have..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => have += n,
        }
    }
}

/// Serves on `listener` with `workers` threads, each accepting and serving
/// one connection at a time. Returns only if a worker cannot be started.
pub fn serve(listener: TcpListener, name: &str, workers: usize) -> io::Result<()> {
    let listener = Arc::new(listener);
    let resp = Arc::new(Responses::new(name));
    let mut handles = Vec::new();
    for i in 0..workers.max(1) {
        let (l, r) = (listener.clone(), resp.clone());
        handles.push(
            std::thread::Builder::new()
                .name(format!("http-{i}"))
                .stack_size(128 * 1024)
                .spawn(move || loop {
                    match l.accept() {
                        Ok((s, _)) => handle(s, &r),
                        // Out of descriptors and the like: back off a little.
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                })?,
        );
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// What [`get`] got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The `X-Task` header: which task answered.
    pub task: Option<String>,
    /// Body bytes received.
    pub body: usize,
}

/// `GET path` with `Connection: close` to `addr`, every step bounded by
/// `timeout`; reads until the server closes.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<Reply> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)?;
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of the response head"))?;
    let head = String::from_utf8_lossy(&all[..end]);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    let task = head.split("\r\n").find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("x-task")
            .then(|| v.trim().to_string())
    });
    Ok(Reply {
        status,
        task,
        body: all.len() - end - 4,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        let r = parse_request(b"GET /1k HTTP/1.1\r\nHost: x\r\n\r\nGET").unwrap();
        assert_eq!(
            r,
            Some((
                Request {
                    large: false,
                    close: false
                },
                29
            ))
        );
        let r = parse_request(b"GET /1m HTTP/1.1\r\nconnection: Close\r\n\r\n").unwrap();
        assert_eq!(
            r.unwrap().0,
            Request {
                large: true,
                close: true
            }
        );
        let r = parse_request(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(r.unwrap().0.close);
        let r = parse_request(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert!(!r.unwrap().0.close);
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost"), Ok(None));
        assert!(parse_request(b"\x16\x03\x01 hello\r\n\r\n").is_err());
    }

    #[test]
    fn responses_have_the_right_length() {
        let r = Responses::new("t");
        for (large, len) in [(false, SMALL), (true, LARGE)] {
            for close in [false, true] {
                let bytes = r.to(Request { large, close });
                let end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                assert_eq!(bytes.len() - end, len);
                let head = String::from_utf8_lossy(&bytes[..end]);
                assert!(head.contains(&format!("Content-Length: {len}\r\n")));
                assert_eq!(head.contains("Connection: close"), close);
            }
        }
    }

    #[test]
    fn serves_keep_alive_and_close_on_loopback() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || serve(l, "t1", 4));
        let t = Duration::from_secs(5);
        // Two requests on one connection, then one with Connection: close.
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(t)).unwrap();
        s.write_all(b"GET /1k HTTP/1.1\r\n\r\nGET /1m HTTP/1.1\r\n\r\n")
            .unwrap();
        let want = Responses::new("t1");
        let total = want
            .to(Request {
                large: false,
                close: false,
            })
            .len()
            + want
                .to(Request {
                    large: true,
                    close: false,
                })
                .len();
        let mut got = vec![0u8; total];
        s.read_exact(&mut got).unwrap();
        s.write_all(b"GET /1k HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert_eq!(
            rest.len(),
            want.to(Request {
                large: false,
                close: true
            })
            .len()
        );
        let r = get(addr, "/1m", t).unwrap();
        assert_eq!(
            (r.status, r.task.as_deref(), r.body),
            (200, Some("t1"), LARGE)
        );
    }
}
