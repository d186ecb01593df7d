//! Embeds the commit the binary is built from: `REDEPLOY_GIT_COMMIT` when set
//! (an image build has no `.git`: the Dockerfile passes it as a build
//! argument), else `git rev-parse HEAD`, else `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?.trim().to_string();
    (output.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=REDEPLOY_GIT_COMMIT");
    let commit = match std::env::var("REDEPLOY_GIT_COMMIT") {
        Ok(commit) if !commit.trim().is_empty() => commit.trim().to_string(),
        _ => {
            // Rebuilt when HEAD moves: HEAD itself, and the branch it points at.
            for path in ["HEAD", "logs/HEAD"] {
                if let Some(file) = git(&["rev-parse", "--git-path", path]) {
                    println!("cargo:rerun-if-changed={file}");
                }
            }
            git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    println!("cargo:rustc-env=REDEPLOY_GIT_COMMIT={commit}");
}
