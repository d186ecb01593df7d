use clap::Parser;
use redeploy_operator::cli::{Cli, Command, run_crds};

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crds { dir } => run_crds(dir),
    }
}
