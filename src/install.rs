//! Installing the CRDs into a cluster (tests, `make demo`; Helm does it in production).

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::wait::{await_condition, conditions},
};

/// Field manager of everything this operator applies.
pub const FIELD_MANAGER: &str = "redeploy-operator";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("applying CRD {name}: {source}")]
    Apply { name: String, source: kube::Error },
    #[error("CRD {name} was not Established within {timeout:?}")]
    NotEstablished { name: String, timeout: Duration },
}

/// Applies every CRD with server-side apply and waits until each is Established.
pub async fn apply_crds(client: &Client, timeout: Duration) -> Result<(), InstallError> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for crd in crate::api::crds() {
        let name = crd.name_any();
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .map_err(|source| InstallError::Apply { name: name.clone(), source })?;
    }
    for crd in crate::api::crds() {
        let name = crd.name_any();
        let established = await_condition(api.clone(), &name, conditions::is_crd_established());
        match tokio::time::timeout(timeout, established).await {
            Ok(Ok(_)) => {}
            _ => return Err(InstallError::NotEstablished { name, timeout }),
        }
    }
    Ok(())
}
