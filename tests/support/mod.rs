//! Shared set-up of the integration tests: one real control plane per test
//! binary (see the `redeploy-testenv` crate), the CRDs installed once, and a
//! namespace of its own for every test.

#![allow(dead_code)]

use std::time::Duration;

use kube::{
    Api, Client,
    api::{DynamicObject, Patch, PatchParams},
    core::GroupVersionKind,
    discovery::{self, Scope},
};
use redeploy_operator::install::{FIELD_MANAGER, apply_crds};
use redeploy_testenv::ControlPlane;
use tokio::sync::OnceCell;

/// The shared control plane, a fresh admin client and a new namespace.
pub async fn setup(prefix: &str) -> anyhow::Result<(&'static ControlPlane, Client, String)> {
    let control_plane = ControlPlane::shared();
    let client = control_plane.client().await?;
    static CRDS: OnceCell<()> = OnceCell::const_new();
    CRDS.get_or_try_init(|| async { apply_crds(&client, Duration::from_secs(60)).await }).await?;
    let namespace = control_plane.namespace(&client, prefix).await?;
    Ok((control_plane, client, namespace))
}

/// Applies every document of a YAML stream into `namespace` with server-side
/// apply, as `kubectl apply --server-side` would.
pub async fn apply_yaml(client: &Client, namespace: &str, yaml: &str) -> Result<Vec<DynamicObject>, anyhow::Error> {
    let mut applied = Vec::new();
    for document in serde_saphyr::from_multiple::<serde_json::Value>(yaml)? {
        if document.is_null() {
            continue;
        }
        let object: DynamicObject = serde_json::from_value(document)?;
        let types = object.types.clone().ok_or_else(|| anyhow::anyhow!("a document has no apiVersion/kind"))?;
        let gvk = GroupVersionKind::try_from(&types)?;
        let (resource, capabilities) = discovery::pinned_kind(client, &gvk).await?;
        let api: Api<DynamicObject> = match capabilities.scope {
            Scope::Namespaced => Api::namespaced_with(client.clone(), namespace, &resource),
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        let name = object.metadata.name.clone().ok_or_else(|| anyhow::anyhow!("a {} has no name", types.kind))?;
        let params = PatchParams::apply(FIELD_MANAGER);
        applied.push(api.patch(&name, &params, &Patch::Apply(&object)).await?);
    }
    Ok(applied)
}
