//! `vxmeshd`: the per-node vxmesh daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
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
    /// Validate the config file and exit (0: valid, 2: errors printed).
    #[arg(long)]
    check: bool,
    /// Path of the admin API's unix socket.
    #[arg(long, env = "VXMESH_SOCKET", default_value = api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Also serve the admin API on this loopback address (e.g. 127.0.0.1:9489).
    #[arg(long, env = "VXMESH_ADMIN_ADDR")]
    admin_addr: Option<SocketAddr>,
    /// Log filter (tracing's env-filter syntax); RUST_LOG wins when set.
    #[arg(long, default_value = "info")]
    log_level: String,
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
        return match config::load(&args.config) {
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
        };
    }
    let opts = daemon::Options {
        config: args.config,
        node: args.node.expect("clap requires --node without --check"),
        socket: args.socket,
        admin_addr: args.admin_addr,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
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
