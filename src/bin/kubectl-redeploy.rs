//! `kubectl redeploy`: the kubectl plugin (on the PATH as `kubectl-redeploy`).

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use redeploy_operator::{
    api::Phase,
    plugin::{self, TriggerRequest},
};

#[derive(Parser, Debug)]
#[command(name = "kubectl redeploy", version, about = "Redeploy Apps, and manage their hooks")]
struct Cli {
    /// Namespace of the App; defaults to the kubeconfig context's.
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Redeploy an App, planned as a hook call without Git information would be.
    Trigger {
        app: String,
        /// Only these Services (comma-separated or repeated); `name:ref` builds that Service at that ref.
        #[arg(long, value_delimiter = ',')]
        services: Vec<String>,
        /// A DeploymentProfile, by name or display name.
        #[arg(long)]
        profile: Option<String>,
        /// Build Git-built Services at this branch, tag or commit.
        #[arg(long)]
        git_ref: Option<String>,
        /// Follow the Redeployment until it finishes; exit 1 unless it Succeeded.
        #[arg(long)]
        wait: bool,
        /// Print what would be deployed and why, per Service; store nothing.
        #[arg(long, conflicts_with = "wait")]
        dry_run: bool,
    },
    /// Print the App's hook URL (a secret: treat it as a password).
    Url { app: String },
    /// Give the App a new hook token; print the new URL. The old one stops working.
    Rotate { app: String },
    /// List the App's Redeployments, newest first.
    History { app: String },
    /// List the App's last hook calls (status.recentDeliveries), newest first.
    Deliveries { app: String },
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = kube::Client::try_default().await?;
    let namespace = cli.namespace.unwrap_or_else(|| client.default_namespace().to_string());
    match cli.command {
        Command::Trigger { app, services, profile, git_ref, wait, dry_run } => {
            let sender = std::env::var("USER").ok();
            let request = TriggerRequest { app, services, profile, git_ref, sender };
            if dry_run {
                print!("{}", plugin::dry_run(&client, &namespace, &request).await?);
                return Ok(ExitCode::SUCCESS);
            }
            let created = plugin::trigger(&client, &namespace, &request).await?;
            let name = created.metadata.name.clone().unwrap_or_default();
            let services: Vec<&str> = created.spec.plan.iter().map(|p| p.service.as_str()).collect();
            println!("redeployment.redeploy.dev/{name} created: {}", services.join(", "));
            if !wait {
                return Ok(ExitCode::SUCCESS);
            }
            let phase = plugin::follow(&client, &namespace, &name, |line| println!("{line}")).await?;
            Ok(if phase == Phase::Succeeded { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Url { app } => {
            println!("{}", plugin::hook_url(&client, &namespace, &app).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Rotate { app } => {
            println!("{}", plugin::rotate(&client, &namespace, &app, Duration::from_secs(60)).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::History { app } => {
            print!("{}", plugin::history(&client, &namespace, &app).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Deliveries { app } => {
            print!("{}", plugin::deliveries(&client, &namespace, &app).await?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
