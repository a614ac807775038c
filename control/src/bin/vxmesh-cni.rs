//! `vxmesh-cni`: the CNI plugin (spec 1.0) for vxmesh networks. The runtime
//! runs it with `CNI_COMMAND` and friends in the environment and the
//! network configuration on stdin; it asks the local vxmeshd to do the
//! work (see `vxmesh_control::cni`) and prints the result, or the spec's
//! error document with a non-zero exit.

use std::io::{Read, Write};
use std::process::ExitCode;

use vxmesh_control::cni;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        eprintln!("vxmesh-cni: reading stdin: {e}");
        return ExitCode::FAILURE;
    }
    let version = serde_json::from_slice::<serde_json::Value>(&stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|s| s.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "1.0.0".into());
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vxmesh-cni: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let env = cni::Env::from_process();
    let out = rt.block_on(cni::run(&env, &stdin));
    let mut stdout = std::io::stdout();
    match out {
        Ok(Some(v)) => {
            let _ = writeln!(stdout, "{v}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(stdout, "{}", e.to_json(&version));
            ExitCode::FAILURE
        }
    }
}
