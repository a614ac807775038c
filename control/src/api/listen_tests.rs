use super::*;
use axum::body::Body;
use axum::routing::get;
use std::io::{Read, Write};
use std::time::Instant;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "vxmesh-listen-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

#[tokio::test]
async fn socket_is_0600_in_a_new_0700_directory_and_a_stale_one_is_replaced() {
    let t = TempDir::new("bind");
    let path = t.0.join("run/vxmeshd.sock");
    let l = bind_unix(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&t.0.join("run")), 0o700);
    // Still answering: a second daemon is refused and the socket stays.
    let err = bind_unix(&path).unwrap_err();
    assert!(matches!(err, SocketError::InUse { .. }), "{err}");
    drop(l);
    // Nobody answers now: a stale socket, replaced.
    bind_unix(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
}

#[tokio::test]
async fn unsafe_socket_paths_are_refused_with_the_reason() {
    let t = TempDir::new("unsafe");
    let real = t.0.join("real");
    std::fs::create_dir(&real).unwrap();
    let link = t.0.join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let err = bind_unix(&link.join("s.sock")).unwrap_err();
    assert!(matches!(err, SocketError::DirSymlink { .. }), "{err}");
    assert!(err.to_string().contains("is a symlink"), "{err}");

    let open = t.0.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let err = bind_unix(&open.join("s.sock")).unwrap_err();
    assert!(
        matches!(err, SocketError::DirWritable { mode: 0o1777, .. }),
        "{err}"
    );

    let file = real.join("s.sock");
    std::fs::write(&file, "keep me").unwrap();
    let err = bind_unix(&file).unwrap_err();
    assert!(matches!(err, SocketError::NotSocket { .. }), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[test]
fn the_directory_must_be_ours() {
    let t = TempDir::new("owner");
    let meta = std::fs::symlink_metadata(&t.0).unwrap();
    let err = check_dir(&t.0, &meta, meta.uid() + 1).unwrap_err();
    assert!(matches!(err, SocketError::DirOwner { .. }), "{err}");
    check_dir(&t.0, &meta, meta.uid()).unwrap();
}

#[test]
fn tokens_come_from_a_private_file() {
    let t = TempDir::new("token");
    let p = t.0.join("token");
    std::fs::write(&p, "0123456789abcdef0123\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(read_token(&p).unwrap_err().contains("chmod 600"));
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(&*read_token(&p).unwrap(), "0123456789abcdef0123");
    std::fs::write(&p, "short").unwrap();
    assert!(read_token(&p).unwrap_err().contains("at least 16"));
    assert!(read_token(&t.0.join("none")).is_err());
}

#[test]
fn constant_time_equality() {
    assert!(same(b"abc", b"abc"));
    assert!(!same(b"abc", b"abd"));
    assert!(!same(b"abc", b"abcd"));
    assert!(!same(b"", b"a"));
}

fn access(token: Option<&str>) -> TcpAccess {
    TcpAccess {
        addr: "127.0.0.1:9489".parse().unwrap(),
        token: token.map(Into::into),
        socket: PathBuf::from("/run/vxmesh/vxmeshd.sock"),
    }
}

fn req(method: Method, host: Option<&str>, extra: &[(&str, &str)]) -> Request {
    let mut b = Request::builder().method(method).uri("/v1/networks");
    if let Some(h) = host {
        b = b.header("host", h);
    }
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    b.body(Body::empty()).unwrap()
}

fn status(r: Option<Response>) -> Option<u16> {
    r.map(|r| r.status().as_u16())
}

#[test]
fn tcp_reads_are_open_writes_need_the_token_and_the_host_must_be_ours() {
    let ro = access(None);
    for host in ["127.0.0.1:9489", "localhost:9489", "LOCALHOST", "127.0.0.1"] {
        assert_eq!(
            status(ro.check(&req(Method::GET, Some(host), &[]))),
            None,
            "{host}"
        );
    }
    for host in [
        Some("evil.example:9489"),
        Some("127.0.0.1:80"),
        Some("127.0.0.2:9489"),
        None,
    ] {
        assert_eq!(
            status(ro.check(&req(Method::GET, host, &[]))),
            Some(403),
            "{host:?}"
        );
    }
    let page = [("origin", "http://evil.example")];
    assert_eq!(
        status(ro.check(&req(Method::GET, Some("localhost:9489"), &page))),
        Some(403)
    );
    // Without a token nothing but reads, whatever is sent.
    let bearer = [("authorization", "Bearer 0123456789abcdef")];
    let r = ro.check(&req(Method::POST, Some("localhost:9489"), &bearer));
    assert_eq!(status(r), Some(403));

    let rw = access(Some("0123456789abcdef"));
    assert_eq!(
        status(rw.check(&req(Method::POST, Some("localhost:9489"), &bearer))),
        None
    );
    assert_eq!(
        status(rw.check(&req(Method::DELETE, Some("127.0.0.1:9489"), &bearer))),
        None
    );
    for bad in ["Bearer 0123456789abcdeX", "Basic 0123456789abcdef", ""] {
        let r = rw.check(&req(
            Method::POST,
            Some("localhost:9489"),
            &[("authorization", bad)],
        ));
        assert_eq!(status(r), Some(401), "{bad}");
    }
    // The token does not lift the Host check.
    assert_eq!(
        status(rw.check(&req(Method::POST, Some("evil.example:9489"), &bearer))),
        Some(403)
    );
}

/// A server on 127.0.0.1 with small limits; its address and stop switch.
async fn small_server(
    limits: Limits,
) -> (
    SocketAddr,
    watch::Sender<bool>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let router = Router::new().route("/", get(|| async { "ok" })).route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "late"
        }),
    );
    let (tx, mut rx) = watch::channel(false);
    let h = tokio::spawn(serve(l, router, limits, async move {
        let _ = rx.wait_for(|s| *s).await;
    }));
    (addr, tx, h)
}

/// Reads until EOF (or 5 s); what came and how long it took.
fn read_all(s: &mut std::net::TcpStream) -> (String, Duration) {
    let t = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (String::from_utf8_lossy(&out).into_owned(), t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_clients_are_cut_and_connections_are_capped() {
    let limits = Limits {
        max_connections: 2,
        header_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(400),
    };
    let (addr, stop, server) = small_server(limits).await;
    tokio::task::spawn_blocking(move || {
        // A connection that sends nothing is closed after the header timeout.
        let mut idle = std::net::TcpStream::connect(addr).unwrap();
        let (_, took) = read_all(&mut idle);
        assert!(
            took < Duration::from_secs(2),
            "idle connection kept {took:?}"
        );
        // Half a header: the same.
        let mut half = std::net::TcpStream::connect(addr).unwrap();
        half.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
        let (_, took) = read_all(&mut half);
        assert!(took < Duration::from_secs(2), "half header kept {took:?}");
        // A handler slower than the request limit: 503, not a hang.
        let mut slow = std::net::TcpStream::connect(addr).unwrap();
        slow.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let (text, took) = read_all(&mut slow);
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    })
    .await
    .unwrap();
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();

    // Two open connections fill a cap of two: a third is not served until
    // one of them goes (the kernel's accept queue keeps the order).
    let (addr, stop, server) = small_server(Limits {
        max_connections: 2,
        header_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
    })
    .await;
    tokio::task::spawn_blocking(move || {
        let a = std::net::TcpStream::connect(addr).unwrap();
        let _b = std::net::TcpStream::connect(addr).unwrap();
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 64];
        assert!(
            c.read(&mut buf).is_err(),
            "a third connection was served beyond the cap of two"
        );
        drop(a);
        let (text, took) = read_all(&mut c);
        assert!(
            text.starts_with("HTTP/1.1 200") && text.ends_with("ok"),
            "{text}"
        );
        assert!(took < Duration::from_secs(2), "{took:?}");
    })
    .await
    .unwrap();
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops with connections open")
        .unwrap()
        .unwrap();
}
