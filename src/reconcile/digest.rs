//! Resolving an image-based Service's tag to the registry's current digest,
//! with the Service's pull secret when it names one.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use crate::{
    api::ImageSource,
    image::ImageReference,
    registry::{RegistryClient, credentials_from_docker_config},
};

/// A tag resolved to a digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// `sha256:...`
    pub digest: String,
    /// The reference pinned to the digest, as the container's image.
    pub pinned: String,
}

/// Resolves `image`, over plain HTTP for `insecure_registries` (and loopback
/// ones); the error is a message for the Redeployment's status.
pub async fn resolve(
    client: &Client,
    http: &reqwest::Client,
    namespace: &str,
    image: &ImageSource,
    insecure_registries: &[String],
) -> Result<Resolved, String> {
    let reference = ImageReference::parse(&image.reference).map_err(|e| e.to_string())?;
    let credentials = match &image.pull_secret_ref {
        Some(secret) => {
            let found = Api::<Secret>::namespaced(client.clone(), namespace)
                .get_opt(&secret.name)
                .await
                .map_err(|e| format!("reading pull Secret {}: {e}", secret.name))?
                .ok_or_else(|| format!("pull Secret {} does not exist", secret.name))?;
            let config = found
                .data
                .and_then(|mut d| d.remove(".dockerconfigjson"))
                .ok_or_else(|| format!("pull Secret {} has no .dockerconfigjson", secret.name))?;
            credentials_from_docker_config(&config.0, &reference.registry)
                .map_err(|e| format!("pull Secret {}: {e}", secret.name))?
        }
        None => None,
    };
    let registries = RegistryClient::new(http.clone()).with_insecure_http_hosts(insecure_registries.iter().cloned());
    let digest = registries.resolve_digest(&reference, credentials.as_ref()).await.map_err(|e| {
        match &image.pull_secret_ref {
            Some(secret) => format!("{e} (pull Secret {})", secret.name),
            None => e.to_string(),
        }
    })?;
    Ok(Resolved { pinned: reference.pinned(&digest), digest })
}
