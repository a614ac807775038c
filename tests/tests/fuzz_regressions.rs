//! Replays every fuzz input worth keeping through the same code the fuzz
//! targets run (`tests/fuzz/bodies.rs`), in the ordinary suite on stable:
//! the seed corpora (`tests/fuzz/corpus/<target>/`), the crashes that
//! `tests/fuzz/run.sh` saved (`tests/fuzz/regressions/<target>/`, committed)
//! and whatever libFuzzer left in `tests/fuzz/artifacts/<target>/` on this
//! machine. A crash stays a failing test here until the product is fixed.

#[path = "../fuzz/bodies.rs"]
mod bodies;

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every file directly under `dir`, sorted; none if it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

/// Runs `target`'s body on every saved input; fails listing each input
/// that panicked (the panic messages are printed above the list).
fn replay(target: &str) {
    let (_, body) = bodies::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a target of bodies::TARGETS");
    let dir = fuzz_dir();
    let seeds = files(&dir.join("corpus").join(target));
    assert!(
        !seeds.is_empty(),
        "no seeds in tests/fuzz/corpus/{target}/ (tests/fuzz/seed.sh writes them)"
    );
    let inputs = seeds
        .into_iter()
        .chain(files(&dir.join("regressions").join(target)))
        .chain(files(&dir.join("artifacts").join(target)));
    let mut failed = Vec::new();
    for path in inputs {
        let data = fs::read(&path).expect("readable input");
        if panic::catch_unwind(AssertUnwindSafe(|| body(&data))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} input(s) fail:\n  {}",
        failed.len(),
        failed.join("\n  ")
    );
}

#[test]
fn overlay_datagram() {
    replay("overlay_datagram");
}

#[test]
fn arp() {
    replay("arp");
}

#[test]
fn proxy_v2() {
    replay("proxy_v2");
}

#[test]
fn config() {
    replay("config");
}

#[test]
fn csum_gso() {
    replay("csum_gso");
}

#[test]
fn admin_api() {
    replay("admin_api");
}

#[test]
fn dns() {
    replay("dns");
}

#[test]
fn plugin_requests() {
    replay("plugin_requests");
}

#[test]
fn gro() {
    replay("gro");
}

#[test]
fn udp_gso() {
    replay("udp_gso");
}

#[test]
fn virtio_hdr() {
    replay("virtio_hdr");
}

#[test]
fn sealed_datagram() {
    replay("sealed_datagram");
}

#[test]
fn handshake() {
    replay("handshake");
}

/// A target added to `tests/fuzz/Cargo.toml` gets a replay here too.
#[test]
fn every_fuzz_target_is_replayed() {
    let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz manifest");
    let mut bins: Vec<&str> = manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|section| {
            section
                .lines()
                .find_map(|l| l.trim().strip_prefix("name = "))
                .map(|n| n.trim_matches('"'))
        })
        .collect();
    let mut replayed: Vec<&str> = bodies::TARGETS.iter().map(|(n, _)| *n).collect();
    bins.sort_unstable();
    replayed.sort_unstable();
    assert_eq!(bins, replayed, "fuzz targets vs bodies::TARGETS");
    for (name, _) in bodies::TARGETS {
        let test = format!("fn {name}()");
        assert!(
            include_str!("fuzz_regressions.rs").contains(&test),
            "no #[test] {test} in fuzz_regressions.rs"
        );
    }
}
