//! The parts of the etcd store that need no etcd: documents read from the
//! watch, the status, the publish to the daemon and the wait for a write
//! to come back (paused tokio time, no real waiting).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::write::CAUGHT_UP;
use super::*;

/// A store that never connected (connecting is lazy), with its state in a
/// fresh directory.
fn store(tag: &str) -> (EtcdStore, PathBuf) {
    let dir = std::env::temp_dir().join(format!("vxmesh-etcd-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = EtcdOptions {
        endpoints: vec!["http://127.0.0.1:1".into()],
        prefix: "/vxmesh".into(),
        lease_ttl: 5,
        ca: None,
        cert: None,
        key: None,
        credentials: None,
        allow_insecure_auth: false,
        state_dir: dir.clone(),
        adopt_lease: None,
        node: Node {
            name: "h1".into(),
            address: "198.18.0.1".parse().unwrap(),
            public_key: None,
        },
    };
    (EtcdStore::new(opts).expect("options are valid"), dir)
}

fn doc(spec: serde_json::Value) -> Vec<u8> {
    Doc::new(spec).to_bytes()
}

#[test]
fn watch_events_fold_into_documents_and_quarantine() {
    let (s, dir) = store("fold");
    let mut snap = Snapshot::default();
    let net = json!({"name": "front", "vni": 4096, "subnet": "10.0.9.0/24"});
    s.fold_event(
        &mut snap,
        true,
        b"/vxmesh/networks/front",
        &doc(net.clone()),
    );
    assert_eq!(snap.docs["networks/front"].spec, net);
    // Another prefix that merely starts the same is not ours.
    s.fold_event(&mut snap, true, b"/vxmeshx/networks/a", &doc(net.clone()));
    s.fold_event(&mut snap, true, b"/other/networks/a", &doc(net.clone()));
    assert_eq!(snap.docs.len(), 1);
    // A value that is no document of ours replaces the document and says why.
    s.fold_event(&mut snap, true, b"/vxmesh/networks/front", b"{not json");
    assert!(snap.docs.is_empty());
    assert!(
        snap.invalid["networks/front"].starts_with("not a vxmesh document"),
        "{:?}",
        snap.invalid
    );
    let v2 = br#"{"version": 2, "spec": {}}"#;
    s.fold_event(&mut snap, true, b"/vxmesh/services/web", v2);
    assert_eq!(
        snap.invalid["services/web"],
        "document version 2 not understood"
    );
    // A good put clears the quarantine, a delete removes either.
    s.fold_event(&mut snap, true, b"/vxmesh/networks/front", &doc(net));
    assert!(snap.docs.contains_key("networks/front"));
    assert!(!snap.invalid.contains_key("networks/front"));
    s.fold_event(&mut snap, false, b"/vxmesh/networks/front", b"");
    s.fold_event(&mut snap, false, b"/vxmesh/services/web", b"");
    assert!(snap.docs.is_empty() && snap.invalid.is_empty());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn down_nodes_own_declared_endpoints_without_a_registration() {
    let (s, dir) = store("down");
    {
        let mut snap = s.snapshot.lock().unwrap();
        for (k, v) in [
            ("nodes/h2", json!({"name": "h2", "address": "198.18.0.2"})),
            (
                "endpoints/front/10.0.9.2",
                json!({"network": "front", "node": "h2", "ip": "10.0.9.2"}),
            ),
            (
                "endpoints/front/10.0.9.3",
                json!({"network": "front", "node": "h3", "ip": "10.0.9.3"}),
            ),
            (
                "endpoints/front/10.0.9.4",
                json!({"network": "front", "node": "h3", "ip": "10.0.9.4"}),
            ),
            // This node is never down, registered or not.
            (
                "endpoints/front/10.0.9.1",
                json!({"network": "front", "node": "h1", "ip": "10.0.9.1"}),
            ),
        ] {
            snap.docs.insert(k.into(), Doc::new(v));
        }
    }
    assert_eq!(s.down_nodes(), ["h3"]);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn connection_changes_are_timed_and_errors_kept_until_up() {
    let (s, dir) = store("status");
    assert!(!s.status().connected);
    s.set_connected(false, Some("refused".into()));
    assert_eq!(s.status().last_error.as_deref(), Some("refused"));
    // Still down without a new error: the last one stays.
    s.set_connected(false, None);
    assert_eq!(s.status().last_error.as_deref(), Some("refused"));
    s.set_connected(true, None);
    let st = s.status();
    assert!(st.connected && st.last_error.is_none(), "{st:?}");
    assert!(st.since_s < 5.0, "{st:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn publish_records_the_snapshot_and_the_appliers_error() {
    let (s, dir) = store("publish");
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let apply: Applier = Arc::new(move |snap: Snapshot| {
        seen.fetch_add(1, Ordering::SeqCst);
        if snap.revision == 8 {
            Err("etcd/networks/x: vni 0".into())
        } else {
            Ok(())
        }
    });
    let snap = |revision| Snapshot {
        revision,
        ..Snapshot::default()
    };
    s.publish(snap(7), &apply).await;
    assert_eq!((s.snapshot().revision, s.status().revision), (7, 7));
    assert_eq!(s.status().last_error, None);
    s.publish(snap(8), &apply).await;
    assert_eq!(s.status().revision, 8);
    assert_eq!(
        s.status().last_error.as_deref(),
        Some("etcd/networks/x: vni 0")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(start_paused = true)]
async fn a_write_waits_for_the_watch_but_not_forever() {
    let (s, dir) = store("caught-up");
    let s = Arc::new(s);
    s.snapshot.lock().unwrap().revision = 5;
    let t = tokio::time::Instant::now();
    s.caught_up(5).await;
    assert_eq!(t.elapsed(), Duration::ZERO, "already there");
    // The watch brings revision 9 after 300 ms: the write returns then.
    let bump = s.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        bump.snapshot.lock().unwrap().revision = 9;
    });
    let t = tokio::time::Instant::now();
    s.caught_up(9).await;
    let waited = t.elapsed();
    assert!(
        (Duration::from_millis(300)..Duration::from_millis(320)).contains(&waited),
        "{waited:?}"
    );
    // A revision that never comes: given up after the bound.
    let t = tokio::time::Instant::now();
    s.caught_up(100).await;
    let waited = t.elapsed();
    assert!(
        (CAUGHT_UP..CAUGHT_UP + Duration::from_millis(20)).contains(&waited),
        "{waited:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
