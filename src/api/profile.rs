use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema;

/// A named way to deploy an App (a Cloud 66 "deployment profile"), chosen with
/// the hook's `deployment_profile=` modifier by name or display name.
// Each printcolumn(...) repeats the same keys, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "redeploy.dev",
    version = "v1alpha1",
    kind = "DeploymentProfile",
    namespaced,
    status = "DeploymentProfileStatus",
    shortname = "dprof",
    category = "redeploy",
    doc = "A named way to deploy an App",
    printcolumn(name = "App", type_ = "string", json_path = ".spec.app"),
    printcolumn(name = "Display Name", type_ = "string", json_path = ".spec.displayName"),
    printcolumn(name = "Strategy", type_ = "string", json_path = ".spec.strategy"),
    printcolumn(name = "Build", type_ = "string", json_path = ".spec.build"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentProfileSpec {
    /// Name of the App (same namespace) this profile deploys.
    #[schemars(length(min = 1, max = 253), regex(pattern = schema::DNS_SUBDOMAIN))]
    pub app: String,
    /// Free-text name, such as `Quick Fix`, that `deployment_profile=` also matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub display_name: Option<String>,
    /// Services this profile deploys; empty deploys all of the App's Services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub services: Vec<String>,
    /// Whether Git-built Services are rebuilt when an image for the commit exists.
    #[serde(default)]
    pub build: BuildPolicy,
    /// Whether planned Services roll out all at once or one after another.
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default)]
    pub rollout: RolloutSpec,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum BuildPolicy {
    /// Build every time.
    Always,
    /// Build unless an image for the commit was already built.
    #[default]
    IfMissing,
    /// Never build: deploy the last image built.
    Never,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Strategy {
    /// All planned Services at once.
    #[default]
    Parallel,
    /// One after another in the order listed, stopping at the first failure.
    Serial,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Wait for each rollout to finish before the Redeployment succeeds.
    #[serde(default = "default_true")]
    pub wait: bool,
    /// Seconds a rollout may take before it is failed.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: i32,
    /// Restore the previous pod template when a rollout fails.
    #[serde(default)]
    pub auto_rollback: bool,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self { wait: true, timeout_seconds: default_timeout_seconds(), auto_rollback: false }
    }
}

fn default_true() -> bool {
    true
}

fn default_timeout_seconds() -> i32 {
    600
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentProfileStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
}
