//! The `redeploy-operator` command line.

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "redeploy-operator", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the CustomResourceDefinitions as YAML documents.
    Crds,
}

/// The CRDs as one multi-document YAML stream, exactly as committed under `crds/`.
pub fn crds_yaml() -> Result<String, serde_saphyr::SerializeError> {
    crate::api::crds()
        .iter()
        .map(crd_yaml)
        .collect::<Result<Vec<_>, _>>()
        .map(|documents| documents.concat())
}

/// One CRD as a YAML document, as stored in `crds/<plural>.yaml`.
pub fn crd_yaml(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Result<String, serde_saphyr::SerializeError> {
    Ok(format!("---\n{}", serde_saphyr::to_string(crd)?))
}
