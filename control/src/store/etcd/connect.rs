//! How the daemon reaches etcd: timeouts, TLS (CA, client certificate) and
//! user/password, checked before any connection is made.
//!
//! The rules: `https://` endpoints need `--etcd-ca` (no system roots are
//! built in); TLS files are refused for `http://` endpoints (they would be
//! ignored); credentials over `http://` would travel in clear, so they are
//! refused unless the operator says `--etcd-allow-insecure-auth`. All
//! endpoints use one scheme.

use std::path::Path;
use std::time::Duration;

use etcd_client::ConnectOptions;
use tracing::warn;

use super::EtcdOptions;
use crate::store::StoreError;

fn read(p: &Path, what: &str) -> Result<String, StoreError> {
    std::fs::read_to_string(p)
        .map_err(|e| StoreError::Invalid(format!("reading the {what} {}: {e}", p.display())))
}

/// Whether the endpoints speak TLS (`https://`) or not (`http://`, or no
/// scheme, which etcd-client reads as http); mixed lists are refused.
fn tls_endpoints(o: &EtcdOptions) -> Result<bool, StoreError> {
    let mut tls = None;
    for e in &o.endpoints {
        let this = if e.starts_with("https://") {
            true
        } else if e.starts_with("http://") || !e.contains("://") {
            false
        } else {
            return Err(StoreError::Invalid(format!(
                "etcd endpoint `{e}`: expected http://host:port or https://host:port"
            )));
        };
        if tls.is_some_and(|t| t != this) {
            return Err(StoreError::Invalid(format!(
                "--etcd-endpoints mixes http:// and https:// ({}); use one scheme",
                o.endpoints.join(",")
            )));
        }
        tls = Some(this);
    }
    tls.ok_or_else(|| StoreError::Invalid("--etcd-endpoints is empty".into()))
}

/// The connect options for `o`, after the rules above.
pub fn connect_options(o: &EtcdOptions) -> Result<ConnectOptions, StoreError> {
    let tls = tls_endpoints(o)?;
    let plain = o.endpoints.join(",");
    if tls && o.ca.is_none() {
        return Err(StoreError::Invalid(format!(
            "https endpoints ({plain}) need --etcd-ca: the CA that signed etcd's certificate (no system roots are built in)"
        )));
    }
    if !tls && (o.ca.is_some() || o.cert.is_some() || o.key.is_some()) {
        return Err(StoreError::Invalid(format!(
            "--etcd-ca, --etcd-cert and --etcd-key are for https:// endpoints; {plain} is plain http"
        )));
    }
    if !tls && o.credentials.is_some() {
        if !o.allow_insecure_auth {
            return Err(StoreError::Invalid(format!(
                "--etcd-credentials over plain http ({plain}) would send the password in clear; use https:// endpoints with --etcd-ca, or pass --etcd-allow-insecure-auth to accept that"
            )));
        }
        warn!(endpoints = %plain, "etcd password sent without TLS (--etcd-allow-insecure-auth)");
    }
    // HTTP/2 pings find a silent (stopped, partitioned) etcd within ~3 s.
    let mut c = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    if let Some(p) = &o.credentials {
        let text = read(p, "credentials file")?;
        let text = text.trim();
        let (user, pass) = text
            .split_once(':')
            .or_else(|| text.split_once('\n'))
            .ok_or_else(|| {
                StoreError::Invalid(format!("{}: expected `user:password`", p.display()))
            })?;
        c = c.with_user(user.trim(), pass.trim());
    }
    if tls {
        let mut t = etcd_client::TlsOptions::new();
        if let Some(ca) = &o.ca {
            t = t.ca_certificate(etcd_client::Certificate::from_pem(read(ca, "CA file")?));
        }
        match (&o.cert, &o.key) {
            (Some(cert), Some(key)) => {
                t = t.identity(etcd_client::Identity::from_pem(
                    read(cert, "client certificate")?,
                    read(key, "client key")?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(StoreError::Invalid(
                    "--etcd-cert and --etcd-key go together".into(),
                ))
            }
        }
        c = c.with_tls(t);
    }
    Ok(c)
}

/// True for an answer that retrying will not change: etcd refused who we
/// are (a wrong password, a user without permission).
pub fn is_refusal(e: &StoreError) -> bool {
    let StoreError::Etcd(etcd_client::Error::GRpcStatus(s)) = e else {
        return false;
    };
    // gRPC status codes (the gRPC spec's numbers; tonic is not named here).
    const INVALID_ARGUMENT: i32 = 3;
    const PERMISSION_DENIED: i32 = 7;
    const UNAUTHENTICATED: i32 = 16;
    match i32::from(s.code()) {
        UNAUTHENTICATED | PERMISSION_DENIED => true,
        INVALID_ARGUMENT => s.message().contains("authentication failed"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Node;
    use std::path::PathBuf;

    fn opts(endpoints: &[&str]) -> EtcdOptions {
        EtcdOptions {
            endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
            prefix: "/vxmesh".into(),
            lease_ttl: 5,
            ca: None,
            cert: None,
            key: None,
            credentials: None,
            allow_insecure_auth: false,
            state_dir: PathBuf::from("/nonexistent"),
            node: Node {
                name: "h1".into(),
                address: "198.18.0.1".parse().unwrap(),
                public_key: None,
            },
            adopt_lease: None,
        }
    }

    fn err(o: &EtcdOptions) -> String {
        match connect_options(o) {
            Ok(_) => panic!("accepted {:?}", o.endpoints),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn credentials_over_plain_http_are_refused_unless_allowed() {
        let dir = std::env::temp_dir().join(format!("vxmesh-connect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cred = dir.join("cred");
        std::fs::write(&cred, "root:secret\n").unwrap();
        let mut o = opts(&["http://198.18.0.250:2379"]);
        o.credentials = Some(cred.clone());
        assert!(
            err(&o).contains("--etcd-allow-insecure-auth"),
            "{}",
            err(&o)
        );
        o.allow_insecure_auth = true;
        assert!(connect_options(&o).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tls_options_match_the_scheme() {
        let o = opts(&["https://198.18.0.250:2379"]);
        assert!(err(&o).contains("need --etcd-ca"), "{}", err(&o));
        let mut o = opts(&["http://198.18.0.250:2379"]);
        o.ca = Some(PathBuf::from("/ca.pem"));
        assert!(err(&o).contains("plain http"), "{}", err(&o));
        let o = opts(&["http://a:2379", "https://b:2379"]);
        assert!(err(&o).contains("mixes"), "{}", err(&o));
        let o = opts(&["unix:///x"]);
        assert!(err(&o).contains("expected http"), "{}", err(&o));
        assert!(connect_options(&opts(&["127.0.0.1:2379"])).is_ok());
    }
}
