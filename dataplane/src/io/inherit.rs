//! Descriptors a predecessor left to this process: the TAP queues,
//! underlay sockets, published-port listeners and DNS sockets of a daemon
//! that handed its node over (or that systemd kept in its descriptor store
//! across a crash). Each has a name; whatever would open or bind the same
//! thing takes it by that name first, so the device or socket is the very
//! same one (same queue, same backlog, same receive buffer) and nothing is
//! re-created.
//!
//! The pool is process-wide on purpose: inherited descriptors are a
//! property of the process, like `LISTEN_FDS`, and the places that open
//! sockets (the dataplane, the mesh, the DNS responders) should not each
//! need a handle threaded through to learn of them.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

static POOL: Mutex<BTreeMap<String, OwnedFd>> = Mutex::new(BTreeMap::new());

/// The name of TAP queue `q` of device `dev`.
pub fn tap_name(dev: &str, q: usize) -> String {
    format!("tap/{dev}/{q}")
}

/// The name of underlay socket `i` (`rx` for receivers, `tx` for senders).
pub fn underlay_name(kind: &str, i: usize) -> String {
    format!("underlay/{kind}/{i}")
}

/// The name of a listening socket (`tcp` or `udp`: published ports, VIPs
/// and DNS responders), without `:` so that systemd's descriptor store
/// takes it as a name too.
pub fn listener_name(kind: &str, addr: std::net::SocketAddr) -> String {
    format!("{kind}/{}/{}", addr.ip(), addr.port())
}

/// Puts descriptors in the pool (a later one with the same name replaces
/// an earlier one, which closes).
pub fn offer(fds: impl IntoIterator<Item = (String, OwnedFd)>) {
    let mut p = POOL.lock().expect("inherit pool poisoned");
    for (name, fd) in fds {
        p.insert(name, fd);
    }
}

/// Takes the descriptor called `name`, if a predecessor left one.
pub fn take(name: &str) -> Option<OwnedFd> {
    POOL.lock().expect("inherit pool poisoned").remove(name)
}

/// Takes every descriptor whose name starts with `prefix`.
pub fn take_prefix(prefix: &str) -> Vec<(String, OwnedFd)> {
    let mut p = POOL.lock().expect("inherit pool poisoned");
    let names: Vec<String> = p
        .range(prefix.to_string()..)
        .take_while(|(n, _)| n.starts_with(prefix))
        .map(|(n, _)| n.clone())
        .collect();
    names
        .into_iter()
        .filter_map(|n| p.remove(&n).map(|fd| (n, fd)))
        .collect()
}

/// Closes what nobody took (a listener of a service that no longer
/// exists, say) and returns the names, for the log.
pub fn close_leftovers() -> Vec<String> {
    std::mem::take(&mut *POOL.lock().expect("inherit pool poisoned"))
        .into_keys()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_descriptor_is_taken_once_and_leftovers_close() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        offer([
            ("test/a".to_string(), OwnedFd::from(a)),
            ("test/b".to_string(), OwnedFd::from(b)),
        ]);
        assert!(take("test/a").is_some());
        assert!(take("test/a").is_none());
        let left = close_leftovers();
        assert!(left.contains(&"test/b".to_string()));
        assert!(take("test/b").is_none());
    }
}
