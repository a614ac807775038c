//! End to end: the admin API's two doors. The unix socket (mode 0600) takes
//! every request; the loopback TCP listener serves reads, refuses writes
//! without the token (and changes nothing), takes them with it, refuses a
//! Host that is not its own (DNS rebinding) and closes a connection that
//! sends nothing. A socket directory that is a symlink stops the daemon at
//! start.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::backend::request;
use common::{etcd, Lab, FRONT_ONLY};
use vxmesh_netns::{require_root, workspace_bin};

const ADMIN: &str = "127.0.0.1:9489";
const TOKEN: &str = "c2VjcmV0LXRva2VuLWZvci10ZXN0cw";

fn admin() -> SocketAddr {
    ADMIN.parse().unwrap()
}

const NET: &str = r#"{"name": "front", "vni": 4096, "subnet": "10.0.9.0/24"}"#;

/// A POST of network `front` to `host`'s TCP listener with `headers`.
fn post_network(lab: &Lab, host: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut h = vec![("Host", ADMIN), ("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    request(
        &lab.tb,
        &lab.tb.ns(host),
        admin(),
        "POST",
        "/v1/networks",
        &h,
        NET,
    )
    .expect("the admin listener answers")
}

fn networks(lab: &Lab, host: &str) -> usize {
    lab.cli_json(host, &["network", "ls"])
        .as_array()
        .unwrap()
        .len()
}

#[test]
fn tcp_admin_is_read_only_without_a_token_and_checks_the_host() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new("admin", 2, "");
    let _etcd = etcd::start(&mut lab.tb);
    let prefix = format!("/vxmesh-{}", lab.tb.suffix());
    let token = lab.tb.dir().join("admin-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    // h1: no token, so read-only on TCP. h2: writes with the token.
    lab.start_etcd_args("h1", &prefix, 3, &["--admin-addr", ADMIN]);
    lab.start_etcd_args(
        "h2",
        &prefix,
        3,
        &[
            "--admin-addr",
            ADMIN,
            "--admin-token-file",
            token.to_str().unwrap(),
        ],
    );
    let mode = std::fs::metadata(lab.socket("h1"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "admin socket mode {mode:o}");

    // Reads over TCP, with the listener's own name or localhost.
    for host in [ADMIN, "localhost:9489"] {
        let (code, body) = request(
            &lab.tb,
            &lab.tb.ns("h1"),
            admin(),
            "GET",
            "/v1/status",
            &[("Host", host)],
            "",
        )
        .unwrap();
        assert_eq!(code, 200, "{host}: {body}");
        assert!(body.contains("\"node\":\"h1\""), "{body}");
    }
    let (code, metrics) = request(
        &lab.tb,
        &lab.tb.ns("h1"),
        admin(),
        "GET",
        "/metrics",
        &[("Host", ADMIN)],
        "",
    )
    .unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("vxmesh_store_up"), "{metrics}");

    // A write without a token: 403, naming the socket and the token file;
    // nothing changed anywhere.
    let (code, body) = post_network(&lab, "h1", &[]);
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("read-only") && body.contains("--admin-token-file"),
        "{body}"
    );
    // Even with a token in hand: h1 has none configured.
    let bearer = format!("Bearer {TOKEN}");
    let (code, _) = post_network(&lab, "h1", &[("Authorization", &bearer)]);
    assert_eq!(code, 403);
    for h in ["h1", "h2"] {
        assert_eq!(networks(&lab, h), 0, "{h} got a network");
    }

    // A page that made its own name resolve to 127.0.0.1: refused.
    let (code, body) = request(
        &lab.tb,
        &lab.tb.ns("h1"),
        admin(),
        "GET",
        "/v1/status",
        &[("Host", "rebind.example:9489")],
        "",
    )
    .unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("DNS rebinding"), "{body}");

    // h2: no token or a wrong one, 401; the token, 201 and every node has it.
    let (code, _) = post_network(&lab, "h2", &[]);
    assert_eq!(code, 401);
    let (code, _) = post_network(
        &lab,
        "h2",
        &[("Authorization", "Bearer wrong-token-of-length")],
    );
    assert_eq!(code, 401);
    assert_eq!(networks(&lab, "h2"), 0);
    let (code, body) = post_network(&lab, "h2", &[("Authorization", &bearer)]);
    assert_eq!(code, 201, "{body}");
    for h in ["h1", "h2"] {
        let got = lab.until(Duration::from_secs(3), || networks(&lab, h) == 1);
        assert!(got.is_some(), "{h} does not have the network");
    }
    // The unix socket still takes writes without any token.
    let out = lab.cli("h1", &["network", "rm", "front"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A connection that sends nothing is closed by the header deadline (5 s).
    let took = lab
        .tb
        .in_ns(&lab.tb.ns("h1"), || {
            let mut s = std::net::TcpStream::connect(admin()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            let t = Instant::now();
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            t.elapsed()
        })
        .unwrap();
    assert!(
        took < Duration::from_secs(8),
        "idle connection kept {took:?}"
    );
}

#[test]
fn a_symlinked_socket_directory_stops_the_daemon_at_start() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new("admsock", 1, FRONT_ONLY);
    let real = lab.tb.dir().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = lab.tb.dir().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let sock = link.join("h1.sock");
    let bin = workspace_bin("vxmeshd");
    let ns = lab.tb.ns("h1");
    let p = lab
        .tb
        .spawn(
            &ns,
            &[
                bin.to_str().unwrap(),
                "--config",
                lab.config.to_str().unwrap(),
                "--node",
                "h1",
                "--socket",
                sock.to_str().unwrap(),
            ],
            &[],
        )
        .unwrap();
    let status = lab
        .tb
        .wait_exit(&p, Duration::from_secs(10))
        .expect("vxmeshd stops");
    assert!(!status.success());
    let log = p.log_tail(20);
    assert!(log.contains("is a symlink"), "{log}");
    assert!(!real.join("h1.sock").exists());
}
