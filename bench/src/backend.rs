//! `vxmesh-bench-backend`: the task `vxmesh-bench mesh` runs in a host
//! namespace, an HTTP/1.1 keep-alive server with 1 KiB and 1 MiB bodies
//! (see `vxmesh_bench::http`). Runs until killed.

use std::net::{SocketAddr, TcpListener};

use anyhow::Context;
use clap::Parser;

/// HTTP/1.1 keep-alive server: `/1m` answers 1 MiB, any other path 1 KiB.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8000")]
    listen: SocketAddr,
    /// Name sent in the `X-Task` header of every response.
    #[arg(long, default_value = "task")]
    name: String,
    /// Threads, each serving one connection at a time.
    #[arg(long, default_value_t = 64)]
    workers: usize,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let l = TcpListener::bind(a.listen).with_context(|| format!("binding {}", a.listen))?;
    eprintln!(
        "vxmesh-bench-backend {} listening on {} with {} workers",
        a.name, a.listen, a.workers
    );
    vxmesh_bench::http::serve(l, &a.name, a.workers).context("starting the workers")
}
