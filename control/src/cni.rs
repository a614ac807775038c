//! The CNI plugin's logic (the `vxmesh-cni` binary is a thin shell around
//! [`run`]): CNI spec 1.0 (and the 0.3/0.4 result shape for older
//! runtimes), ADD, DEL, CHECK and VERSION. The plugin does no device work
//! itself: it asks the local vxmeshd over its admin socket, which
//! allocates the address, registers the endpoint and moves a veth into the
//! container's namespace (see [`crate::attach`]).
//!
//! Network configuration (`type = "vxmesh-cni"`):
//!
//! ```json
//! { "cniVersion": "1.0.0", "name": "front", "type": "vxmesh-cni",
//!   "network": "front", "socket": "/run/vxmesh/vxmeshd.sock", "service": "web" }
//! ```
//!
//! `network` defaults to `name`, `socket` to vxmeshd's default, `service`
//! (the service the containers are tasks of) to none. Per container,
//! `CNI_ARGS` may carry `IP=<address>` (a static address; also taken from
//! `runtimeConfig.ips`), `VXMESH_SERVICE=<service>` and `K8S_POD_NAME`
//! (the DNS name; Podman sets it to the container's name).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use hyper::Method;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::client::{self, ClientError};
use crate::attach::{AttachRequest, AttachResponse};

/// The versions whose results this plugin writes.
pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A CNI error: the spec's code, a message and details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

/// Codes from the spec ("Error" section) and ours (100 and up).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_LATER: u32 = 11;
    /// No address left in the network.
    pub const EXHAUSTED: u32 = 100;
    /// The daemon refused the attachment (the message says why).
    pub const REFUSED: u32 = 101;
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error as the spec writes it on stdout.
    pub fn to_json(&self, version: &str) -> Value {
        json!({ "cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details })
    }
}

/// The plugin's part of the network configuration.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetConf {
    #[serde(default)]
    cni_version: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    socket: Option<PathBuf>,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    runtime_config: Option<RuntimeConfig>,
}

#[derive(Debug, Deserialize, Default)]
struct RuntimeConfig {
    #[serde(default)]
    ips: Vec<String>,
}

/// What the runtime passed in the environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
}

impl Env {
    pub fn from_process() -> Env {
        let v = |k: &str| std::env::var(k).unwrap_or_default();
        Env {
            command: v("CNI_COMMAND"),
            container_id: v("CNI_CONTAINERID"),
            netns: v("CNI_NETNS"),
            ifname: v("CNI_IFNAME"),
            args: v("CNI_ARGS"),
        }
    }
}

/// `CNI_ARGS`: `K=V;K=V`.
fn parse_args(s: &str) -> BTreeMap<String, String> {
    s.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn version_at_least_1(v: &str) -> bool {
    v.split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(0)
        >= 1
}

/// The attachment key of a container's interface.
pub fn key(container_id: &str, ifname: &str) -> String {
    format!("cni:{container_id}/{ifname}")
}

/// Percent-encodes a key for a URL path segment.
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn daemon_error(e: ClientError) -> CniError {
    match e {
        ClientError::Connect { .. } => {
            CniError::new(code::TRY_LATER, "vxmeshd is not reachable", e.to_string())
        }
        ClientError::Status { status, body } => {
            let msg = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                .unwrap_or(body);
            let c = match status {
                409 if msg.contains("no free address") => code::EXHAUSTED,
                503 => code::TRY_LATER,
                _ => code::REFUSED,
            };
            CniError::new(c, msg, format!("vxmeshd answered {status}"))
        }
        other => CniError::new(code::IO, "talking to vxmeshd failed", other.to_string()),
    }
}

/// The result document for `a` in the shape of `version`.
pub fn result(version: &str, a: &AttachResponse, netns: &str) -> Value {
    let mut ip = json!({ "address": format!("{}/{}", a.ip, a.prefix), "interface": 1 });
    if !version_at_least_1(version) {
        ip["version"] = json!("4");
    }
    let subnet = ipnet::Ipv4Net::new(a.ip, a.prefix)
        .map(|n| n.trunc().to_string())
        .unwrap_or_default();
    json!({
        "cniVersion": version,
        "interfaces": [
            { "name": a.host_ifname.clone().unwrap_or_default() },
            { "name": a.ifname.clone().unwrap_or_default(), "mac": a.mac, "sandbox": netns },
        ],
        "ips": [ip],
        "routes": [{ "dst": subnet }],
        "dns": { "nameservers": [a.dns.to_string()], "domain": a.domain, "search": [a.domain] },
    })
}

/// The network configuration on stdin.
fn parse_conf(stdin: &[u8]) -> Result<NetConf, CniError> {
    serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODE,
            "the network configuration is not valid JSON",
            e.to_string(),
        )
    })
}

/// Runs one CNI command: the JSON for stdout, or an error (also for
/// stdout, with a non-zero exit). `stdin` is the network configuration.
pub async fn run(env: &Env, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let conf = parse_conf(stdin)?;
    let version = if conf.cni_version.is_empty() {
        "1.0.0".to_string()
    } else {
        conf.cni_version.clone()
    };
    if env.command == "VERSION" {
        return Ok(Some(
            json!({ "cniVersion": version, "supportedVersions": SUPPORTED }),
        ));
    }
    if !SUPPORTED.contains(&version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("CNI version {version} is not supported"),
            format!("supported: {}", SUPPORTED.join(", ")),
        ));
    }
    let need = |v: &str, name: &str| {
        if v.is_empty() {
            Err(CniError::new(
                code::INVALID_ENV,
                format!("{name} is not set"),
                "",
            ))
        } else {
            Ok(())
        }
    };
    need(&env.command, "CNI_COMMAND")?;
    need(&env.container_id, "CNI_CONTAINERID")?;
    if env.command != "DEL" {
        need(&env.ifname, "CNI_IFNAME")?;
        need(&env.netns, "CNI_NETNS")?;
    }
    let network = conf.network.clone().unwrap_or_else(|| conf.name.clone());
    if network.is_empty() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "the configuration names no network",
            "",
        ));
    }
    let socket = conf
        .socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(crate::api::DEFAULT_SOCKET));
    let ifname = if env.ifname.is_empty() {
        "eth0"
    } else {
        env.ifname.as_str()
    };
    let k = key(&env.container_id, ifname);
    match env.command.as_str() {
        "ADD" => add(env, &conf, &version, &network, &socket, &k)
            .await
            .map(Some),
        "DEL" => {
            let path = format!("/v1/attachments/{}", path_segment(&k));
            client::request(&socket, Method::DELETE, &path, None)
                .await
                .map_err(daemon_error)?;
            Ok(None)
        }
        "CHECK" => {
            let req = AttachRequest {
                network,
                container: k,
                netns: Some(PathBuf::from(&env.netns)),
                ifname: Some(ifname.to_string()),
                ..AttachRequest::default()
            };
            let body = serde_json::to_value(&req).expect("request serialises");
            client::request(&socket, Method::POST, "/v1/attachments/check", Some(&body))
                .await
                .map_err(daemon_error)?;
            Ok(None)
        }
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_COMMAND `{other}` is not ADD, DEL, CHECK or VERSION"),
            "",
        )),
    }
}

/// The attachment an ADD asks for: the configuration and the runtime's
/// arguments (`CNI_ARGS`, `runtimeConfig.ips`) read into a request. Pure:
/// the fuzz target runs it on arbitrary input.
fn attach_request(
    env: &Env,
    conf: &NetConf,
    network: &str,
    k: &str,
) -> Result<AttachRequest, CniError> {
    let args = parse_args(&env.args);
    let ip_text = args.get("IP").cloned().or_else(|| {
        conf.runtime_config
            .as_ref()
            .and_then(|r| r.ips.first().cloned())
    });
    let ip = match ip_text {
        Some(t) => Some(
            t.split('/')
                .next()
                .unwrap_or_default()
                .parse::<Ipv4Addr>()
                .map_err(|_| {
                    CniError::new(
                        code::INVALID_CONFIG,
                        format!("IP `{t}` is not an IPv4 address"),
                        "",
                    )
                })?,
        ),
        None => None,
    };
    Ok(AttachRequest {
        network: network.to_string(),
        container: k.to_string(),
        ip,
        mac: args.get("MAC").cloned(),
        name: args.get("K8S_POD_NAME").filter(|n| !n.is_empty()).cloned(),
        service: args
            .get("VXMESH_SERVICE")
            .cloned()
            .or_else(|| conf.service.clone()),
        netns: Some(PathBuf::from(&env.netns)),
        ifname: Some(env.ifname.clone()),
    })
}

/// Decodes a configuration and `CNI_ARGS` as ADD would, without asking the
/// daemon: what the fuzz target runs. Never panics.
pub fn decode(stdin: &[u8], args: &str) -> Result<(), CniError> {
    let conf = parse_conf(stdin)?;
    let env = Env {
        command: "ADD".into(),
        container_id: "fuzz".into(),
        netns: "/nonexistent".into(),
        ifname: "eth0".into(),
        args: args.to_string(),
    };
    let network = conf.network.clone().unwrap_or_else(|| conf.name.clone());
    let req = attach_request(&env, &conf, &network, &key("fuzz", "eth0"))?;
    let _ = serde_json::to_value(&req).expect("a request serialises");
    Ok(())
}

async fn add(
    env: &Env,
    conf: &NetConf,
    version: &str,
    network: &str,
    socket: &Path,
    k: &str,
) -> Result<Value, CniError> {
    let req = attach_request(env, conf, network, k)?;
    let body = serde_json::to_value(&req).expect("request serialises");
    let answer = client::request(socket, Method::POST, "/v1/attachments", Some(&body))
        .await
        .map_err(daemon_error)?;
    let a: AttachResponse = serde_json::from_slice(&answer).map_err(|e| {
        CniError::new(
            code::DECODE,
            "vxmeshd's answer is not an attachment",
            e.to_string(),
        )
    })?;
    Ok(result(version, &a, &env.netns))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(cmd: &str) -> Env {
        Env {
            command: cmd.into(),
            container_id: "c1".into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            args: String::new(),
        }
    }

    #[tokio::test]
    async fn version_answers_without_a_daemon() {
        let out = run(&env("VERSION"), br#"{"cniVersion":"1.0.0"}"#)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out["cniVersion"], "1.0.0");
        assert!(out["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!("0.4.0")));
    }

    #[tokio::test]
    async fn bad_input_gets_the_spec_codes() {
        let conf = br#"{"cniVersion":"1.0.0","name":"front","type":"vxmesh-cni","socket":"/nonexistent/s.sock"}"#;
        let e = run(&env("ADD"), b"{not json").await.unwrap_err();
        assert_eq!(e.code, code::DECODE);
        let e = run(&env("ADD"), br#"{"cniVersion":"9.9.9","name":"n"}"#)
            .await
            .unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        let mut no_id = env("ADD");
        no_id.container_id.clear();
        assert_eq!(run(&no_id, conf).await.unwrap_err().code, code::INVALID_ENV);
        let e = run(&env("FROB"), conf).await.unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        let mut bad_ip = env("ADD");
        bad_ip.args = "IP=10.0.9.300".into();
        assert_eq!(
            run(&bad_ip, conf).await.unwrap_err().code,
            code::INVALID_CONFIG
        );
        // No daemon: "try again later", as the spec advises for a
        // transient failure.
        let e = run(&env("ADD"), conf).await.unwrap_err();
        assert_eq!(e.code, code::TRY_LATER, "{e:?}");
        let j = e.to_json("1.0.0");
        assert_eq!(j["code"], 11);
        assert!(j["msg"].as_str().unwrap().contains("vxmeshd"));
    }

    #[test]
    fn results_take_the_shape_of_the_asked_version() {
        let a = AttachResponse {
            network: "front".into(),
            ip: "10.0.9.5".parse().unwrap(),
            prefix: 24,
            mac: "02:42:0a:00:09:05".into(),
            mtu: 1450,
            dns: "10.0.9.254".parse().unwrap(),
            domain: "vxmesh".into(),
            host_ifname: Some("vxh0001".into()),
            ifname: Some("eth0".into()),
        };
        let r1 = result("1.0.0", &a, "/run/netns/x");
        assert_eq!(r1["ips"][0]["address"], "10.0.9.5/24");
        assert_eq!(r1["ips"][0]["interface"], 1);
        assert!(r1["ips"][0].get("version").is_none());
        assert_eq!(r1["interfaces"][1]["sandbox"], "/run/netns/x");
        assert_eq!(r1["routes"][0]["dst"], "10.0.9.0/24");
        assert_eq!(r1["dns"]["nameservers"][0], "10.0.9.254");
        let r0 = result("0.4.0", &a, "/run/netns/x");
        assert_eq!(r0["ips"][0]["version"], "4");
    }

    #[test]
    fn keys_and_args_parse() {
        assert_eq!(key("abc", "eth0"), "cni:abc/eth0");
        assert_eq!(path_segment("cni:abc/eth0"), "cni%3Aabc%2Feth0");
        let a = parse_args("IgnoreUnknown=1;K8S_POD_NAME=web-1;IP=10.0.9.9");
        assert_eq!(a["K8S_POD_NAME"], "web-1");
        assert_eq!(a["IP"], "10.0.9.9");
    }
}
