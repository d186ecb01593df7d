//! `redeploy-testenv DIR`: starts the test control plane with its state in DIR,
//! writes `DIR/ready` once it serves, and runs until SIGINT or SIGTERM.
//! `make cluster` starts it in the background; `make cluster-down` stops it.
//!
//! It starts the real node too where this machine can run one (and must with
//! `REDEPLOY_REAL_NODE=require`; `=skip` never does), with a `git daemon`
//! serving `DIR/git` to its pods, and describes it in `DIR/real-node.env`
//! (shell assignments, for `make demo`); otherwise it writes why not to
//! `DIR/real-node-unavailable`.

use std::{fmt::Write as _, path::PathBuf};

use redeploy_testenv::{ControlPlane, REAL_NODE_ENV, REAL_NODE_NAME, RealNode};

fn main() -> anyhow::Result<()> {
    let dir =
        std::env::args_os().nth(1).map(PathBuf::from).ok_or_else(|| anyhow::anyhow!("usage: redeploy-testenv DIR"))?;
    let ready = dir.join("ready");
    let node_env = dir.join("real-node.env");
    let unavailable = dir.join("real-node-unavailable");
    for stale in [&ready, &node_env, &unavailable] {
        let _ = std::fs::remove_file(stale);
    }
    let control_plane = ControlPlane::start_in(Some(dir.clone()))?;
    let required = std::env::var(REAL_NODE_ENV).is_ok_and(|v| v == "require");
    let node = match RealNode::unavailable_reason() {
        Some(reason) if !required => Err(reason),
        _ => match control_plane.real_node() {
            Ok(Some(node)) => Ok(node),
            Ok(None) => Err("this machine cannot run one".to_string()),
            // A machine that should run a node but failed to start one keeps the
            // control plane, unless the node was required.
            Err(e) if !required => Err(format!("{e:#}")),
            Err(e) => return Err(e),
        },
    };
    match node {
        Ok(node) => {
            let git = dir.join("git");
            std::fs::create_dir_all(&git)?;
            let git_url = node.serve_git(&git)?;
            let mut env = String::new();
            for (key, value) in [
                ("REAL_NODE", REAL_NODE_NAME.to_string()),
                ("REAL_NODE_REGISTRY", node.registry()),
                ("REAL_NODE_BASE_IMAGE", node.images().base.clone()),
                ("REAL_NODE_BUILDKIT_IMAGE", node.images().buildkit.clone()),
                ("REAL_NODE_POD_CIDR", node.pod_cidr().to_string()),
                ("REAL_NODE_GIT_DIR", git.display().to_string()),
                ("REAL_NODE_GIT_URL", git_url),
            ] {
                writeln!(env, "{key}='{}'", value.replace('\'', r"'\''"))?;
            }
            std::fs::write(&node_env, env)?;
            println!("real node {REAL_NODE_NAME} ready: pods run for real");
        }
        Err(reason) => {
            std::fs::write(&unavailable, format!("{reason}\n"))?;
            println!("no real node ({}): pods are completed by kwok", reason.lines().next().unwrap_or_default());
        }
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
    for done in [&ready, &node_env] {
        let _ = std::fs::remove_file(done);
    }
    drop(control_plane);
    Ok(())
}
