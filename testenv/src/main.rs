//! `redeploy-testenv DIR`: starts the test control plane with its state in DIR,
//! writes `DIR/ready` once it serves, and runs until SIGINT or SIGTERM.
//! `make cluster` starts it in the background; `make cluster-down` stops it.
//! With `REDEPLOY_REAL_NODE=require` it starts the real node too.

use std::path::PathBuf;

use redeploy_testenv::ControlPlane;

fn main() -> anyhow::Result<()> {
    let dir =
        std::env::args_os().nth(1).map(PathBuf::from).ok_or_else(|| anyhow::anyhow!("usage: redeploy-testenv DIR"))?;
    let ready = dir.join("ready");
    let _ = std::fs::remove_file(&ready);
    let control_plane = ControlPlane::start_in(Some(dir))?;
    // With REDEPLOY_REAL_NODE=require, a real node too (see `ControlPlane::real_node`).
    if std::env::var(redeploy_testenv::REAL_NODE_ENV).is_ok_and(|v| v == "require") {
        control_plane.real_node()?;
    }
    std::fs::write(&ready, format!("{}\n", control_plane.kubeconfig_path().display()))?;
    println!("control plane ready at {}", control_plane.server_url());
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        anyhow::Ok(())
    })?;
    let _ = std::fs::remove_file(&ready);
    drop(control_plane);
    Ok(())
}
