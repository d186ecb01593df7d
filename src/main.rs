use clap::Parser;
use redeploy_operator::cli::{Cli, Command, crds_yaml};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => print!("{}", crds_yaml()?),
    }
    Ok(())
}
