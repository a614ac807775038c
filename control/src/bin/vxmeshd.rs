//! `vxmeshd`: the per-node vxmesh daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vxmesh_control::model::Node;
use vxmesh_control::store::etcd::EtcdOptions;
use vxmesh_control::{api, config, daemon};

/// The vxmesh per-node daemon: VXLAN overlay networks in userspace.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The cluster file (the same on every host).
    #[arg(
        long,
        short,
        env = "VXMESH_CONFIG",
        default_value = "/etc/vxmesh/vxmesh.toml"
    )]
    config: PathBuf,
    /// This host's name among the file's [[nodes]].
    #[arg(long, env = "VXMESH_NODE", required_unless_present = "check")]
    node: Option<String>,
    /// Validate and exit (0: valid, 2: errors printed): the config file
    /// with the file store; with the etcd store the connection options
    /// (endpoints, TLS and credential files), connecting to nothing.
    #[arg(long)]
    check: bool,
    /// Path of the admin API's unix socket.
    #[arg(long, env = "VXMESH_SOCKET", default_value = api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Also serve the admin API on this loopback address (e.g. 127.0.0.1:9489).
    #[arg(long, env = "VXMESH_ADMIN_ADDR")]
    admin_addr: Option<SocketAddr>,
    /// A file (mode 0600) holding a token of at least 16 characters: with
    /// it, writes on --admin-addr are allowed to requests that carry
    /// `Authorization: Bearer <token>`. Without it that listener is read-only.
    #[arg(long, env = "VXMESH_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Where the desired state lives: `file` (the --config file, reloaded
    /// on SIGHUP) or `etcd` (watched under --etcd-prefix; this node is
    /// registered under a lease).
    #[arg(long, env = "VXMESH_STORE", default_value = "file", value_parser = ["file", "etcd"])]
    store: String,
    /// etcd client URLs, comma-separated (store etcd).
    #[arg(
        long,
        env = "VXMESH_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    etcd_endpoints: Vec<String>,
    /// Key prefix of this cluster in etcd.
    #[arg(long, env = "VXMESH_ETCD_PREFIX", default_value = "/vxmesh")]
    etcd_prefix: String,
    /// PEM CA bundle that signs etcd's certificate (https endpoints).
    #[arg(long, env = "VXMESH_ETCD_CA")]
    etcd_ca: Option<PathBuf>,
    /// PEM client certificate for etcd's client-cert-auth (with --etcd-key).
    #[arg(long, env = "VXMESH_ETCD_CERT")]
    etcd_cert: Option<PathBuf>,
    /// PEM key of --etcd-cert.
    #[arg(long, env = "VXMESH_ETCD_KEY")]
    etcd_key: Option<PathBuf>,
    /// A file holding `user:password` for etcd's authentication (needs
    /// https endpoints unless --etcd-allow-insecure-auth).
    #[arg(long, env = "VXMESH_ETCD_CREDENTIALS")]
    etcd_credentials: Option<PathBuf>,
    /// Send --etcd-credentials over plain http (in clear) all the same.
    #[arg(long, env = "VXMESH_ETCD_ALLOW_INSECURE_AUTH")]
    etcd_allow_insecure_auth: bool,
    /// Seconds this node's registration outlives its last keep-alive: a
    /// dead host leaves everyone's tables this long after it died.
    #[arg(long, env = "VXMESH_LEASE_TTL", default_value_t = 5, value_parser = clap::value_parser!(i64).range(1..=60))]
    lease_ttl: i64,
    /// This node's data-path (underlay) address (store etcd; with the file
    /// store it comes from [[nodes]]).
    #[arg(long, env = "VXMESH_ADDRESS")]
    address: Option<std::net::Ipv4Addr>,
    /// Where the daemon keeps its state: container allocations (cluster
    /// file store) and the Docker networks bound to vxmesh networks.
    #[arg(long, env = "VXMESH_STATE_DIR", default_value = daemon::Options::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Serve Docker's network and IPAM plugin protocol under this name
    /// (`docker network create -d NAME --ipam-driver NAME`); off unless set.
    #[arg(long, env = "VXMESH_DOCKER_PLUGIN")]
    docker_plugin: Option<String>,
    /// Where Docker looks for plugin sockets.
    #[arg(long, env = "VXMESH_DOCKER_PLUGIN_DIR", default_value = daemon::Options::DEFAULT_PLUGIN_DIR)]
    docker_plugin_dir: PathBuf,
    /// dockerd's API socket (for example /run/docker.sock): attached
    /// containers get their names (DNS) and `vxmesh.service` labels from it.
    #[arg(long, env = "VXMESH_DOCKER_HOST")]
    docker_host: Option<PathBuf>,
    /// Take the node over from the vxmeshd running on the same --socket
    /// (an upgrade or a restart without an outage): its TAP queues,
    /// sockets and listeners, learned entries and etcd lease; it stops once
    /// this one serves. SIGUSR2 to a running daemon starts one like this.
    #[arg(long)]
    takeover: bool,
    /// The handover version to claim (tests of the version fallback).
    #[arg(long, hide = true, default_value_t = vxmesh_control::handover::VERSION)]
    handover_version: u32,
    /// Take the node off the network for good and exit: remove its TAPs,
    /// bridges (with their containers' links) and nftables tables. Refused
    /// while a vxmeshd answers on --socket.
    #[arg(long, conflicts_with_all = ["check", "takeover"])]
    cleanup: bool,
    /// This node's private key for encrypted networks (base64, mode 0600;
    /// `vxmesh key generate` writes one). Default: the systemd credential
    /// `vxmesh-node.key` ($CREDENTIALS_DIRECTORY), then
    /// <state-dir>/vxmesh-node.key, if there is one.
    #[arg(long, env = "VXMESH_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Log filter (tracing's env-filter syntax); RUST_LOG wins when set.
    #[arg(long, default_value = "info")]
    log_level: String,
}

/// The etcd options the flags describe.
fn etcd_options(
    args: &Args,
    node: &str,
    address: std::net::Ipv4Addr,
    public_key: Option<vxmesh_dataplane::crypto::PublicKey>,
) -> EtcdOptions {
    EtcdOptions {
        endpoints: args.etcd_endpoints.clone(),
        prefix: format!("/{}", args.etcd_prefix.trim_matches('/')),
        lease_ttl: args.lease_ttl,
        ca: args.etcd_ca.clone(),
        cert: args.etcd_cert.clone(),
        key: args.etcd_key.clone(),
        credentials: args.etcd_credentials.clone(),
        allow_insecure_auth: args.etcd_allow_insecure_auth,
        state_dir: args.state_dir.clone(),
        node: Node {
            name: node.to_string(),
            address,
            public_key,
        },
        adopt_lease: None,
    }
}

/// `--check`: what can be validated before starting, for the store in use
/// (the unit runs it as ExecStartPre).
fn check(args: &Args) -> ExitCode {
    if let Err(e) = api::listen::admin_token(args.admin_addr, args.admin_token_file.as_deref()) {
        eprintln!("vxmeshd: {e}");
        return ExitCode::from(2);
    }
    if args.store == "etcd" {
        let node = args.node.clone().unwrap_or_default();
        let address = args.address.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
        let o = etcd_options(args, &node, address, None);
        return match vxmesh_control::store::etcd::check_options(&o) {
            Ok(()) => {
                println!(
                    "etcd {} {}: options ok (TLS: {}, credentials: {}); the desired state is checked as each write is made",
                    o.endpoints.join(","),
                    o.prefix,
                    if o.ca.is_some() { "yes" } else { "no" },
                    if o.credentials.is_some() { "yes" } else { "no" },
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vxmeshd: {e}");
                ExitCode::from(2)
            }
        };
    }
    match config::load(&args.config) {
        Ok(c) => {
            if let Some(node) = &args.node {
                if c.node(node).is_none() {
                    eprintln!(
                        "{}: node `{node}` is not among [[nodes]]",
                        args.config.display()
                    );
                    return ExitCode::from(2);
                }
            }
            println!(
                "{}: ok ({} nodes, {} networks, {} endpoints)",
                args.config.display(),
                c.nodes.len(),
                c.networks.len(),
                c.endpoints.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&args.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if args.check {
        return check(&args);
    }
    // Before the mesh exists: its budget is a share of this limit.
    match vxmesh_dataplane::mesh::limits::raise_nofile() {
        Ok((before, now)) => tracing::info!(
            before,
            now,
            "open files limit (RLIMIT_NOFILE) raised to the hard limit"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise RLIMIT_NOFILE: the mesh's budget follows the current limit")
        }
    }
    let node = args
        .node
        .clone()
        .expect("clap requires --node without --check");
    if args.cleanup {
        return match vxmesh_control::handover::node::cleanup(&args.state_dir, &node, &args.socket) {
            Ok(removed) => {
                println!(
                    "node {node}: removed {} device(s) {removed:?} and its nftables tables",
                    removed.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vxmeshd: --cleanup: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let node_key = match daemon::Options::find_node_key(args.key_file.as_deref(), &args.state_dir) {
        Ok(k) => k.map(std::sync::Arc::new),
        Err(e) => {
            eprintln!("vxmeshd: node key: {e}");
            return ExitCode::from(2);
        }
    };
    let public_key = node_key.as_ref().map(|k| k.public());
    let etcd = match (args.store == "etcd", args.address) {
        (false, _) => None,
        (true, Some(address)) => Some(etcd_options(&args, &node, address, public_key)),
        (true, None) => {
            eprintln!("vxmeshd: --store etcd needs --address (this node's data-path address)");
            return ExitCode::from(2);
        }
    };
    let opts = daemon::Options {
        config: args.config,
        node,
        etcd,
        socket: args.socket,
        admin_addr: args.admin_addr,
        admin_token_file: args.admin_token_file,
        state_dir: args.state_dir,
        docker_plugin: args.docker_plugin,
        docker_plugin_dir: args.docker_plugin_dir,
        docker_host: args.docker_host.map(|p| {
            // `unix:///run/docker.sock`, as DOCKER_HOST writes it, or a path.
            PathBuf::from(
                p.to_string_lossy()
                    .trim_start_matches("unix://")
                    .to_string(),
            )
        }),
        takeover: args.takeover,
        handover_version: args.handover_version,
        node_key,
    };
    // Named so that `top -H` and profiles tell the runtime's threads from
    // the lanes (vxm-lane-<i>) and from other programs' tokio runtimes.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("vxm-rt")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vxmeshd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(daemon::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(ce) = e.downcast_ref::<config::ConfigErrors>() {
                eprintln!("{ce}");
                return ExitCode::from(2);
            }
            eprintln!("vxmeshd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
