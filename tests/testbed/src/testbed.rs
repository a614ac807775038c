//! The [`Testbed`] guard: namespaces, the underlay bridge, veth links, running
//! commands and threads inside namespaces, and cleanup on drop.
//!
//! Shape of a testbed with two hosts:
//!
//! ```text
//!  h1-<suffix>            sw-<suffix>               h2-<suffix>
//!  eth0 198.18.0.1 ---- p1-h1 [br0] p2-h2 ---- eth0 198.18.0.2
//! ```

use std::collections::HashSet;
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};

use crate::process::{self, Tracked};
use crate::Error;

/// Short name of the switch namespace that holds the underlay bridge `br0`;
/// `tb.ns(SWITCH)` is its full name (e.g. for `tcpdump -i br0`).
pub const SWITCH: &str = "sw";

/// Where `ip netns add` mounts its namespaces.
const NETNS_DIR: &str = "/var/run/netns";

/// Longest short name (host or namespace) accepted.
const MAX_SHORT: usize = 16;
/// Longest tag accepted by [`Testbed::new`].
const MAX_TAG: usize = 8;
/// Linux interface names: IFNAMSIZ - 1.
const MAX_IFNAME: usize = 15;

/// Per-process counter making suffixes unique between testbeds of one run.
static COUNTER: AtomicU32 = AtomicU32::new(1);

/// A set of network namespaces and the processes running in them, all removed
/// when the value drops. See the crate documentation for the rules it keeps.
pub struct Testbed {
    suffix: String,
    dir: PathBuf,
    keep_dir: bool,
    /// (short, full) in creation order; deleted in reverse order.
    namespaces: Vec<(String, String)>,
    /// Interface names used per full namespace name, to refuse duplicates early.
    ifnames: HashSet<(String, String)>,
    next_port: u32,
    pub(crate) procs: Vec<Tracked>,
    pub(crate) next_file: u32,
}

impl Testbed {
    /// Creates the switch namespace (`sw-<suffix>`) with a bridge `br0` (up,
    /// no address) and the temporary directory. `tag` is a short word used in
    /// every name (e.g. `"ovl"`).
    ///
    /// Set `VXMESH_KEEP_TESTBED=1` to keep the temporary directory (logs,
    /// configs) after drop; namespaces and processes are removed regardless.
    pub fn new(tag: &str) -> Result<Testbed, Error> {
        check_name(tag, MAX_TAG)?;
        const TRIES: u32 = 16;
        for _ in 0..TRIES {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let suffix = format!("{tag}-{}-{n}", std::process::id());
            // A leftover of a crashed run with a recycled pid: try the next.
            if Path::new(NETNS_DIR)
                .join(format!("{SWITCH}-{suffix}"))
                .exists()
            {
                continue;
            }
            let dir = std::env::temp_dir().join(format!("vxmesh-{suffix}"));
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(format!("create {}", dir.display()), e)),
            }
            // From here on, Drop cleans up whatever was built if a step fails.
            let mut tb = Testbed {
                suffix,
                dir,
                keep_dir: std::env::var("VXMESH_KEEP_TESTBED").is_ok_and(|v| v == "1"),
                namespaces: Vec::new(),
                ifnames: HashSet::new(),
                next_port: 1,
                procs: Vec::new(),
                next_file: 1,
            };
            let sw = tb.add_namespace(SWITCH)?;
            tb.ip(&sw, &["link", "add", "name", "br0", "type", "bridge"])?;
            tb.ip(&sw, &["link", "set", "dev", "br0", "up"])?;
            tb.ifnames.insert((sw, "br0".into()));
            return Ok(tb);
        }
        Err(Error::NoFreeSuffix {
            tag: tag.into(),
            tries: TRIES,
        })
    }

    /// Unique suffix of this run, `<tag>-<pid>-<counter>` (e.g.
    /// `"ovl-1234-3"`), part of every namespace name.
    pub fn suffix(&self) -> &str {
        &self.suffix
    }

    /// Temporary directory of this testbed (removed on drop), for configs,
    /// logs and notify sockets.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Full namespace name of a short name: `<name>-<suffix>`. Pure string
    /// formatting; the namespace need not exist.
    pub fn ns(&self, name: &str) -> String {
        format!("{name}-{}", self.suffix)
    }

    /// Creates a bare namespace `<name>-<suffix>` with `lo` up and no other
    /// link. Returns the full name.
    pub fn add_namespace(&mut self, name: &str) -> Result<String, Error> {
        check_name(name, MAX_SHORT)?;
        if self.namespaces.iter().any(|(s, _)| s == name) {
            return Err(Error::InvalidName {
                name: name.into(),
                reason: "a namespace with this name already exists in this testbed",
            });
        }
        let full = self.ns(name);
        run(Command::new("ip").args(["netns", "add", &full]))?;
        // Recorded right after creation, so Drop deletes it even if `lo` fails.
        self.namespaces.push((name.into(), full.clone()));
        self.ip(&full, &["link", "set", "dev", "lo", "up"])?;
        self.ifnames.insert((full.clone(), "lo".into()));
        Ok(full)
    }

    /// Adds a host: a namespace `<name>-<suffix>` with `lo` up and a veth whose
    /// host end is `eth0` (address `addr`, e.g. `"198.18.0.1/24"`, MTU `mtu`,
    /// up) and whose other end is a port of `br0` in the switch namespace
    /// (same MTU, up). Returns the full namespace name.
    pub fn add_host(&mut self, name: &str, addr: &str, mtu: u32) -> Result<String, Error> {
        check_addr(addr)?;
        let full = self.add_namespace(name)?;
        let sw = self.ns(SWITCH);
        let port: String = format!("p{}-{name}", self.next_port)
            .chars()
            .take(MAX_IFNAME)
            .collect();
        self.next_port += 1;
        self.veth(&full, "eth0", &sw, &port, mtu)?;
        self.ip(&sw, &["link", "set", "dev", &port, "master", "br0"])?;
        self.ip(&sw, &["link", "set", "dev", &port, "up"])?;
        self.ip(&full, &["addr", "add", addr, "dev", "eth0"])?;
        self.ip(&full, &["link", "set", "dev", "eth0", "up"])?;
        Ok(full)
    }

    /// Adds a veth pair between namespaces `a` and `b` of this testbed (short
    /// or full names), named `a_if` in `a` and `b_if` in `b`, both with MTU
    /// `mtu` and up, with optional addresses (CIDR) on each side.
    #[allow(clippy::too_many_arguments)]
    pub fn link(
        &mut self,
        a: &str,
        a_if: &str,
        a_addr: Option<&str>,
        b: &str,
        b_if: &str,
        b_addr: Option<&str>,
        mtu: u32,
    ) -> Result<(), Error> {
        for addr in [a_addr, b_addr].into_iter().flatten() {
            check_addr(addr)?;
        }
        let (a, b) = (self.resolve(a)?, self.resolve(b)?);
        self.veth(&a, a_if, &b, b_if, mtu)?;
        for (ns, ifname, addr) in [(&a, a_if, a_addr), (&b, b_if, b_addr)] {
            if let Some(addr) = addr {
                self.ip(ns, &["addr", "add", addr, "dev", ifname])?;
            }
            self.ip(ns, &["link", "set", "dev", ifname, "up"])?;
        }
        Ok(())
    }

    /// Runs a command inside a namespace of this testbed (short or full name)
    /// with `ip netns exec` and `LC_ALL=C`, and returns its output. A non-zero
    /// exit status is an [`Error::Command`] with the command line and stderr.
    /// Not bounded in time: use [`Testbed::exec_timeout`] for anything that
    /// could hang.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<Output, Error> {
        let out = self.exec_unchecked(ns, args)?;
        check_status(&self.cmdline(ns, args), out)
    }

    /// Like [`Testbed::exec`] but returns the output whatever the exit status
    /// (to assert failures). Errors only when the command cannot be started.
    pub fn exec_unchecked(&self, ns: &str, args: &[&str]) -> Result<Output, Error> {
        let full = self.resolve(ns)?;
        let mut cmd = netns_command(&full, args);
        cmd.stdin(Stdio::null());
        cmd.output().map_err(|source| Error::Spawn {
            cmd: self.cmdline(ns, args),
            source,
        })
    }

    /// Like [`Testbed::exec`], bounded by `timeout`: past it the command (and
    /// its process group) is killed and [`Error::Timeout`] is returned with
    /// the partial output.
    pub fn exec_timeout(
        &self,
        ns: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Output, Error> {
        let full = self.resolve(ns)?;
        let line = self.cmdline(ns, args);
        let out = process::run_bounded(netns_command(&full, args), &line, timeout)?;
        check_status(&line, out)
    }

    /// Like [`Testbed::exec_timeout`] but returns the output whatever the
    /// exit status; still an error on timeout.
    pub fn exec_timeout_unchecked(
        &self,
        ns: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Output, Error> {
        let full = self.resolve(ns)?;
        process::run_bounded(netns_command(&full, args), &self.cmdline(ns, args), timeout)
    }

    /// Runs `f` on a fresh OS thread that has entered the namespace (setns
    /// `CLONE_NEWNET`), so sockets it creates belong to that namespace, and
    /// returns its result. A panic in `f` is resumed on the calling thread.
    pub fn in_ns<T: Send + 'static>(
        &self,
        ns: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        let handle = self.thread_in_ns(ns, f)?;
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Starts `f` on a fresh OS thread inside the namespace and returns its
    /// handle without waiting; the thread's result is `Err` if entering the
    /// namespace failed. Join it before the testbed drops: a live socket keeps
    /// a deleted namespace alive.
    pub fn thread_in_ns<T: Send + 'static>(
        &self,
        ns: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<JoinHandle<Result<T, Error>>, Error> {
        let full = self.resolve(ns)?;
        let path = Path::new(NETNS_DIR).join(&full);
        let file =
            File::open(&path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        std::thread::Builder::new()
            .name(format!(
                "ns-{}",
                ns.trim_end_matches(&format!("-{}", self.suffix))
            ))
            .spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| Error::sys(format!("setns({full}, CLONE_NEWNET)"), e))?;
                drop(file);
                Ok(f())
            })
            .map_err(|e| Error::io("spawn a thread", e))
    }

    /// Full name of a namespace of this testbed given its short or full name.
    /// Anything else is refused, so no command runs in a foreign namespace.
    pub(crate) fn resolve(&self, ns: &str) -> Result<String, Error> {
        self.namespaces
            .iter()
            .find(|(short, full)| short == ns || full == ns)
            .map(|(_, full)| full.clone())
            .ok_or_else(|| Error::UnknownNamespace(ns.into()))
    }

    /// The command line shown in errors.
    pub(crate) fn cmdline(&self, ns: &str, args: &[&str]) -> String {
        let full = self.resolve(ns).unwrap_or_else(|_| ns.to_string());
        format!("ip netns exec {full} {}", quote(args))
    }

    /// Creates a veth pair directly inside the two namespaces (never in the
    /// root namespace) and sets the MTU on both ends.
    fn veth(&mut self, a: &str, a_if: &str, b: &str, b_if: &str, mtu: u32) -> Result<(), Error> {
        for (ns, ifname) in [(a, a_if), (b, b_if)] {
            check_ifname(ifname)?;
            if self.ifnames.contains(&(ns.to_string(), ifname.to_string())) {
                return Err(Error::InvalidName {
                    name: format!("{ifname} in {ns}"),
                    reason: "this interface already exists in that namespace",
                });
            }
        }
        if a == b && a_if == b_if {
            return Err(Error::InvalidName {
                name: a_if.into(),
                reason: "both ends of a veth in one namespace need different names",
            });
        }
        let mtu = mtu.to_string();
        let args = ["link", "add", "name", a_if, "mtu", &mtu, "type", "veth"];
        self.ip(
            a,
            &[&args[..], &["peer", "name", b_if, "mtu", &mtu, "netns", b]].concat(),
        )?;
        self.ifnames.insert((a.into(), a_if.into()));
        self.ifnames.insert((b.into(), b_if.into()));
        Ok(())
    }

    /// `ip -n <full> <args>`, checked.
    fn ip(&self, full: &str, args: &[&str]) -> Result<Output, Error> {
        run(Command::new("ip").arg("-n").arg(full).args(args))
    }
}

impl Drop for Testbed {
    /// Stops every spawned process (SIGTERM, bounded wait, SIGKILL, by pid),
    /// deletes every namespace, removes the temporary directory. Failures are
    /// reported on stderr; nothing here panics.
    fn drop(&mut self) {
        process::stop_all(&mut self.procs);
        for (_, full) in self.namespaces.iter().rev() {
            match Command::new("ip")
                .args(["netns", "del", full])
                .stdin(Stdio::null())
                .output()
            {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "vxmesh-netns: `ip netns del {full}` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(e) => eprintln!("vxmesh-netns: cannot run `ip netns del {full}`: {e}"),
            }
        }
        if self.keep_dir {
            eprintln!("vxmesh-netns: kept {}", self.dir.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("vxmesh-netns: cannot remove {}: {e}", self.dir.display());
        }
    }
}

/// `ip netns exec <full> <args>` with a stable locale for parsing.
/// `nsenter --net=<netns> args...`: the network namespace only, the host's
/// mounts kept (what dockerd and podman need).
pub fn nsenter_command(full: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={NETNS_DIR}/{full}"))
        .args(args)
        .env("LC_ALL", "C");
    cmd
}

pub(crate) fn netns_command(full: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", full])
        .args(args)
        .env("LC_ALL", "C");
    cmd
}

/// Runs a command to completion and turns failure into [`Error::Command`].
fn run(cmd: &mut Command) -> Result<Output, Error> {
    let line = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            cmd: line.clone(),
            source,
        })?;
    check_status(&line, out)
}

pub(crate) fn check_status(cmd: &str, out: Output) -> Result<Output, Error> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(Error::Command {
            cmd: cmd.into(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Joins arguments for display, quoting those that need it.
pub(crate) fn quote(args: &[&str]) -> String {
    let q = |a: &&str| {
        if !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c))
        {
            a.to_string()
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    };
    args.iter().map(q).collect::<Vec<_>>().join(" ")
}

/// Tags and short namespace names: ASCII letters, digits, `-`, `_`, starting
/// with a letter or digit (so `ip` never takes one for an option).
fn check_name(name: &str, max: usize) -> Result<(), Error> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > max {
        "too long"
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        "only ASCII letters, digits, '-' and '_' are allowed"
    } else if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        "must start with a letter or digit"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: name.into(),
        reason,
    })
}

/// Interface names: 1 to 15 of ASCII letters, digits, `-`, `_`, `.`.
fn check_ifname(name: &str) -> Result<(), Error> {
    check_name(&name.replace('.', "_"), MAX_IFNAME)?;
    Ok(())
}

/// Addresses (optionally with a prefix length) must come from the underlay
/// (198.18.0.0/15), overlay (10.0.0.0/8) or IPv6 unique-local (fc00::/7).
pub(crate) fn check_addr(cidr: &str) -> Result<(), Error> {
    let bad = |reason| Error::InvalidAddress {
        addr: cidr.into(),
        reason,
    };
    let (ip, len) = match cidr.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (cidr, None),
    };
    let ip: IpAddr = ip.parse().map_err(|_| bad("not an IP address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if let Some(len) = len {
        match len.parse::<u8>() {
            Ok(l) if l <= max => {}
            _ => return Err(bad("bad prefix length")),
        }
    }
    let allowed = match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            o[0] == 10 || (o[0] == 198 && (o[1] & 0xfe) == 18)
        }
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    };
    if allowed {
        Ok(())
    } else {
        Err(bad(
            "outside 198.18.0.0/15 (underlay), 10.0.0.0/8 (overlay) and fc00::/7",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_confined_to_test_ranges() {
        for ok in [
            "198.18.0.1/24",
            "198.19.255.1/16",
            "10.1.2.3/8",
            "10.0.0.1",
            "fd00::1/64",
        ] {
            assert!(check_addr(ok).is_ok(), "{ok}");
        }
        for bad in [
            "192.168.1.1/24",
            "198.20.0.1/24",
            "8.8.8.8",
            "10.0.0.1/33",
            "2001:db8::1/64",
            "x",
        ] {
            assert!(check_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("h1", MAX_SHORT).is_ok());
        assert!(check_name("", MAX_SHORT).is_err());
        assert!(check_name("a/b", MAX_SHORT).is_err());
        assert!(check_name("-h", MAX_SHORT).is_err());
        assert!(check_name("averyveryverylongname", MAX_SHORT).is_err());
        assert!(check_ifname("eth0.100").is_ok());
        assert!(check_ifname("sixteen-chars-xx").is_err());
    }

    #[test]
    fn quoting_for_display() {
        assert_eq!(
            quote(&["ping", "-c", "3", "198.18.0.2"]),
            "ping -c 3 198.18.0.2"
        );
        assert_eq!(
            quote(&["sh", "-c", "echo 'hi'"]),
            r"sh -c 'echo '\''hi'\'''"
        );
    }
}
