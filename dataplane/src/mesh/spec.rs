//! What a service asks of the mesh: the desired state the control plane
//! hands to [`super::runtime::Mesh::apply`]. Plain data, validated by the
//! control plane's config parser before it gets here.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::Serialize;

use super::balance::Algorithm;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// Where a service is published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every node listens and forwards to tasks on any node (Docker's
    /// routing mesh).
    Ingress,
    /// Only nodes with a local task listen, and they forward only to their
    /// local tasks.
    Host,
}

/// How other workloads of the network reach a service by name (see
/// [`super::dns`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    /// The name answers with the service's virtual IP; connections to
    /// `VIP:target` are balanced on the client's own node.
    #[default]
    Vip,
    /// DNS round robin: the name answers with the healthy tasks' addresses.
    Dnsrr,
}

/// One published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PortSpec {
    pub protocol: Protocol,
    /// The port clients connect to on every node.
    pub published: u16,
    /// The port the tasks listen on.
    pub target: u16,
    /// Listen on this address only (default: all of the node's addresses).
    pub listen: Option<IpAddr>,
}

impl PortSpec {
    /// The socket address to bind.
    pub fn bind_addr(&self) -> SocketAddr {
        SocketAddr::new(
            self.listen.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            self.published,
        )
    }
}

/// How task health is checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum HealthKind {
    /// A TCP connect to the task succeeds.
    Tcp,
    /// `GET path` answers with `status`.
    Http { path: String, status: u16 },
    /// A datagram `send` to the task's UDP port. With `expect` set, a reply
    /// holding those bytes within the timeout is up and anything else down;
    /// without it, only an ICMP port unreachable (ECONNREFUSED on the
    /// connected socket) is down, and silence or any reply is up.
    Udp { send: String, expect: String },
}

impl HealthKind {
    /// The protocol of the port this kind probes.
    pub fn protocol(&self) -> Protocol {
        match self {
            HealthKind::Udp { .. } => Protocol::Udp,
            HealthKind::Tcp | HealthKind::Http { .. } => Protocol::Tcp,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthSpec {
    pub kind: HealthKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Probe this port instead of the first target port of the kind's
    /// protocol.
    pub port: Option<u16>,
    /// Consecutive failed connects that eject a task (0: off).
    pub passive_failures: u32,
}

impl Default for HealthSpec {
    fn default() -> HealthSpec {
        HealthSpec {
            kind: HealthKind::Tcp,
            interval: Duration::from_millis(1000),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 2,
            port: None,
            passive_failures: 3,
        }
    }
}

/// What one client may hold of a service on one node, and how long the
/// relay waits on a client or task that does not keep up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ClientLimits {
    /// Open TCP connections one client address may hold (0: no cap); more
    /// are closed at once and counted.
    pub connections_per_source: u32,
    /// UDP sessions one client address may hold (0: no cap); datagrams that
    /// would open more are dropped and counted.
    pub sessions_per_source: u32,
    /// A client that sends nothing this long after connecting is closed
    /// and counted, before a task is picked (zero: off, for protocols where
    /// the server speaks first).
    pub first_byte_timeout: Duration,
    /// A write to a client or task that stays blocked this long (the peer
    /// stopped reading) ends the connection with a reset, counted.
    pub write_timeout: Duration,
}

impl ClientLimits {
    pub const DEFAULT_PER_SOURCE: u32 = 256;
    pub const DEFAULT_FIRST_BYTE: Duration = Duration::from_secs(10);
    pub const DEFAULT_WRITE: Duration = Duration::from_secs(30);
}

impl Default for ClientLimits {
    fn default() -> ClientLimits {
        ClientLimits {
            connections_per_source: ClientLimits::DEFAULT_PER_SOURCE,
            sessions_per_source: ClientLimits::DEFAULT_PER_SOURCE,
            first_byte_timeout: ClientLimits::DEFAULT_FIRST_BYTE,
            write_timeout: ClientLimits::DEFAULT_WRITE,
        }
    }
}

/// One service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceSpec {
    pub name: String,
    pub network: String,
    /// Overlay addresses of the tasks.
    pub tasks: Vec<Ipv4Addr>,
    pub ports: Vec<PortSpec>,
    pub balance: Algorithm,
    pub health: HealthSpec,
    pub mode: Mode,
    /// Send a PROXY protocol v2 header to the task first, so it sees the
    /// client's real address.
    pub proxy_protocol: bool,
    /// How long connections to a task that leaves (or to a stopping node)
    /// may go on before they are cut.
    pub drain: Duration,
    /// A task that comes up takes a growing share of new connections over
    /// this time.
    pub slow_start: Duration,
    /// A TCP connection with no byte either way for this long is closed.
    pub idle_timeout: Duration,
    /// A UDP session with no datagram either way for this long is removed.
    pub udp_timeout: Duration,
    /// Connections to try before a client connection is given up.
    pub connect_timeout: Duration,
    pub endpoint_mode: EndpointMode,
    /// The virtual IP in the service's network (`None` in `dnsrr` mode):
    /// configured, or allocated by the control plane.
    pub vip: Option<Ipv4Addr>,
    /// Open TCP connections this node relays for the service; more are
    /// accepted and closed at once, and counted (0: no limit).
    pub max_connections: u32,
    /// UDP sessions this node keeps for the service; datagrams that would
    /// open more are dropped and counted (0: no limit).
    pub max_sessions: u32,
    /// Per-client caps and the relay's timeouts on slow peers.
    pub limits: ClientLimits,
}

impl ServiceSpec {
    pub const DEFAULT_DRAIN: Duration = Duration::from_secs(30);
    pub const DEFAULT_IDLE: Duration = Duration::from_secs(3600);
    pub const DEFAULT_UDP_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    /// Each relayed connection holds two sockets and, with splice, two
    /// pipes (six descriptors): 1000 stays well inside common fd limits.
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 1000;
    pub const DEFAULT_MAX_SESSIONS: u32 = 10_000;

    /// The port a health check probes: the configured one, or the first
    /// target port of the protocol the check speaks.
    pub fn probe_port(&self) -> Option<u16> {
        let proto = self.health.kind.protocol();
        self.health.port.or_else(|| {
            self.ports
                .iter()
                .find(|p| p.protocol == proto)
                .map(|p| p.target)
        })
    }
}
