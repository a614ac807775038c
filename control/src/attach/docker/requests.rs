//! The request bodies of Docker's plugin calls (libnetwork's remote
//! driver and IPAM APIs) and their decoding, apart from acting on them:
//! what the fuzz target runs.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::SERVICE_LABEL;
use crate::attach::AttachError;

pub(super) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, AttachError> {
    serde_json::from_slice(body)
        .map_err(|e| AttachError::Invalid(format!("malformed request: {e}")))
}

/// A member Docker may send as `null` (Go's nil map or slice).
pub(super) fn or_null<'de, D: serde::Deserializer<'de>, T: Deserialize<'de> + Default>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct IpamData {
    #[serde(default)]
    pub(super) address_space: String,
    #[serde(default)]
    pub(super) pool: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct CreateNetwork {
    #[serde(rename = "NetworkID")]
    pub(super) network_id: String,
    #[serde(default)]
    pub(super) options: Value,
    #[serde(default, rename = "IPv4Data", deserialize_with = "or_null")]
    pub(super) ipv4_data: Vec<IpamData>,
    #[serde(default, rename = "IPv6Data", deserialize_with = "or_null")]
    pub(super) ipv6_data: Vec<IpamData>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct NetworkRef {
    #[serde(rename = "NetworkID")]
    pub(super) network_id: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Interface {
    #[serde(default)]
    pub(super) address: String,
    #[serde(default)]
    pub(super) mac_address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct EndpointReq {
    #[serde(rename = "NetworkID")]
    pub(super) network_id: String,
    #[serde(rename = "EndpointID")]
    pub(super) endpoint_id: String,
    #[serde(default)]
    pub(super) interface: Option<Interface>,
    #[serde(default)]
    pub(super) options: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RequestPool {
    #[serde(default)]
    pub(super) pool: String,
    #[serde(default, deserialize_with = "or_null")]
    pub(super) options: BTreeMap<String, String>,
    #[serde(default, rename = "V6")]
    pub(super) v6: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RequestAddress {
    #[serde(rename = "PoolID")]
    pub(super) pool_id: String,
    #[serde(default)]
    pub(super) address: String,
    #[serde(default, deserialize_with = "or_null")]
    pub(super) options: BTreeMap<String, String>,
}

/// The calls a plugin answers, in a fixed order (the fuzz target picks one
/// by index).
pub const METHODS: [&str; 21] = [
    "Plugin.Activate",
    "NetworkDriver.GetCapabilities",
    "NetworkDriver.CreateNetwork",
    "NetworkDriver.DeleteNetwork",
    "NetworkDriver.CreateEndpoint",
    "NetworkDriver.DeleteEndpoint",
    "NetworkDriver.EndpointOperInfo",
    "NetworkDriver.Join",
    "NetworkDriver.Leave",
    "NetworkDriver.ProgramExternalConnectivity",
    "NetworkDriver.RevokeExternalConnectivity",
    "NetworkDriver.DiscoverNew",
    "NetworkDriver.DiscoverDelete",
    "IpamDriver.GetCapabilities",
    "IpamDriver.GetDefaultAddressSpaces",
    "IpamDriver.RequestPool",
    "IpamDriver.ReleasePool",
    "IpamDriver.RequestAddress",
    "IpamDriver.ReleaseAddress",
    "NetworkDriver.Unknown",
    "",
];

/// Decodes a request body the way the plugin's dispatch does, without acting on it:
/// what the fuzz target runs. Never panics; a body that does not decode is
/// the error the plugin would answer.
pub fn decode(method: &str, body: &[u8]) -> Result<(), AttachError> {
    match method {
        "NetworkDriver.CreateNetwork" => {
            let r: CreateNetwork = parse(body)?;
            let _ = generic(&r.options);
            for d in r.ipv4_data.iter().chain(&r.ipv6_data) {
                let _ = (&d.address_space, &d.pool);
            }
            let _ = r.network_id;
        }
        "NetworkDriver.DeleteNetwork" => {
            let _: NetworkRef = parse(body)?;
        }
        "NetworkDriver.CreateEndpoint" => {
            let r: EndpointReq = parse(body)?;
            address(&r.interface.unwrap_or_default().address)?;
            let _ = r.options.get(SERVICE_LABEL);
        }
        "NetworkDriver.DeleteEndpoint" | "NetworkDriver.Join" | "NetworkDriver.Leave" => {
            let _: EndpointReq = parse(body)?;
        }
        "IpamDriver.RequestPool" => {
            let _: RequestPool = parse(body)?;
        }
        "IpamDriver.RequestAddress" | "IpamDriver.ReleaseAddress" => {
            let r: RequestAddress = parse(body)?;
            pool_network(&r.pool_id)?;
            if !r.address.is_empty() {
                address(&r.address)?;
            }
        }
        m if METHODS[..19].contains(&m) => {}
        other => return Err(AttachError::Invalid(format!("unknown call {other}"))),
    }
    Ok(())
}

/// The vxmesh network behind an IPAM pool ID (`vxmesh/<network>`).
pub(super) fn pool_network(pool_id: &str) -> Result<&str, AttachError> {
    pool_id
        .strip_prefix("vxmesh/")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| AttachError::Invalid(format!("pool `{pool_id}` is not a vxmesh pool")))
}

/// An address as Docker writes it: `10.0.9.5/24` or `10.0.9.5`.
pub(super) fn address(s: &str) -> Result<Ipv4Addr, AttachError> {
    s.split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|_| AttachError::Invalid(format!("`{s}` is not an IPv4 address")))
}

/// The generic driver options (`--opt k=v`) of a request's `Options`.
pub(super) fn generic(options: &Value) -> BTreeMap<String, String> {
    options
        .get("com.docker.network.generic")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_pools_parse_as_docker_writes_them() {
        assert_eq!(address("10.0.9.5/24").unwrap(), Ipv4Addr::new(10, 0, 9, 5));
        assert_eq!(address("10.0.9.5").unwrap(), Ipv4Addr::new(10, 0, 9, 5));
        assert!(address("fe80::1/64").is_err());
        assert_eq!(pool_network("vxmesh/front").unwrap(), "front");
        assert!(pool_network("default/front").is_err());
        assert!(pool_network("vxmesh/").is_err());
        let o = serde_json::json!({ "com.docker.network.generic": { "network": "front", "n": 1 } });
        assert_eq!(
            generic(&o).get("network").map(String::as_str),
            Some("front")
        );
        assert!(!generic(&o).contains_key("n"));
    }
}
