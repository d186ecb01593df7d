use clap::Parser;
use redeploy_operator::cli::{Cli, Command, run_crds};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    // Before the runtime starts its threads.
    redeploy_operator::allocator::configure();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crds { dir } => run_crds(dir),
        Command::Run(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
                .init();
            tokio::spawn(redeploy_operator::allocator::return_free_memory());
            let client = kube::Client::try_default().await?;
            redeploy_operator::operator::start(client, args.config()).await?.until_signal().await
        }
    }
}
