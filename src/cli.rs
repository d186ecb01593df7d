//! The `redeploy-operator` command line.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// `--version`: the crate's version and the commit it was built from (see `build.rs`).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("REDEPLOY_GIT_COMMIT"), ")");

#[derive(Parser, Debug)]
#[command(name = "redeploy-operator", version = VERSION, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the operator: the hook server, the admin server and the reconcilers.
    /// Connects with the usual kubeconfig (KUBECONFIG, ~/.kube/config) or in-cluster configuration.
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions as one YAML stream (the files of `crds/`, concatenated).
    Crds {
        /// Write one file per kind, `<plural>.yaml`, into this directory instead.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Address the hook listens on.
    #[arg(long, env = "REDEPLOY_HOOK_ADDR", default_value = "0.0.0.0:8080")]
    pub hook_addr: SocketAddr,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "REDEPLOY_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
    /// Externally visible base URL of the hook, e.g. https://hooks.example.com; hook URLs start with it.
    #[arg(long, env = "REDEPLOY_PUBLIC_URL")]
    pub public_url: url::Url,
    /// Largest hook body accepted, in bytes.
    #[arg(long, env = "REDEPLOY_BODY_LIMIT", default_value_t = 5 * 1024 * 1024)]
    pub body_limit: usize,
    /// Seconds a client has to send its request headers, and again its body.
    #[arg(long, env = "REDEPLOY_READ_TIMEOUT", default_value_t = 10)]
    pub read_timeout: u64,
    /// Hook calls of one App handled at once; more get 429 with Retry-After.
    #[arg(long, env = "REDEPLOY_CONCURRENCY_PER_APP", default_value_t = 32)]
    pub concurrency_per_app: usize,
    /// Bytes of hook bodies all calls together may hold at once, counted before
    /// a body is read (its length, or --body-limit for a chunked body); more
    /// get 503 with Retry-After. At least --body-limit.
    #[arg(long, env = "REDEPLOY_BODY_BUDGET", default_value_t = crate::hook::handler::DEFAULT_BODIES_IN_FLIGHT_BYTES)]
    pub body_budget: usize,
    /// Connections the hook (and, apart, the admin port) keeps open at once;
    /// further ones wait to be accepted until one closes.
    #[arg(long, env = "REDEPLOY_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 256)]
    pub max_connections: u64,
    /// Seconds a connection with no request in flight may stay silent before
    /// it is closed (an idle HTTP/1 keep-alive connection is closed after
    /// --read-timeout already, as it waits for the next request's headers).
    #[arg(long, env = "REDEPLOY_IDLE_TIMEOUT", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 60)]
    pub idle_timeout: u64,
    /// HTTP/2 requests at once on one connection.
    #[arg(long, env = "REDEPLOY_HTTP2_MAX_STREAMS", value_parser = clap::value_parser!(u32).range(1..), default_value_t = 32)]
    pub http2_max_streams: u32,
    /// Seconds between HTTP/2 keep-alive pings; a connection whose peer does
    /// not answer one within as long is closed.
    #[arg(long, env = "REDEPLOY_HTTP2_KEEP_ALIVE", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 20)]
    pub http2_keep_alive: u64,
    /// The GitHub REST API continuous deploy talks to (GitHub Enterprise Server: https://<host>/api/v3).
    #[arg(long, env = "REDEPLOY_GITHUB_API_URL", default_value = crate::github::DEFAULT_API_URL)]
    pub github_api_url: url::Url,
    /// The image of the default build Job: BuildKit with buildctl-daemonless.sh and git.
    #[arg(long, env = "REDEPLOY_BUILDER_IMAGE", default_value = crate::build::BUILDKIT_IMAGE)]
    pub builder_image: String,
    /// A registry (`host` or `host:port`) the operator asks for digests over
    /// plain HTTP (`resolveDigest`), besides loopback ones; repeat or separate with commas.
    #[arg(long = "insecure-registry", env = "REDEPLOY_INSECURE_REGISTRIES", value_delimiter = ',')]
    pub insecure_registries: Vec<String>,
    /// Run the reconcilers only while holding a Lease, so that several
    /// replicas can serve the hook. Needs --lease-namespace.
    #[arg(long, env = "REDEPLOY_LEADER_ELECTION")]
    pub leader_election: bool,
    /// Watch only this namespace (repeatable; comma-separated in the
    /// environment). None: the whole cluster.
    #[arg(long = "watch-namespace", env = "WATCH_NAMESPACES", value_delimiter = ',')]
    pub watch_namespaces: Vec<String>,
    /// Namespace of the leader Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", required_if_eq("leader_election", "true"))]
    pub lease_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, env = "REDEPLOY_LEASE_NAME", default_value = "redeploy-operator")]
    pub lease_name: String,
    /// This replica's name in the Lease; defaults to the pod's name.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}

impl RunArgs {
    pub fn config(&self) -> crate::operator::Config {
        let read_timeout = Duration::from_secs(self.read_timeout);
        crate::operator::Config {
            hook_addr: self.hook_addr,
            admin_addr: self.metrics_addr,
            settings: crate::context::Settings {
                public_url: self.public_url.as_str().trim_end_matches('/').to_string(),
                github_api_url: self.github_api_url.as_str().trim_end_matches('/').to_string(),
                builder_image: self.builder_image.trim().to_string(),
                insecure_registries: self
                    .insecure_registries
                    .iter()
                    .map(|host| host.trim().to_string())
                    .filter(|host| !host.is_empty())
                    .collect(),
            },
            limits: crate::hook::handler::Limits {
                body_bytes: self.body_limit,
                body_timeout: read_timeout,
                concurrent_per_app: self.concurrency_per_app,
                bodies_in_flight_bytes: self.body_budget,
            },
            connections: crate::server::ConnectionLimits {
                header_timeout: read_timeout,
                idle_timeout: Duration::from_secs(self.idle_timeout),
                max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
                http2_max_streams: self.http2_max_streams,
                http2_keep_alive: Duration::from_secs(self.http2_keep_alive),
            },
            leader_election: self.leader_election.then(|| {
                let identity = self.identity.clone().unwrap_or_else(|| {
                    // Unique per process when no pod name is given.
                    format!("redeploy-operator-{}", hex::encode(rand::random::<[u8; 4]>()))
                });
                crate::leader::LeaseConfig::new(
                    self.lease_namespace.as_deref().unwrap_or("default"),
                    &self.lease_name,
                    &identity,
                )
            }),
            scope: crate::cache::Scope::of(&self.watch_namespaces),
        }
    }
}

/// The file under `crds/` that holds `crd`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.spec.names.plural)
}

/// One CRD as the YAML document committed under `crds/`.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::SerializeError> {
    Ok(format!(
        "# Generated by `redeploy-operator crds --dir crds` from src/api; do not edit.\n---\n{}",
        serde_saphyr::to_string(crd)?
    ))
}

pub fn run_crds(dir: Option<PathBuf>) -> anyhow::Result<()> {
    for crd in crate::api::crds() {
        let yaml = crd_yaml(&crd)?;
        match &dir {
            Some(dir) => std::fs::write(dir.join(crd_file_name(&crd)), yaml)?,
            None => print!("{yaml}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command};

    fn config(args: &[&str]) -> crate::operator::Config {
        let mut argv = vec!["redeploy-operator", "run", "--public-url", "https://hooks.example.com"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).expect("arguments").command {
            Command::Run(run) => run.config(),
            Command::Crds { .. } => unreachable!("parsed run"),
        }
    }

    fn settings(args: &[&str]) -> crate::context::Settings {
        config(args).settings
    }

    #[test]
    fn watch_namespaces_make_the_scope() {
        use crate::cache::Scope;
        assert_eq!(config(&[]).scope, Scope::Cluster);
        let scope = config(&["--watch-namespace", "a", "--watch-namespace", "b,c"]).scope;
        assert_eq!(scope, Scope::Namespaces(vec!["a".into(), "b".into(), "c".into()]));
    }

    #[test]
    fn the_builder_image_and_insecure_registries_are_settings() {
        let defaults = settings(&[]);
        assert_eq!(defaults.builder_image, crate::build::BUILDKIT_IMAGE);
        assert!(defaults.insecure_registries.is_empty());

        let set = settings(&[
            "--builder-image",
            "registry.lan:5000/tools/buildkit:v1",
            "--insecure-registry",
            "registry.lan:5000, mirror.lan",
            "--insecure-registry",
            "10.1.2.3:5000",
        ]);
        assert_eq!(set.builder_image, "registry.lan:5000/tools/buildkit:v1");
        assert_eq!(set.insecure_registries, ["registry.lan:5000", "mirror.lan", "10.1.2.3:5000"]);
    }
}
