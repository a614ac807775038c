//! The bounds of the cluster file's numbers and the health check of a
//! `[[services]]` table. Every limit, cap and timeout has a maximum, so a
//! typo (an extra zero, seconds given as milliseconds) is an error naming
//! its line instead of a node that holds a million sessions or waits a
//! week; a health `path` is checked so that it cannot add lines to the
//! probe's request.

use std::time::Duration;

use vxmesh_dataplane::mesh::spec::{HealthKind, HealthSpec, PortSpec, Protocol};

use super::raw::{Item, Place, RawHealth};
use super::validate::Errs;

/// The accepted values of one key.
pub struct Bound {
    pub key: &'static str,
    pub min: u64,
    pub max: u64,
    /// 0 is accepted too, and means "off" (or "no limit").
    pub zero_off: bool,
}

impl Bound {
    /// The value of `v` (or `default`); out of bounds is an error at `at`,
    /// and the default is used so validation goes on.
    pub fn get<T>(&self, v: Option<T>, default: T, at: Place, errs: &mut Errs) -> T
    where
        T: Copy + Into<u64>,
    {
        let Some(v) = v else { return default };
        let n: u64 = v.into();
        if (self.zero_off && n == 0) || (self.min..=self.max).contains(&n) {
            return v;
        }
        let off = if self.zero_off { "0 (off) or " } else { "" };
        errs.at(
            at,
            format!(
                "{} must be {off}{} to {}, not {n}",
                self.key, self.min, self.max
            ),
        );
        default
    }

    /// A duration in milliseconds, the key of the same name in `it`.
    pub fn ms(&self, v: Option<u64>, default: Duration, it: Item, errs: &mut Errs) -> Duration {
        match v {
            None => default,
            Some(_) => Duration::from_millis(self.get(
                v,
                default.as_millis() as u64,
                it.key(self.key),
                errs,
            )),
        }
    }
}

const fn bound(key: &'static str, min: u64, max: u64, zero_off: bool) -> Bound {
    Bound {
        key,
        min,
        max,
        zero_off,
    }
}

const HOUR_MS: u64 = 3_600_000;

pub const DRAIN: Bound = bound("drain_ms", 0, HOUR_MS, false);
pub const SLOW_START: Bound = bound("slow_start_ms", 0, HOUR_MS, false);
pub const IDLE_TIMEOUT: Bound = bound("idle_timeout_ms", 100, 24 * HOUR_MS, false);
pub const UDP_TIMEOUT: Bound = bound("udp_timeout_ms", 100, HOUR_MS, false);
pub const CONNECT_TIMEOUT: Bound = bound("connect_timeout_ms", 10, 60_000, false);
pub const FIRST_BYTE_TIMEOUT: Bound = bound("first_byte_timeout_ms", 100, 300_000, true);
pub const WRITE_TIMEOUT: Bound = bound("write_timeout_ms", 100, 600_000, false);
pub const MAX_CONNECTIONS: Bound = bound("max_connections", 1, 1_000_000, true);
pub const MAX_SESSIONS: Bound = bound("max_sessions", 1, 1_000_000, true);
pub const CONNECTIONS_PER_SOURCE: Bound = bound("max_connections_per_source", 1, 1_000_000, true);
pub const SESSIONS_PER_SOURCE: Bound = bound("max_sessions_per_source", 1, 1_000_000, true);

pub const FDB_CAP: Bound = bound("fdb_cap", 1, 1 << 20, false);
pub const AGEING: Bound = bound("ageing_s", 1, 86_400, false);
pub const FLOOD_PPS: Bound = bound("flood_pps", 1, 10_000_000, true);

const INTERVAL: Bound = bound("health interval_ms", 10, HOUR_MS, false);
const RISE: Bound = bound("health rise", 1, 100, false);
const FALL: Bound = bound("health fall", 1, 100, false);
const PASSIVE: Bound = bound("health passive_failures", 1, 1000, true);
const PROBE_PORT: Bound = bound("health port", 1, 65535, false);
/// Longest health `path`, and longest UDP probe payload or reply.
pub const MAX_PATH: usize = 1024;
pub const MAX_UDP_PROBE: usize = 512;

/// Why a health `path` is refused, if it is: it must start with `/` and be
/// printable ASCII without spaces, so that the probe's request line stays
/// one line (a CR or LF would let the file add headers or a second request).
pub fn bad_path(p: &str) -> Option<String> {
    let printable = p.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if p.starts_with('/') && p.len() <= MAX_PATH && printable {
        return None;
    }
    Some(format!(
        "health path {p:?} must start with `/` and be at most {MAX_PATH} printable ASCII characters \
         without spaces: a CR, LF or other control character would inject lines into the probe request"
    ))
}

/// The health check of service `it` with `ports`. Without a `kind`, a
/// service that has UDP ports and no TCP port is checked over UDP (an ICMP
/// port unreachable is down), any other over TCP. Errors not tied to a key
/// of the health table are at the service's name.
pub fn health(
    raw: Option<&RawHealth>,
    ports: &[PortSpec],
    it: Item,
    errs: &mut Errs,
) -> HealthSpec {
    let has = |p: Protocol| ports.iter().any(|x| x.protocol == p);
    let mut health = HealthSpec::default();
    if !has(Protocol::Tcp) && has(Protocol::Udp) {
        health.kind = HealthKind::Udp {
            send: String::new(),
            expect: String::new(),
        };
    }
    let Some(h) = raw else { return health };
    let at = |key| it.key("health").key(key);
    match h.kind.as_deref() {
        None => {}
        Some("tcp") => health.kind = HealthKind::Tcp,
        Some("http") => {
            let path = match &h.path {
                Some(p) => {
                    if let Some(why) = bad_path(p) {
                        errs.at(at("path"), why);
                    }
                    p.clone()
                }
                None => "/".into(),
            };
            health.kind = HealthKind::Http {
                path,
                status: h.status.unwrap_or(200),
            };
        }
        Some("udp") => {
            health.kind = HealthKind::Udp {
                send: probe_bytes(&h.udp_send, "udp_send", it, errs),
                expect: probe_bytes(&h.udp_expect, "udp_expect", it, errs),
            }
        }
        Some(other) => errs.at(
            at("kind"),
            format!("health kind `{other}` must be \"tcp\", \"http\" or \"udp\""),
        ),
    }
    let is_udp = matches!(health.kind, HealthKind::Udp { .. });
    for (v, key) in [(&h.udp_send, "udp_send"), (&h.udp_expect, "udp_expect")] {
        if v.is_some() && !is_udp {
            errs.at(at(key), format!("health {key} needs kind = \"udp\""));
        }
    }
    if h.interval_ms.is_some() {
        health.interval =
            Duration::from_millis(INTERVAL.get(h.interval_ms, 1000, at("interval_ms"), errs));
    }
    if let Some(ms) = h.timeout_ms {
        if ms == 0 {
            errs.at(at("timeout_ms"), "health timeout_ms must be at least 1");
        }
        health.timeout = Duration::from_millis(ms.max(1));
    }
    if health.timeout > health.interval {
        errs.at(
            it.key("health"),
            "health timeout_ms must not exceed interval_ms",
        );
    }
    health.rise = RISE.get(h.rise, health.rise, at("rise"), errs);
    health.fall = FALL.get(h.fall, health.fall, at("fall"), errs);
    health.passive_failures = PASSIVE.get(
        h.passive_failures,
        health.passive_failures,
        at("passive_failures"),
        errs,
    );
    health.port = h
        .port
        .map(|p| PROBE_PORT.get(Some(p), 1u16, at("port"), errs));
    let proto = health.kind.protocol();
    if health.port.is_none() && !has(proto) && !ports.is_empty() {
        let other = match proto {
            Protocol::Tcp => "udp",
            Protocol::Udp => "tcp",
        };
        let (kind, place) = match h.kind.as_deref() {
            Some(k) => (k, at("kind")),
            None => ("tcp", it.key("name")),
        };
        errs.at(
            place,
            format!(
                "health kind `{kind}` probes a {} port, and the service has none: set health `port` or kind = \"{other}\"",
                proto.as_str().to_uppercase()
            ),
        );
    }
    health
}

/// A UDP probe's payload or expected reply: at most [`MAX_UDP_PROBE`] bytes.
fn probe_bytes(v: &Option<String>, key: &'static str, it: Item, errs: &mut Errs) -> String {
    let Some(s) = v else { return String::new() };
    if s.len() > MAX_UDP_PROBE {
        errs.at(
            it.key("health").key(key),
            format!("health {key} is longer than {MAX_UDP_PROBE} bytes"),
        );
    }
    s.clone()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::parse;
    use super::*;
    use vxmesh_dataplane::mesh::spec::ClientLimits;

    const BASE: &str = r#"
[[nodes]]
name = "h1"
address = "198.18.0.1"
[[networks]]
name = "front"
vni = 1
subnet = "10.0.9.0/24"
[[endpoints]]
network = "front"
node = "h1"
ip = "10.0.9.1"
"#;

    /// BASE has 12 lines; the service table starts on line 13.
    fn with_service(extra: &str) -> String {
        format!(
            "{BASE}[[services]]\nname = \"web\"\nnetwork = \"front\"\nports = [{{ published = 8080, target = 80 }}]\n{extra}\n"
        )
    }

    fn errors(text: &str) -> String {
        parse(Path::new("t"), text).unwrap_err().to_string()
    }

    #[test]
    fn a_health_path_with_cr_or_lf_is_refused_at_its_line() {
        let text = with_service(
            "health = { kind = \"http\", path = \"/ok HTTP/1.0\\r\\nHost: evil\\r\\n\\r\\nGET /x\" }",
        );
        let e = errors(&text);
        assert!(e.starts_with("t:17:"), "the line of the path: {e}");
        assert!(e.contains("inject lines into the probe request"), "{e}");
        assert!(e.contains("\\r\\n"), "the path is shown escaped: {e}");
        for bad in ["healthz", "/a b", "/tab\t", "/nul\u{0}", "/é"] {
            assert!(bad_path(bad).is_some(), "{bad:?}");
        }
        assert_eq!(bad_path("/healthz?full=1&x=%20"), None);
        assert!(bad_path(&format!("/{}", "a".repeat(MAX_PATH))).is_some());
        let ok = parse(
            Path::new("t"),
            &with_service("health = { kind = \"http\", path = \"/healthz\" }"),
        )
        .unwrap();
        assert_eq!(
            ok.services[0].health.kind,
            HealthKind::Http {
                path: "/healthz".into(),
                status: 200
            }
        );
    }

    #[test]
    fn limits_and_timeouts_have_maxima_named_at_their_line() {
        let text = with_service(
            "idle_timeout_ms = 0\nmax_sessions = 5000000\nfirst_byte_timeout_ms = 50\nwrite_timeout_ms = 0\nmax_connections_per_source = 2000000\nconnect_timeout_ms = 600000\ndrain_ms = 86400000",
        )
        .replace("vni = 1", "vni = 1\nfdb_cap = 10000000");
        let e = errors(&text);
        for want in [
            "t:8:11: fdb_cap must be 1 to 1048576, not 10000000",
            "t:18:19: idle_timeout_ms must be 100 to 86400000, not 0",
            "t:19:16: max_sessions must be 0 (off) or 1 to 1000000, not 5000000",
            "t:20:25: first_byte_timeout_ms must be 0 (off) or 100 to 300000, not 50",
            "t:21:20: write_timeout_ms must be 100 to 600000, not 0",
            "max_connections_per_source must be 0 (off) or 1 to 1000000, not 2000000",
            "connect_timeout_ms must be 10 to 60000, not 600000",
            "drain_ms must be 0 to 3600000, not 86400000",
        ] {
            assert!(e.contains(want), "{want}\nin:\n{e}");
        }
        let e = errors(&with_service(
            "health = { interval_ms = 7200000, rise = 0, fall = 1000, passive_failures = 5000 }",
        ));
        for want in [
            "health interval_ms must be 10 to 3600000",
            "health rise must be 1 to 100, not 0",
            "health fall must be 1 to 100, not 1000",
            "health passive_failures must be 0 (off) or 1 to 1000, not 5000",
        ] {
            assert!(e.contains(want), "{want}\nin:\n{e}");
        }
    }

    #[test]
    fn client_limits_default_and_can_be_set_or_turned_off() {
        let c = parse(Path::new("t"), &with_service("")).unwrap();
        assert_eq!(c.services[0].limits, ClientLimits::default());
        assert_eq!(c.networks[0].fdb_cap, 4096);
        let c = parse(
            Path::new("t"),
            &with_service("first_byte_timeout_ms = 0\nwrite_timeout_ms = 5000\nmax_connections_per_source = 8\nmax_sessions_per_source = 0"),
        )
        .unwrap();
        let l = c.services[0].limits;
        assert_eq!(l.first_byte_timeout, Duration::ZERO, "off");
        assert_eq!(l.write_timeout, Duration::from_secs(5));
        assert_eq!((l.connections_per_source, l.sessions_per_source), (8, 0));
    }

    #[test]
    fn udp_services_are_health_checked_over_udp() {
        let udp_only = |extra: &str| {
            with_service(extra).replace(
                "{ published = 8080, target = 80 }",
                "{ published = 5353, target = 53, protocol = \"udp\" }",
            )
        };
        let c = parse(Path::new("t"), &udp_only("")).unwrap();
        let s = &c.services[0];
        assert_eq!(
            s.health.kind,
            HealthKind::Udp {
                send: String::new(),
                expect: String::new()
            },
            "a UDP-only service gets the ICMP check by default"
        );
        assert_eq!(s.probe_port(), Some(53));
        let c = parse(
            Path::new("t"),
            &udp_only("health = { kind = \"udp\", udp_send = \"ping\", udp_expect = \"pong\" }"),
        )
        .unwrap();
        assert_eq!(
            c.services[0].health.kind,
            HealthKind::Udp {
                send: "ping".into(),
                expect: "pong".into()
            }
        );
        let e = errors(&udp_only("health = { kind = \"tcp\" }"));
        assert!(
            e.contains("health kind `tcp` probes a TCP port, and the service has none"),
            "{e}"
        );
        let e = errors(&with_service("health = { kind = \"udp\" }"));
        assert!(e.contains("probes a UDP port"), "{e}");
        let e = errors(&with_service("health = { udp_send = \"x\" }"));
        assert!(e.contains("health udp_send needs kind = \"udp\""), "{e}");
        let long = "x".repeat(MAX_UDP_PROBE + 1);
        let e = errors(&udp_only(&format!(
            "health = {{ kind = \"udp\", udp_send = \"{long}\" }}"
        )));
        assert!(e.contains("udp_send is longer than 512 bytes"), "{e}");
        // A health port makes either kind valid.
        parse(
            Path::new("t"),
            &udp_only("health = { kind = \"tcp\", port = 9000 }"),
        )
        .unwrap();
    }
}
