//! # vxmesh testbed
//!
//! A multi-host testbed built from Linux network namespaces, shared by the
//! end-to-end tests in `tests/`, the `vxmesh lab` command and the benchmarks.
//!
//! ## Layout
//! - [`testbed`]: the [`Testbed`] guard. It owns a *switch* namespace holding
//!   the underlay bridge `br0`, one namespace per host (each with `eth0`
//!   plugged into the bridge), extra namespaces and veth links, and a
//!   temporary directory for configs and logs.
//! - [`process`]: processes started inside the namespaces ([`Proc`]), with
//!   logs on disk, systemd-style readiness (`NOTIFY_SOCKET`), signals and
//!   bounded waits.
//! - [`measure`]: measurements run inside the namespaces: [`ping()`] and
//!   [`icmp_ping()`], [`tcp_bulk()`] (pure Rust) and [`iperf3_tcp()`].
//! - [`flood`]: hostile traffic in bulk, [`UdpFlood`] (`sendmmsg` batches
//!   paced by what the receiver has read, [`udp_stats()`]).
//! - [`fdstore`]: a stand-in for systemd's notify socket and descriptor
//!   store (the real protocol), for crash-restart tests and benchmarks.
//! - [`fixtures`]: the cluster files in `config/fixtures/` that the
//!   benchmarks, the end-to-end tests and the fuzz targets share.
//! - [`runtime`]: real container runtimes in namespace hosts (dockerd,
//!   podman with CNI) and a registry-free busybox image, with guards that
//!   remove what the runtimes leave.
//!
//! ## Call protocol
//! Build a [`Testbed`] with [`Testbed::new`], add hosts and links, run or
//! spawn commands in them, and let it drop. Drop is the cleanup: every process
//! the testbed spawned is stopped (SIGTERM, then SIGKILL after a bounded wait,
//! by pid), then every namespace it created is deleted, then its temporary
//! directory is removed. Drop never panics, so it also runs during a failing
//! test's unwinding.
//!
//! ## Network safety
//! Nothing is ever created in the root namespace: veth pairs are created
//! directly inside the testbed's own namespaces (`ip -n <ns> link add ..
//! peer .. netns <other>`) and the bridge lives in the switch namespace.
//! Commands can only be run in namespaces the testbed created. Addresses are
//! checked: underlay from `198.18.0.0/15`, overlay from `10.0.0.0/8` (and IPv6
//! unique-local `fc00::/7`). Every name carries a per-run suffix
//! (`<tag>-<pid>-<counter>`), so parallel test binaries never collide.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod echo;
pub mod fdstore;
pub mod fixtures;
pub mod flood;
pub mod measure;
pub mod process;
pub mod runtime;
pub mod testbed;

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

pub use echo::echo;
pub use flood::{udp_stats, Flood, UdpFlood, UdpStats};
pub use measure::{icmp_ping, iperf3_tcp, ping, tcp_bulk, PingStats, Transfer};
pub use process::Proc;
pub use testbed::{Testbed, SWITCH};

/// Everything that can go wrong while building or using a testbed. Each
/// variant names the failing step and carries its context (command line,
/// path, process) and the OS error when there is one.
///
/// `Debug` prints the same text as `Display` (multi-line log tails stay
/// readable when a test calls `.expect()`).
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A namespace, tag or interface name is empty, too long or has
    /// characters that are not allowed.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// An address is malformed or outside the ranges the testbed may use.
    #[error("address {addr:?} rejected: {reason}")]
    InvalidAddress {
        /// The rejected address, as given.
        addr: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The namespace was not created by this testbed; nothing is run in it.
    #[error("namespace {0:?} does not belong to this testbed")]
    UnknownNamespace(String),
    /// A command could not be started at all.
    #[error("could not start `{cmd}`: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// The OS error from fork/exec.
        #[source]
        source: io::Error,
    },
    /// A command ran and exited unsuccessfully.
    #[error("`{cmd}` failed with {status}: {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its standard error, lossily decoded and trimmed.
        stderr: String,
    },
    /// A bounded operation did not finish in time (and was stopped).
    #[error("`{cmd}` did not finish within {after:?}{detail}")]
    Timeout {
        /// The command line or operation.
        cmd: String,
        /// The bound that was exceeded.
        after: Duration,
        /// Extra context (partial output), possibly empty.
        detail: String,
    },
    /// A file, directory or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// The step that failed, with its path or address.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A system call made through `nix` failed (setns, kill, poll).
    #[error("{what}: {source}")]
    Sys {
        /// The step that failed.
        what: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// The process was started by this testbed but has already exited.
    #[error("process {pid} (`{cmd}`) is not running: {status}")]
    NotRunning {
        /// Its pid.
        pid: u32,
        /// Its command line.
        cmd: String,
        /// How it ended.
        status: ExitStatus,
    },
    /// The process was not started by this testbed; it is never signalled.
    #[error("process {pid} was not started by this testbed")]
    UnknownProcess {
        /// The pid that was asked for.
        pid: u32,
    },
    /// A process started with [`Testbed::spawn_notify`] exited or timed out
    /// before sending `READY=1`.
    #[error("`{cmd}` did not report READY=1: {reason}\n--- last lines of {} ---\n{log_tail}", .log.display())]
    NotReady {
        /// The command line.
        cmd: String,
        /// What happened instead (exit status or timeout).
        reason: String,
        /// Path of the process's log.
        log: PathBuf,
        /// The last lines of that log.
        log_tail: String,
    },
    /// A tool's output could not be understood.
    #[error("could not parse the output of {what}: {reason}\n{output}")]
    Parse {
        /// Which tool or file.
        what: &'static str,
        /// What was missing or malformed.
        reason: String,
        /// The output (or its relevant part).
        output: String,
    },
    /// Every candidate suffix was already in use (stale namespaces or temp
    /// directories left by crashed runs with a recycled pid).
    #[error("no free suffix for tag {tag:?} after {tries} tries (stale namespaces? see `ip netns list`)")]
    NoFreeSuffix {
        /// The tag given to [`Testbed::new`].
        tag: String,
        /// How many suffixes were tried.
        tries: u32,
    },
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn sys(what: impl Into<String>, source: nix::Error) -> Error {
        Error::Sys {
            what: what.into(),
            source,
        }
    }
}

/// Locates a binary of this workspace.
///
/// Order: `$VXMESH_BIN_DIR/<name>` if the variable is set; else the cargo
/// target directory of the running executable (`target/<profile>/<name>`,
/// found as the parent of the `deps` or `examples` directory a test, bench or
/// example runs from; a binary runs from the profile directory itself).
///
/// # Panics
/// When the binary does not exist, with a message telling to run
/// `cargo build --bins` first. Tests want a loud failure here, not a skip.
pub fn workspace_bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("VXMESH_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe()
                .unwrap_or_else(|e| panic!("cannot locate the current executable: {e}"));
            profile_dir(&exe)
        }
    };
    let path = dir.join(name);
    if !path.is_file() {
        panic!(
            "binary `{name}` not found at {}: run `cargo build --bins` first \
             (or set VXMESH_BIN_DIR)",
            path.display()
        );
    }
    path
}

/// `target/<profile>` for an executable in it or in its `deps`/`examples`.
fn profile_dir(exe: &Path) -> PathBuf {
    let parent = exe.parent().unwrap_or(Path::new("."));
    match parent.file_name().and_then(|n| n.to_str()) {
        Some("deps") | Some("examples") => parent.parent().unwrap_or(parent).to_path_buf(),
        _ => parent.to_path_buf(),
    }
}

/// True when tests must not skip: the environment variable `CI` is `true`.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Checks that the testbed can run (effective uid 0).
///
/// Returns `true` as root. Otherwise, outside CI, prints why the caller is
/// skipping and returns `false`; the caller returns early.
///
/// # Panics
/// When not root and `CI=true`: in CI the end-to-end tests must run.
pub fn require_root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    if in_ci() {
        panic!("the netns testbed needs root, and CI=true forbids skipping: run the tests as root");
    }
    eprintln!("skipping: the netns testbed needs root (set CI=true to make this a failure)");
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_dir_of_test_bench_and_bin() {
        let t = Path::new("/w/target/debug/deps/testbed-0123abcd");
        assert_eq!(profile_dir(t), Path::new("/w/target/debug"));
        let e = Path::new("/w/target/release/examples/lab");
        assert_eq!(profile_dir(e), Path::new("/w/target/release"));
        let b = Path::new("/w/target/release/vxmesh");
        assert_eq!(profile_dir(b), Path::new("/w/target/release"));
    }

    #[test]
    fn errors_carry_context() {
        let e = Error::NotReady {
            cmd: "vxmeshd".into(),
            reason: "exited with exit status: 1".into(),
            log: PathBuf::from("/tmp/x.log"),
            log_tail: "bind: address in use".into(),
        };
        let s = e.to_string();
        assert!(s.contains("vxmeshd") && s.contains("/tmp/x.log") && s.contains("address in use"));
    }
}
