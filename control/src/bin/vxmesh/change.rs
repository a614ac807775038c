//! The commands that change the cluster: each builds the typed body the
//! admin API takes (the cluster file's tables, [`ServiceUpdate`]) and sends
//! it.

use std::path::Path;

use hyper::Method;
use vxmesh_control::api::{client, ServiceUpdate};
use vxmesh_control::config::raw::{RawEndpoint, RawHealth, RawNetwork, RawPort, RawService};

use crate::args::{EndpointCmd, NetworkCmd, ServiceCmd, ServiceFlags};
use crate::{client_err, print_json, Failed};

/// Sends a write and reports it: `{"ok": true, ...}` with --json, else the
/// object's name (like docker prints an ID).
async fn write<T: serde::Serialize>(
    sock: &Path,
    json: bool,
    method: Method,
    path: &str,
    body: Option<&T>,
    what: &str,
) -> Result<(), Failed> {
    let body = body.map(|b| serde_json::to_value(b).expect("API types serialise"));
    client::request(sock, method, path, body.as_ref())
        .await
        .map_err(client_err)?;
    if json {
        print_json(&serde_json::json!({ "ok": true, "object": what }));
    } else {
        println!("{what}");
    }
    Ok(())
}

/// A write without a body.
async fn remove(sock: &Path, json: bool, path: &str, what: &str) -> Result<(), Failed> {
    write::<()>(sock, json, Method::DELETE, path, None, what).await
}

/// `network create` and `network rm`; `None` for the reading commands.
pub async fn network(sock: &Path, json: bool, cmd: &NetworkCmd) -> Option<Result<(), Failed>> {
    let r = match cmd {
        NetworkCmd::Create {
            name,
            vni,
            subnet,
            mtu,
            learning,
            announce,
            attachable,
            ageing_s,
            nodes,
            dns_forward,
            dns_forward_qps,
            fdb_cap,
            flood_pps,
            allow_ra,
            allow_dhcp,
            encrypted,
        } => {
            let spec = RawNetwork {
                name: name.clone(),
                vni: *vni,
                subnet: *subnet,
                mtu: *mtu,
                nodes: nodes.clone(),
                learning: *learning,
                encrypted: *encrypted,
                fdb_cap: *fdb_cap,
                ageing_s: *ageing_s,
                flood_pps: *flood_pps,
                announce: *announce,
                announce_cap: None,
                dns: None,
                domain: None,
                dns_forward: dns_forward.clone(),
                attachable: *attachable,
                pools: Vec::new(),
                allow_ra: *allow_ra,
                allow_dhcp: *allow_dhcp,
                dns_forward_qps: *dns_forward_qps,
            };
            write(sock, json, Method::POST, "/v1/networks", Some(&spec), name).await
        }
        NetworkCmd::Rm { name } => remove(sock, json, &format!("/v1/networks/{name}"), name).await,
        NetworkCmd::Ls | NetworkCmd::Inspect { .. } => return None,
    };
    Some(r)
}

/// `endpoint add` and `endpoint rm`; `None` for `ls`.
pub async fn endpoint(sock: &Path, json: bool, cmd: &EndpointCmd) -> Option<Result<(), Failed>> {
    let r = match cmd {
        EndpointCmd::Add {
            network,
            ip,
            node,
            mac,
            name,
        } => {
            let spec = RawEndpoint {
                network: network.clone(),
                node: node.clone(),
                ip: *ip,
                mac: mac.clone(),
                name: name.clone(),
                container: None,
                service: None,
            };
            let what = format!("{network}/{ip}");
            write(
                sock,
                json,
                Method::POST,
                "/v1/endpoints",
                Some(&spec),
                &what,
            )
            .await
        }
        EndpointCmd::Rm { network, ip } => {
            let what = format!("{network}/{ip}");
            remove(sock, json, &format!("/v1/endpoints/{what}"), &what).await
        }
        EndpointCmd::Ls { .. } => return None,
    };
    Some(r)
}

/// `service create|update|scale|rm`; `None` for the reading commands.
pub async fn service(sock: &Path, json: bool, cmd: &ServiceCmd) -> Option<Result<(), Failed>> {
    let path = |name: &str| format!("/v1/services/{name}");
    let r = match cmd {
        ServiceCmd::Create { name, flags } => match create_spec(name, flags) {
            Ok(spec) => write(sock, json, Method::POST, "/v1/services", Some(&spec), name).await,
            Err(e) => Err(e),
        },
        ServiceCmd::Update { name, flags } => match flags.update() {
            Ok(u) if u.is_empty() => Err((
                2,
                "service update: give at least one setting to change".into(),
            )),
            Ok(u) => write(sock, json, Method::PATCH, &path(name), Some(&u), name).await,
            Err(e) => Err((2, e)),
        },
        ServiceCmd::Scale { name, tasks } => {
            let u = ServiceUpdate {
                tasks: Some(tasks.clone()),
                ..ServiceUpdate::default()
            };
            write(sock, json, Method::PATCH, &path(name), Some(&u), name).await
        }
        ServiceCmd::Rm { name } => remove(sock, json, &path(name), name).await,
        ServiceCmd::Ls | ServiceCmd::Ps { .. } | ServiceCmd::Inspect { .. } => return None,
    };
    Some(r)
}

/// The `[[services]]` table `service create` sends.
fn create_spec(name: &str, flags: &ServiceFlags) -> Result<RawService, Failed> {
    let u = flags.update().map_err(|e| (2, e))?;
    let Some(network) = u.network else {
        return Err((2, "service create needs --network".into()));
    };
    Ok(RawService {
        name: name.to_string(),
        network,
        tasks: u.tasks.unwrap_or_default(),
        ports: u.ports.unwrap_or_default(),
        balance: u.balance,
        health: u.health,
        mode: u.mode,
        proxy_protocol: u.proxy_protocol,
        drain_ms: u.drain_ms,
        slow_start_ms: None,
        idle_timeout_ms: None,
        udp_timeout_ms: None,
        connect_timeout_ms: None,
        first_byte_timeout_ms: None,
        write_timeout_ms: None,
        max_connections: None,
        max_sessions: None,
        max_connections_per_source: None,
        max_sessions_per_source: None,
        vip: None,
        endpoint_mode: None,
    })
}

/// `PUBLISHED:TARGET[/tcp|udp]`, like `docker service create -p`.
fn parse_publish(p: &str) -> Result<RawPort, String> {
    let (ports, proto) = p.split_once('/').unwrap_or((p, "tcp"));
    let (a, b) = ports
        .split_once(':')
        .ok_or_else(|| format!("--publish {p}: expected PUBLISHED:TARGET[/tcp|udp]"))?;
    let port = |x: &str| {
        x.parse::<u16>()
            .map_err(|_| format!("--publish {p}: bad port `{x}`"))
    };
    Ok(RawPort {
        published: port(a)?,
        target: port(b)?,
        protocol: Some(proto.to_string()),
        listen: None,
    })
}

impl ServiceFlags {
    /// The settings given, as the API's partial service.
    fn update(&self) -> Result<ServiceUpdate, String> {
        let ports = self
            .publish
            .iter()
            .map(|p| parse_publish(p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut h = RawHealth::default();
        match self.health.as_deref() {
            None => {}
            Some("tcp") => h.kind = Some("tcp".into()),
            Some(x) if x.starts_with("http") => {
                h.kind = Some("http".into());
                let path = x.strip_prefix("http").unwrap_or("").trim_start_matches(':');
                h.path = Some(if path.is_empty() { "/" } else { path }.into());
            }
            Some("udp") => h.kind = Some("udp".into()),
            Some(x) => return Err(format!("--health {x}: expected tcp, http:/PATH or udp")),
        }
        h.interval_ms = self.health_interval_ms;
        h.timeout_ms = self.health_timeout_ms;
        h.rise = self.rise;
        h.fall = self.fall;
        Ok(ServiceUpdate {
            network: self.network.clone(),
            tasks: (!self.tasks.is_empty()).then(|| self.tasks.clone()),
            ports: (!ports.is_empty()).then_some(ports),
            balance: self.balance.clone(),
            mode: self.mode.clone(),
            proxy_protocol: self.proxy_protocol.then(|| "v2".to_string()),
            health: (h != RawHealth::default()).then_some(h),
            drain_ms: self.drain_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn flags_become_the_typed_update() {
        let flags = ServiceFlags {
            tasks: vec![Ipv4Addr::new(10, 0, 9, 2)],
            publish: vec!["8080:80".into(), "53:5353/udp".into()],
            health: Some("http:/healthz".into()),
            rise: Some(2),
            ..ServiceFlags::default()
        };
        let u = flags.update().unwrap();
        assert_eq!(
            serde_json::to_value(&u).unwrap(),
            serde_json::json!({
                "tasks": ["10.0.9.2"],
                "ports": [{"published": 8080, "target": 80, "protocol": "tcp"},
                          {"published": 53, "target": 5353, "protocol": "udp"}],
                "health": {"kind": "http", "path": "/healthz", "rise": 2},
            })
        );
        assert!(ServiceFlags::default().update().unwrap().is_empty());
        let bad = ServiceFlags {
            publish: vec!["8080".into()],
            ..ServiceFlags::default()
        };
        assert!(bad.update().unwrap_err().contains("PUBLISHED:TARGET"));
        let e = create_spec("web", &ServiceFlags::default()).unwrap_err();
        assert_eq!(e, (2, "service create needs --network".to_string()));
    }
}
