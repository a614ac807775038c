//! End to end against a real etcd: a second daemon with a node name that is
//! already registered is refused at start while the same daemon restarted
//! after a crash takes its registration back at once; an invalid document
//! put behind the daemons' backs is quarantined (logged, counted) and every
//! other change still applies, a lease expiry included; TLS with client
//! certificates and user/password authentication; credentials over plain
//! http refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{etcd, sample, Lab};
use nix::sys::signal::Signal;
use vxmesh_netns::{require_root, workspace_bin, Proc, Testbed};

const TTL: u32 = 3;

/// Starts vxmeshd in `host`'s namespace with `args` (no readiness wait)
/// and waits up to `limit` for it to exit: its exit code and log tail.
fn run_to_exit(lab: &mut Lab, host: &str, args: &[&str], limit: Duration) -> (i32, String) {
    let bin = workspace_bin("vxmeshd");
    let ns = lab.tb.ns(host);
    let mut all = vec![bin.to_str().unwrap()];
    all.extend_from_slice(args);
    let p: Proc = lab.tb.spawn(&ns, &all, &[]).unwrap();
    let status = lab
        .tb
        .wait_exit(&p, limit)
        .unwrap_or_else(|| panic!("vxmeshd {args:?} still runs after {limit:?}"));
    (status.code().unwrap_or(-1), p.log_tail(20))
}

fn state_dir(lab: &Lab, host: &str) -> String {
    lab.tb
        .dir()
        .join(format!("{host}-state"))
        .to_string_lossy()
        .into_owned()
}

/// `host`'s view of node `name` in `vxmesh node ls`: (address, state).
fn node_row(lab: &Lab, host: &str, name: &str) -> Option<(String, String)> {
    let nodes = lab.cli_json(host, &["node", "ls"]);
    nodes
        .as_array()?
        .iter()
        .find(|n| n["name"] == name)
        .map(|n| {
            (
                n["address"].as_str().unwrap_or("").to_string(),
                n["state"].as_str().unwrap_or("").to_string(),
            )
        })
}

#[test]
fn a_second_daemon_with_the_same_node_name_is_refused_and_a_crashed_one_comes_back() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new("etcddup", 2, "");
    let _etcd = etcd::start(&mut lab.tb);
    let prefix = format!("/vxmesh-{}", lab.tb.suffix());
    let h1_state = state_dir(&lab, "h1");
    lab.start_etcd_args("h1", &prefix, TTL, &["--state-dir", &h1_state]);
    let lease = lab.status("h1")["store"]["lease"].clone();

    // Another host started as `h1`: refused at start, naming the holder.
    let imp_state = state_dir(&lab, "h2");
    let imp_sock = lab.tb.dir().join("impostor.sock");
    let t = Instant::now();
    let (code, log) = run_to_exit(
        &mut lab,
        "h2",
        &[
            "--store",
            "etcd",
            "--etcd-endpoints",
            etcd::ETCD_URL,
            "--etcd-prefix",
            &prefix,
            "--node",
            "h1",
            "--address",
            "198.18.0.2",
            "--state-dir",
            &imp_state,
            "--socket",
            imp_sock.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    assert_ne!(code, 0, "{log}");
    assert!(
        log.contains("already registered") && log.contains("address 198.18.0.1"),
        "{log}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "refusal took {:?}",
        t.elapsed()
    );
    // h1 kept its registration and its lease.
    assert_eq!(
        node_row(&lab, "h1", "h1"),
        Some(("198.18.0.1".into(), "up".into()))
    );
    assert_eq!(lab.status("h1")["store"]["lease"], lease);

    // h1 killed and started again at once (its old lease still runs): it
    // takes its own registration back under a new lease, without waiting.
    let p = lab.daemon("h1");
    lab.tb.signal(p, Signal::SIGKILL).unwrap();
    assert!(lab.tb.wait_exit(p, Duration::from_secs(5)).is_some());
    let t = Instant::now();
    lab.start_etcd_args("h1", &prefix, TTL, &["--state-dir", &h1_state]);
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(u64::from(TTL)),
        "restart took {took:?}, as long as the old lease"
    );
    let log = lab.daemon("h1").log_tail(200);
    assert!(
        log.contains("took back this daemon's earlier registration"),
        "{log}"
    );
    let now = lab.status("h1")["store"]["lease"].clone();
    assert!(now.is_string() && now != lease, "lease {lease} -> {now}");
    // And it stays registered past the old lease's TTL (revoking the old
    // lease did not take the new document with it).
    std::thread::sleep(Duration::from_secs(u64::from(TTL) + 1));
    assert_eq!(
        node_row(&lab, "h1", "h1"),
        Some(("198.18.0.1".into(), "up".into()))
    );
}

#[test]
fn an_invalid_document_is_quarantined_and_everything_else_applies() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new("etcdquar", 2, "");
    let _etcd = etcd::start(&mut lab.tb);
    let prefix = format!("/vxmesh-{}", lab.tb.suffix());
    for h in ["h1", "h2"] {
        lab.start_etcd(h, &prefix, TTL);
    }
    let ok = |lab: &Lab, args: &[&str]| {
        let out = lab.cli("h1", args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(
        &lab,
        &[
            "network",
            "create",
            "front",
            "--vni",
            "4096",
            "--subnet",
            "10.0.9.0/24",
        ],
    );
    ok(
        &lab,
        &["endpoint", "add", "front", "10.0.9.2", "--node", "h2"],
    );
    let quarantined = |lab: &Lab| {
        sample(
            &lab.scrape("h1"),
            "vxmesh_store_quarantined_documents{store=\"etcd\"}",
        )
    };
    assert_eq!(quarantined(&lab), 0);

    // Behind the daemons' backs: a value that is not JSON, and a network
    // that breaks the file's rules (VNI 0).
    etcd::put_raw(&lab.tb, &format!("{prefix}/networks/junk"), b"{not json");
    etcd::put_raw(
        &lab.tb,
        &format!("{prefix}/networks/zero"),
        br#"{"version":1,"spec":{"name":"zero","vni":0,"subnet":"10.0.8.0/24"}}"#,
    );
    let counted = lab.until(Duration::from_secs(3), || quarantined(&lab) == 2);
    assert!(counted.is_some(), "quarantine gauge: {}", quarantined(&lab));
    let st = lab.status("h1");
    let listed = st["store"]["quarantined"].to_string();
    assert!(
        listed.contains("networks/junk") && listed.contains("networks/zero: vni 0"),
        "{listed}"
    );
    let log = lab.daemon("h1").log_tail(200);
    assert!(log.contains("store document quarantined"), "{log}");

    // Writes still go through and apply everywhere.
    ok(
        &lab,
        &["endpoint", "add", "front", "10.0.9.1", "--node", "h1"],
    );
    for h in ["h1", "h2"] {
        let both = lab.until(Duration::from_secs(3), || {
            lab.endpoint_ips(h, "front") == ["10.0.9.1", "10.0.9.2"]
        });
        assert!(both.is_some(), "{h}: {:?}", lab.endpoint_ips(h, "front"));
    }
    // So does a lease expiry: h2 killed, its endpoint leaves h1's tables.
    let p = lab.daemon("h2");
    lab.tb.signal(p, Signal::SIGKILL).unwrap();
    let gone = lab.until(Duration::from_secs(u64::from(TTL) + 3), || {
        lab.endpoint_ips("h1", "front") == ["10.0.9.1"]
    });
    assert!(
        gone.is_some(),
        "h1 still has h2's endpoint: the reconcile is frozen"
    );

    // Repaired: nothing quarantined any more.
    etcd::delete_raw(&lab.tb, &format!("{prefix}/networks/junk"));
    etcd::delete_raw(&lab.tb, &format!("{prefix}/networks/zero"));
    let clear = lab.until(Duration::from_secs(3), || quarantined(&lab) == 0);
    assert!(
        clear.is_some(),
        "still quarantined: {}",
        lab.status("h1")["store"]
    );
}

/// openssl, with a clear failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for the etcd address and client
/// certificates for `users`, in `dir`: `ca.pem`, `server{,-key}.pem`,
/// `<user>{,-key}.pem`.
fn make_pki(dir: &Path, users: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=vxmesh test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        format!(
            "subjectAltName=IP:{}\nextendedKeyUsage=serverAuth\n",
            etcd::ETCD_ADDR
        ),
    )
    .unwrap();
    let client_ext = dir.join("client.ext");
    std::fs::write(&client_ext, "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, cn, ext) in std::iter::once(("server", "etcd", "server.ext"))
        .chain(users.iter().map(|u| (*u, *u, "client.ext")))
    {
        let (key, csr, pem) = (
            format!("{name}-key.pem"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &pem,
                "-extfile",
                ext,
            ],
        );
    }
}

const TLS_URL: &str = "https://198.18.0.250:2379";
const METRICS_URL: &str = "http://198.18.0.250:2381";

/// etcd on TLS with client-certificate authentication, /health on a
/// plain metrics listener; waits until it is healthy.
fn start_tls_etcd(tb: &mut Testbed, pki: &Path) -> Proc {
    tb.add_host("etcd", &format!("{}/24", etcd::ETCD_ADDR), 1500)
        .expect("etcd host");
    let f = |n: &str| pki.join(n).to_string_lossy().into_owned();
    let data = tb.dir().join("etcd-tls-data");
    let ns = tb.ns("etcd");
    let p = tb
        .spawn_etcd_args(
            &ns,
            TLS_URL,
            &data,
            &[
                "--cert-file",
                &f("server.pem"),
                "--key-file",
                &f("server-key.pem"),
                "--trusted-ca-file",
                &f("ca.pem"),
                "--client-cert-auth",
                "--listen-metrics-urls",
                METRICS_URL,
            ],
        )
        .expect("spawn etcd");
    let health = format!("{}:2381", etcd::ETCD_ADDR).parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !tb.etcd_healthy(&tb.ns("etcd"), health) {
        assert!(p.exit_status().is_none(), "etcd exited: {}", p.log_tail(30));
        assert!(
            Instant::now() < deadline,
            "etcd not healthy: {}",
            p.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    p
}

fn tls_client(pki: &Path, user: &str) -> etcd_client::ConnectOptions {
    let read = |n: &str| std::fs::read_to_string(pki.join(n)).unwrap();
    etcd_client::ConnectOptions::new().with_tls(
        etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read("ca.pem")))
            .identity(etcd_client::Identity::from_pem(
                read(&format!("{user}.pem")),
                read(&format!("{user}-key.pem")),
            )),
    )
}

#[test]
fn tls_with_client_certificates_and_password_auth_and_no_password_in_clear() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new("etcdtls", 3, "");
    let pki: PathBuf = lab.tb.dir().join("pki");
    make_pki(&pki, &["vxmesh", "nobody"]);
    let _etcd = start_tls_etcd(&mut lab.tb, &pki);
    let prefix = format!("/vxmesh-{}", lab.tb.suffix());

    // Users: root (needed to turn auth on) and `vxmesh`, who may read and
    // write the cluster's prefix only; then authentication on.
    let range = format!("{prefix}/");
    etcd::with_client(
        &lab.tb,
        TLS_URL,
        Some(tls_client(&pki, "vxmesh")),
        async move |c| {
            use etcd_client::Permission;
            c.role_add("root").await?;
            c.user_add("root", "root-password", None).await?;
            c.user_grant_role("root", "root").await?;
            c.role_add("vx").await?;
            c.role_grant_permission("vx", Permission::read_write(range).with_prefix())
                .await?;
            c.user_add("vxmesh", "vxmesh-password", None).await?;
            c.user_grant_role("vxmesh", "vx").await?;
            c.auth_enable().await.map(|_| ())
        },
    );
    let f = |n: &str| pki.join(n).to_string_lossy().into_owned();
    let dir = lab.tb.dir().to_path_buf();
    let cred = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    };
    let good = cred("good-cred", "vxmesh:vxmesh-password\n");
    let bad = cred("bad-cred", "vxmesh:not-the-password\n");
    let tls = |user: &str| {
        vec![
            "--etcd-ca".to_string(),
            f("ca.pem"),
            "--etcd-cert".into(),
            f(&format!("{user}.pem")),
            "--etcd-key".into(),
            f(&format!("{user}-key.pem")),
        ]
    };
    // h1: the client certificate alone (CN `vxmesh` is the user).
    let a1 = tls("vxmesh");
    let a1: Vec<&str> = a1.iter().map(String::as_str).collect();
    lab.start_etcd_at("h1", TLS_URL, &prefix, TTL, &a1);
    // h2: a certificate naming no user, and the password.
    let mut a2 = tls("nobody");
    a2.extend(["--etcd-credentials".to_string(), good]);
    let a2: Vec<&str> = a2.iter().map(String::as_str).collect();
    lab.start_etcd_at("h2", TLS_URL, &prefix, TTL, &a2);
    let out = lab.cli(
        "h1",
        &[
            "network",
            "create",
            "front",
            "--vni",
            "4096",
            "--subnet",
            "10.0.9.0/24",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = lab.until(Duration::from_secs(3), || {
        lab.cli_json("h2", &["network", "ls"])
            .as_array()
            .is_some_and(|a| a.len() == 1)
    });
    assert!(seen.is_some(), "h2 did not get the network over TLS");
    for h in ["h1", "h2"] {
        let up = lab.until(Duration::from_secs(3), || {
            node_row(&lab, "h1", h).is_some_and(|(_, s)| s == "up")
        });
        assert!(up.is_some(), "{h} not registered");
    }

    // A wrong password: refused at once, not retried for 30 s.
    let mut a3 = tls("nobody");
    a3.extend(["--etcd-credentials".to_string(), bad]);
    let mut a3: Vec<String> = [
        "--store",
        "etcd",
        "--etcd-endpoints",
        TLS_URL,
        "--etcd-prefix",
        &prefix,
        "--node",
        "h3",
        "--address",
        "198.18.0.3",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(a3)
    .collect();
    let sock3 = lab.tb.dir().join("h3-bad.sock");
    a3.extend(["--socket".into(), sock3.to_string_lossy().into_owned()]);
    a3.extend(["--state-dir".into(), state_dir(&lab, "h3")]);
    let a3: Vec<&str> = a3.iter().map(String::as_str).collect();
    let t = Instant::now();
    let (code, log) = run_to_exit(&mut lab, "h3", &a3, Duration::from_secs(20));
    assert_ne!(code, 0, "{log}");
    assert!(log.contains("refused this daemon"), "{log}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

    // A password over plain http: refused before connecting.
    let plain = cred("plain-cred", "vxmesh:vxmesh-password\n");
    let (code, log) = run_to_exit(
        &mut lab,
        "h3",
        &[
            "--store",
            "etcd",
            "--etcd-endpoints",
            etcd::ETCD_URL,
            "--etcd-credentials",
            &plain,
            "--node",
            "h3",
            "--address",
            "198.18.0.3",
            "--socket",
            sock3.to_str().unwrap(),
        ],
        Duration::from_secs(10),
    );
    assert_ne!(code, 0, "{log}");
    assert!(log.contains("--etcd-allow-insecure-auth"), "{log}");
}
