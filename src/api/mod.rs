//! The custom resources of API group `redeploy.dev`, version `v1alpha1`.
//!
//! CRD YAML under `crds/` is generated from these types (`redeploy-operator crds`).

mod app;
pub mod conditions;
mod profile;
mod redeployment;
mod schema;
mod service;

pub use app::{
    App, AppBuildSpec, AppSpec, AppStatus, Delivery, GitHubSpec, HistorySpec, HookSpec, HookStatus, SignatureSecrets,
};
pub use profile::{
    BuildPolicy, DeploymentProfile, DeploymentProfileSpec, DeploymentProfileStatus, RolloutSpec, Strategy,
};
pub use redeployment::{
    CANCEL_FINALIZER, Decision, GitInfo, Phase, PlanAction, PlannedService, PreviousTemplate, Provider, Redeployment,
    RedeploymentSpec, RedeploymentStatus, ServiceDecision, ServicePhase, ServiceResult, Trigger,
};
pub use service::{
    BuildSpec, BuiltImage, GitSource, ImageSource, SecretKeyRef, Service, ServiceSpec, ServiceStatus, SourceType,
    WorkloadKind, WorkloadTarget,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// API group of every resource of this operator.
pub const GROUP: &str = "redeploy.dev";

/// The CRDs of this operator, ordered by plural name (as `crds/*.yaml` sort).
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![App::crd(), DeploymentProfile::crd(), Redeployment::crd(), Service::crd()]
}
