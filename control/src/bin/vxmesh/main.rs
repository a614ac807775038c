//! `vxmesh`: the command line, over vxmeshd's local admin API, and the lab.
//! [`args`] holds the arguments, [`show`] the commands that read and
//! [`change`] the ones that write; each command is one function.

mod args;
mod change;
mod show;

use std::process::ExitCode;

use clap::Parser;
use vxmesh_control::api::{self, client};
use vxmesh_control::lab;

use args::{Cli, Cmd, EndpointCmd, FdbCmd, KeyCmd, NodeCmd};
use vxmesh_dataplane::crypto::NodeKey;

/// A failed command: its exit code and message.
pub type Failed = (u8, String);

/// Exit codes: 0 ok, 1 the daemon answered with an error or the command
/// failed (an invalid value: the message says which), 2 bad usage, 3 the
/// daemon could not be reached, 4 no such object, 5 the store is the
/// cluster file (edit it and send SIGHUP), 6 the object already exists,
/// 7 the daemon cannot reach its store (etcd) right now.
const EXIT_UNREACHABLE: u8 = 3;
pub const EXIT_NOT_FOUND: u8 = 4;
const EXIT_READ_ONLY: u8 = 5;
const EXIT_EXISTS: u8 = 6;
const EXIT_STORE_DOWN: u8 = 7;

/// A client error as (exit code, message), the daemon's `error` text
/// unwrapped.
fn client_err(e: client::ClientError) -> Failed {
    match e {
        client::ClientError::Connect { .. } => (EXIT_UNREACHABLE, e.to_string()),
        client::ClientError::Status { status, body } => {
            let msg = serde_json::from_str::<api::ApiError>(&body)
                .map(|a| a.error)
                .unwrap_or(body);
            let code = match status {
                403 => EXIT_READ_ONLY,
                404 => EXIT_NOT_FOUND,
                409 => EXIT_EXISTS,
                503 => EXIT_STORE_DOWN,
                _ => 1,
            };
            (code, msg)
        }
        other => (1, other.to_string()),
    }
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("API types serialise")
    );
}

async fn run(cli: Cli) -> Result<(), Failed> {
    let (sock, json) = (cli.socket.as_path(), cli.json);
    match cli.cmd {
        Cmd::Lab(args) => lab::run(args, json)
            .await
            .map_err(|e| (1, format!("lab: {e:#}"))),
        Cmd::Status => show::status(sock, json).await,
        Cmd::Network { cmd } => match change::network(sock, json, &cmd).await {
            Some(r) => r,
            None => show::networks(sock, json, &cmd).await,
        },
        Cmd::Endpoint { cmd } => match change::endpoint(sock, json, &cmd).await {
            Some(r) => r,
            None => {
                let EndpointCmd::Ls { network } = cmd else {
                    unreachable!("change::endpoint takes the others")
                };
                show::endpoints(sock, json, network.as_deref()).await
            }
        },
        Cmd::Service { cmd } => match change::service(sock, json, &cmd).await {
            Some(r) => r,
            None => show::services(sock, json, &cmd).await,
        },
        Cmd::Metrics => show::metrics(sock).await,
        Cmd::Node { cmd: NodeCmd::Ls } => show::nodes(sock, json).await,
        Cmd::Fdb { cmd: FdbCmd::Show } => show::fdb(sock, json).await,
        Cmd::Key { cmd } => key(&cmd, json),
    }
}

/// `key generate FILE`, `key public FILE`.
fn key(cmd: &KeyCmd, json: bool) -> Result<(), Failed> {
    let (file, key) = match cmd {
        KeyCmd::Generate { file } => {
            let k = NodeKey::generate();
            k.save(file)
                .map_err(|e| (1, format!("{}: {e}", file.display())))?;
            (file, k)
        }
        KeyCmd::Public { file } => (file, NodeKey::load(file).map_err(|e| (1, e.to_string()))?),
    };
    if json {
        print_json(&serde_json::json!({ "file": file, "public_key": key.public() }));
    } else {
        println!("{}", key.public());
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime starts");
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("vxmesh: {msg}");
            ExitCode::from(code)
        }
    }
}
