//! The mesh of one node: its services, their health probes and the
//! listeners on published ports. [`Mesh::apply`] takes the whole desired
//! state and applies it as a diff: a listener that stays is never closed
//! (its route is swapped), a task that leaves drains, and established
//! connections survive a reload.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use super::dns;
use super::limits::{Budget, Resources};
use super::probe;
use super::relay;
use super::service::{Service, ServiceStatus, Task};
use super::spec::{Protocol, ServiceSpec};
use super::tcp::{self, Route};
use super::udp;

mod sockets;
use sockets::{bind, bind_free, Bound};

/// What this node should do for one service.
#[derive(Clone, Debug)]
pub struct Desired {
    pub spec: ServiceSpec,
    /// The tasks this node forwards to (all of them in ingress mode, the
    /// local ones in host mode).
    pub tasks: Vec<Ipv4Addr>,
    /// Whether this node listens on the published ports.
    pub listen: bool,
    /// Further listeners into the same service, whatever `listen` says:
    /// (protocol, address, target port). The service's VIP listens here on
    /// `VIP:target` for each port. Bound with `IP_FREEBIND`, so they do not
    /// wait for the address to be on an interface.
    pub extra_listen: Vec<(Protocol, SocketAddr, u16)>,
    /// Tasks on other nodes whose TCP connections go through the relay of
    /// their node (see [`super::relay`]): task address -> relay address.
    pub relays: HashMap<Ipv4Addr, SocketAddr>,
}

/// This node's relay listener (see [`super::relay`]).
struct RelayListener {
    addr: SocketAddr,
    /// The listening socket, kept to hand it over.
    fd: OwnedFd,
    stop: watch::Sender<bool>,
    _task: JoinHandle<()>,
}

/// The DNS responder of one network.
struct DnsServer {
    network: String,
    /// The UDP socket and the TCP listener, kept to hand them over.
    fds: Vec<(String, OwnedFd)>,
    zone: Arc<ArcSwap<dns::Zone>>,
    stats: Arc<dns::DnsStats>,
    stop: watch::Sender<bool>,
    _task: JoinHandle<()>,
}

struct Listener {
    service: String,
    /// The listening socket, kept to hand it over.
    fd: OwnedFd,
    /// A UDP port's sessions (their upstream sockets go with a handover).
    sessions: Option<udp::Sessions>,
    route: Arc<ArcSwap<Route>>,
    stop: watch::Sender<bool>,
    /// The accept loop; it ends by itself once `stop` is sent.
    _task: JoinHandle<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The reason is in the message and not chained as a `source` too,
    /// so that `{:#}` printers do not repeat it.
    #[error("service {service}: cannot listen on {proto}/{addr}: {error}")]
    Bind {
        service: String,
        proto: &'static str,
        addr: SocketAddr,
        error: io::Error,
    },
}

/// The routing mesh of this node.
pub struct Mesh {
    handle: Handle,
    services: HashMap<String, Arc<Service>>,
    probes: HashMap<(String, Ipv4Addr), JoinHandle<()>>,
    listeners: HashMap<(Protocol, SocketAddr), Listener>,
    dns: HashMap<SocketAddr, DnsServer>,
    /// The node-wide budget and accept counters of every listener.
    res: Arc<Resources>,
    relay: Option<RelayListener>,
    /// What the relay serves; its policy is swapped on every change.
    relay_serve: Arc<relay::Serve>,
}

impl Mesh {
    /// A mesh whose budget comes from the process's `RLIMIT_NOFILE` now
    /// (raise it first: [`super::limits::raise_nofile`]).
    pub fn new(handle: Handle) -> Mesh {
        Mesh::with_budget(handle, Budget::for_this_process())
    }

    pub fn with_budget(handle: Handle, budget: Budget) -> Mesh {
        let b = budget.status();
        let res = Arc::new(Resources::new(budget));
        info!(
            descriptors = b.fds_limit,
            memory_bytes = b.bytes_limit,
            "mesh budget for client connections and sessions"
        );
        Mesh {
            handle,
            services: HashMap::new(),
            probes: HashMap::new(),
            listeners: HashMap::new(),
            dns: HashMap::new(),
            relay: None,
            relay_serve: Arc::new(relay::Serve {
                policy: Arc::default(),
                res: res.clone(),
                stats: Arc::default(),
                connect_timeout: ServiceSpec::DEFAULT_CONNECT_TIMEOUT,
                idle: ServiceSpec::DEFAULT_IDLE,
                write_timeout: super::spec::ClientLimits::default().write_timeout,
            }),
            res,
        }
    }

    /// Listens for relay requests on `addr` (this node's data-path address
    /// and the relay port; `None`: no relay) and serves them under
    /// `policy`. A listener that stays is kept; its policy is swapped.
    pub fn set_relay(
        &mut self,
        addr: Option<SocketAddr>,
        policy: relay::Policy,
    ) -> Result<Option<String>, MeshError> {
        let _rt = self.handle.enter();
        self.relay_serve.policy.store(Arc::new(policy));
        if self.relay.as_ref().map(|r| r.addr) == addr {
            return Ok(None);
        }
        let mut change = None;
        if let Some(old) = self.relay.take() {
            let _ = old.stop.send(true);
            change = Some(format!("relay on {} stopped", old.addr));
        }
        let Some(addr) = addr else {
            return Ok(change);
        };
        let bound = bind(Protocol::Tcp, addr, false).and_then(|b| Ok((b.dup()?, b)));
        let (fd, l) = match bound {
            Ok((fd, Bound::Tcp(l))) => (fd, l),
            Ok(_) => unreachable!("a TCP bind gives a listener"),
            Err(error) => {
                return Err(MeshError::Bind {
                    service: "the mesh relay".into(),
                    proto: "tcp",
                    addr,
                    error,
                })
            }
        };
        let l = tokio::net::TcpListener::from_std(l).expect("inside the runtime");
        let (stop, rx) = watch::channel(false);
        let task = self
            .handle
            .spawn(relay::serve(l, self.relay_serve.clone(), rx));
        info!(%addr, "mesh relay listening");
        self.relay = Some(RelayListener {
            addr,
            fd,
            stop,
            _task: task,
        });
        Ok(Some(format!("relay on {addr}")))
    }

    /// The relay's counters.
    pub fn relay_status(&self) -> relay::RelayCounters {
        let pool = &self.res.relay_pool;
        relay::RelayCounters {
            pool_reused: pool.stats.reused.load(std::sync::atomic::Ordering::Relaxed),
            pool_stale: pool.stats.stale.load(std::sync::atomic::Ordering::Relaxed),
            pool_idle: pool.len() as u64,
            ..self.relay_serve.stats.snapshot()
        }
    }

    /// The node-wide budget and accept counters.
    pub fn resources(&self) -> &Arc<Resources> {
        &self.res
    }

    /// Applies the desired state: services, their listeners and the DNS
    /// responders of `zones`. New sockets are all bound before anything
    /// changes: if one fails, nothing is applied.
    pub fn apply(
        &mut self,
        desired: Vec<Desired>,
        zones: Vec<dns::ZoneSpec>,
    ) -> Result<Vec<String>, MeshError> {
        let _rt = self.handle.enter();
        let mut changes = Vec::new();
        // 1. Bind what is new.
        let mut want: HashMap<(Protocol, SocketAddr), (String, u16)> = HashMap::new();
        for d in desired.iter().filter(|d| d.listen) {
            for p in &d.spec.ports {
                want.insert((p.protocol, p.bind_addr()), (d.spec.name.clone(), p.target));
            }
        }
        let mut free = HashSet::new();
        for d in &desired {
            for (proto, addr, target) in &d.extra_listen {
                // A wildcard listener on the same port already takes this
                // address (it must be the same service and target, or the
                // bind below fails with "address in use").
                let any = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port());
                if want.get(&(*proto, any)) == Some(&(d.spec.name.clone(), *target)) {
                    continue;
                }
                want.insert((*proto, *addr), (d.spec.name.clone(), *target));
                free.insert((*proto, *addr));
            }
        }
        let mut fresh = HashMap::new();
        let mut skipped = Vec::new();
        for (key, (svc, _)) in &want {
            if self.listeners.contains_key(key) {
                continue;
            }
            match bind(key.0, key.1, free.contains(key)).and_then(|b| Ok((b.dup()?, b))) {
                Ok(b) => {
                    fresh.insert(*key, b);
                }
                // A VIP listener that a local workload shadows (it listens
                // on all addresses at the target port, as a task on this node
                // may): the node runs on without it rather than refusing the
                // whole config; its workloads reach that task directly.
                Err(e) if free.contains(key) => {
                    tracing::warn!(service = %svc, proto = key.0.as_str(), addr = %key.1, error = %e,
                        "VIP listener unavailable on this node");
                    skipped.push(*key);
                }
                Err(error) => {
                    return Err(MeshError::Bind {
                        service: svc.clone(),
                        proto: key.0.as_str(),
                        addr: key.1,
                        error,
                    })
                }
            }
        }
        for k in &skipped {
            want.remove(k);
        }
        let mut fresh_dns = HashMap::new();
        for z in &zones {
            let addr = SocketAddr::new(z.addr.into(), 53);
            if self.dns.contains_key(&addr) {
                continue;
            }
            let sock = match bind_free(Protocol::Udp, addr) {
                Ok(Bound::Udp(s)) => Ok(s),
                Ok(Bound::Tcp(_)) => Err(io::Error::other("not a UDP socket")),
                Err(e) => Err(e),
            };
            match sock {
                Ok(sock) => {
                    // TCP on the same address, for clients whose UDP answer
                    // came back truncated; without it names still resolve
                    // over UDP, so a port held by a workload only warns.
                    let tcp = match bind_free(Protocol::Tcp, addr) {
                        Ok(Bound::Tcp(l)) => Some(l),
                        Ok(Bound::Udp(_)) => None,
                        Err(e) => {
                            tracing::warn!(network = %z.network, %addr, error = %e,
                                "DNS over TCP unavailable on this node");
                            None
                        }
                    };
                    fresh_dns.insert(addr, (sock, tcp));
                }
                // A workload on this node holds port 53 on every address
                // (a DNS server of its own): its neighbours on this node
                // lose vxmesh names, the node and its other networks run on.
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    tracing::warn!(network = %z.network, %addr, error = %e,
                        "DNS responder unavailable on this node");
                }
                Err(error) => {
                    return Err(MeshError::Bind {
                        service: format!("dns of network {}", z.network),
                        proto: "udp",
                        addr,
                        error,
                    })
                }
            }
        }
        // 2. Services: update or create; tasks that leave drain.
        let names: HashSet<&str> = desired.iter().map(|d| d.spec.name.as_str()).collect();
        for d in &desired {
            match self.services.get(&d.spec.name) {
                Some(s) => {
                    s.relays.store(Arc::new(d.relays.clone()));
                    for t in s.update(d.spec.clone(), &d.tasks) {
                        changes.push(format!("service {}: task {} draining", d.spec.name, t.addr));
                        self.schedule_cut(t, d.spec.drain);
                    }
                    s.reap();
                }
                None => {
                    let s = Service::new(d.spec.clone(), &d.tasks);
                    s.relays.store(Arc::new(d.relays.clone()));
                    self.services.insert(d.spec.name.clone(), Arc::new(s));
                    changes.push(format!("service {} added", d.spec.name));
                }
            }
        }
        let gone: Vec<String> = self
            .services
            .keys()
            .filter(|n| !names.contains(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(s) = self.services.remove(&name) {
                let drain = s.spec.load().drain;
                for t in s.update(s.spec.load().as_ref().clone(), &[]) {
                    self.schedule_cut(t, drain);
                }
                changes.push(format!("service {name} removed (draining)"));
            }
        }
        self.sync_probes();
        // 3. Listeners: keep (new route), add, stop.
        for (key, (svc, target)) in &want {
            let route = Arc::new(Route {
                service: self.services[svc].clone(),
                target: *target,
                res: self.res.clone(),
            });
            if let Some(l) = self.listeners.get_mut(key) {
                l.route.store(route);
                l.service = svc.clone();
                continue;
            }
            let route = Arc::new(ArcSwap::new(route));
            let (stop, rx) = watch::channel(false);
            let Some((fd, bound)) = fresh.remove(key) else {
                continue;
            };
            let mut sessions = None;
            let task = match bound {
                Bound::Tcp(l) => {
                    let l = tokio::net::TcpListener::from_std(l).expect("inside the runtime");
                    self.handle.spawn(tcp::serve(l, route.clone(), rx))
                }
                Bound::Udp(s) => {
                    let s = tokio::net::UdpSocket::from_std(s).expect("inside the runtime");
                    let open = udp::Sessions::default();
                    sessions = Some(open.clone());
                    self.handle.spawn(udp::serve(s, route.clone(), rx, open))
                }
            };
            info!(service = %svc, proto = key.0.as_str(), addr = %key.1, "listening");
            changes.push(format!(
                "service {svc}: listening on {}/{}",
                key.0.as_str(),
                key.1
            ));
            self.listeners.insert(
                *key,
                Listener {
                    service: svc.clone(),
                    fd,
                    sessions,
                    route,
                    stop,
                    _task: task,
                },
            );
        }
        let stale: Vec<_> = self
            .listeners
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect();
        for key in stale {
            if let Some(l) = self.listeners.remove(&key) {
                let _ = l.stop.send(true);
                changes.push(format!(
                    "service {}: stopped listening on {}/{}",
                    l.service,
                    key.0.as_str(),
                    key.1
                ));
            }
        }
        self.apply_dns(zones, fresh_dns, &mut changes);
        Ok(changes)
    }

    /// Swaps in the new zones, starts the responders bound in `fresh` and
    /// stops those no longer wanted.
    fn apply_dns(
        &mut self,
        zones: Vec<dns::ZoneSpec>,
        mut fresh: HashMap<SocketAddr, (std::net::UdpSocket, Option<std::net::TcpListener>)>,
        changes: &mut Vec<String>,
    ) {
        let mut keep = HashSet::new();
        for z in zones {
            let addr = SocketAddr::new(z.addr.into(), 53);
            keep.insert(addr);
            let zone = Arc::new(dns::Zone::new(&z, |n| self.services.get(n).cloned()));
            if let Some(s) = self.dns.get_mut(&addr) {
                s.zone.store(zone);
                s.network = z.network;
                continue;
            }
            let Some((sock, tcp)) = fresh.remove(&addr) else {
                continue;
            };
            let mut fds = Vec::new();
            let name = |kind| crate::io::inherit::listener_name(kind, addr);
            if let Ok(fd) = sock.as_fd().try_clone_to_owned() {
                fds.push((name("udp"), fd));
            }
            if let Some(Ok(fd)) = tcp.as_ref().map(|l| l.as_fd().try_clone_to_owned()) {
                fds.push((name("tcp"), fd));
            }
            let sock = tokio::net::UdpSocket::from_std(sock).expect("inside the runtime");
            let tcp =
                tcp.map(|l| tokio::net::TcpListener::from_std(l).expect("inside the runtime"));
            let zone = Arc::new(ArcSwap::new(zone));
            let stats = Arc::new(dns::DnsStats::default());
            let (stop, rx) = watch::channel(false);
            if let Some(l) = tcp {
                self.handle
                    .spawn(dns::serve_tcp(l, zone.clone(), stats.clone(), rx.clone()));
            }
            let task = self
                .handle
                .spawn(dns::serve(sock, zone.clone(), stats.clone(), rx));
            info!(network = %z.network, addr = %addr, "dns responder listening");
            changes.push(format!("network {}: dns on {addr}", z.network));
            self.dns.insert(
                addr,
                DnsServer {
                    network: z.network,
                    fds,
                    zone,
                    stats,
                    stop,
                    _task: task,
                },
            );
        }
        self.dns.retain(|addr, s| {
            let stay = keep.contains(addr);
            if !stay {
                let _ = s.stop.send(true);
                changes.push(format!("network {}: dns on {addr} stopped", s.network));
            }
            stay
        });
    }

    /// The DNS responders: network, address and counters.
    pub fn dns_status(&self) -> Vec<(String, SocketAddr, &dns::DnsStats)> {
        let mut v: Vec<_> = self
            .dns
            .iter()
            .map(|(a, s)| (s.network.clone(), *a, s.stats.as_ref()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// One probe loop per task; loops of tasks that left are stopped.
    fn sync_probes(&mut self) {
        let mut live = HashSet::new();
        for (name, s) in &self.services {
            for t in s.tasks.lock().expect("tasks lock").iter() {
                let key = (name.clone(), t.addr);
                live.insert(key.clone());
                if !self.probes.contains_key(&key) {
                    let h = self.handle.spawn(probe::run(s.clone(), t.clone()));
                    self.probes.insert(key, h);
                }
            }
        }
        self.probes.retain(|k, h| {
            let keep = live.contains(k);
            if !keep {
                h.abort();
            }
            keep
        });
    }

    /// Cuts a draining task's connections when its drain time is over.
    fn schedule_cut(&self, task: Arc<Task>, drain: Duration) {
        self.handle.spawn(async move {
            tokio::time::sleep(drain).await;
            let _ = task.cut.send(true);
        });
    }

    /// Stops every listener, waits up to `deadline` for open connections
    /// to end, then cuts the rest. Returns how many were cut.
    pub async fn drain(&mut self, deadline: Instant) -> u64 {
        for (_, l) in self.listeners.drain() {
            let _ = l.stop.send(true);
        }
        for (_, d) in self.dns.drain() {
            let _ = d.stop.send(true);
        }
        let tasks: Vec<Arc<Task>> = self
            .services
            .values()
            .flat_map(|s| s.tasks.lock().expect("tasks lock").clone())
            .collect();
        let open = || tasks.iter().map(|t| t.active.load(Relaxed)).sum::<u64>();
        while open() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let cut = open();
        for t in &tasks {
            let _ = t.cut.send(true);
        }
        for (_, p) in self.probes.drain() {
            p.abort();
        }
        cut
    }

    /// Longest drain time of any service.
    pub fn max_drain(&self) -> Duration {
        self.services
            .values()
            .map(|s| s.spec.load().drain)
            .max()
            .unwrap_or_default()
    }

    pub fn status(&self) -> Vec<ServiceStatus> {
        let mut v: Vec<_> = self.services.values().map(|s| s.status()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Listening sockets, for the status line.
    pub fn listeners(&self) -> usize {
        self.listeners.len()
    }
}
