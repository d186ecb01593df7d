use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time},
    jiff::Timestamp,
};
use kube::CustomResource;
use kube::ResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{BuiltImage, schema};

/// Finalizer that lets a deleted Redeployment cancel its builds first. The
/// hook sets it when it creates a Redeployment; the reconciler adds it to
/// one created otherwise.
pub const CANCEL_FINALIZER: &str = "redeploy.dev/cancel";

/// One accepted hook call (or `kubectl redeploy` call): the durable record of
/// what was asked, the plan resolved when it was accepted, and what happened.
// Each printcolumn(...) repeats the same keys, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "redeploy.dev",
    version = "v1alpha1",
    kind = "Redeployment",
    namespaced,
    status = "RedeploymentStatus",
    shortname = "rd",
    category = "redeploy",
    doc = "One accepted redeployment request and its progress",
    printcolumn(name = "App", type_ = "string", json_path = ".spec.app"),
    printcolumn(name = "Trigger", type_ = "string", json_path = ".spec.trigger.provider"),
    printcolumn(name = "Event", type_ = "string", json_path = ".spec.trigger.event", priority = 1),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Services", type_ = "string", json_path = ".spec.plan[*].service"),
    printcolumn(name = "Ref", type_ = "string", json_path = ".spec.git.sha", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self == oldSelf",
        "message": "a Redeployment records a request: its spec cannot change; create a new Redeployment instead",
    },
]))]
pub struct RedeploymentSpec {
    /// Name of the App (same namespace) being redeployed.
    #[schemars(length(min = 1, max = 253), regex(pattern = schema::DNS_SUBDOMAIN))]
    pub app: String,
    pub trigger: Trigger,
    /// Git information the payload carried; absent when it carried none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitInfo>,
    /// The `services=` modifier: only these Services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// The `deployment_profile=` modifier, resolved to the profile's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The `git_ref=` modifier: deploy this ref instead of the payload's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub git_ref: Option<String>,
    /// What was resolved to happen when the request was accepted.
    #[serde(default)]
    pub plan: Vec<PlannedService>,
    /// Every Service of the App when the request was accepted: deployed, or why not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<ServiceDecision>,
    /// The GitHub Deployment this Redeployment carries out (continuous
    /// deploy): its progress is posted to it as deployment statuses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github_deployment: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Trigger {
    pub provider: Provider,
    /// The provider's event name, e.g. `push`, `repo:push`, `Push Hook`.
    #[schemars(length(max = 128))]
    pub event: String,
    /// The provider's delivery id, when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub delivery_id: Option<String>,
    /// Who caused the call, as the provider names them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub sender: Option<String>,
    /// When the call was accepted, to the microsecond: orders Redeployments
    /// created within the same second (creationTimestamp has seconds only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<MicroTime>,
}

/// Where a redeployment request came from: one value per provider, made
/// with its definition (see [`crate::hook::providers`]).
pub use crate::hook::providers::Provider;

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlannedService {
    /// Name of the Service.
    pub service: String,
    pub action: PlanAction,
    /// Git ref to build (commit, branch or tag); absent for image-based Services.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
}

/// What a hook call did with one Service of the App, and why.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceDecision {
    /// Name of the Service.
    pub service: String,
    pub decision: Decision,
    /// Why, in words; for a deployed Service, anything worth knowing (e.g. the
    /// payload listed no files, so `paths` could not be checked).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024))]
    pub reason: String,
}

/// `deployed`, or the rule that left a Service out.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Decision {
    #[default]
    Deployed,
    /// The call deploys nothing at all (a ping, a deleted branch, another environment...).
    NothingDeployed,
    /// The push's head commit message carries a skip marker.
    SkipMarker,
    /// The Service builds another repository.
    OtherRepository,
    /// The Service deploys another branch.
    OtherBranch,
    /// No changed file matched `spec.git.paths`.
    PathsNotMatched,
    /// Every changed file that matched is in `spec.git.ignorePaths`.
    OnlyIgnoredPaths,
    /// A pattern of `spec.git.paths` or `ignorePaths` is not a valid glob.
    InvalidPaths,
    /// An image-based Service, and the call is a Git push.
    ImageBasedOnGitPush,
    /// A Git-built Service, and the call is a registry push.
    GitBuiltOnImagePush,
    /// An image-based Service deploying another image than the one pushed.
    OtherImage,
    /// `services=` does not name it.
    NotInServices,
    /// The DeploymentProfile does not deploy it.
    NotInProfile,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PlanAction {
    /// Build the image at the ref (unless reusable), then roll it out.
    #[default]
    Build,
    /// Restart the workload's pods, as `kubectl rollout restart` does.
    Restart,
    /// Pin the tag's current digest; roll out only when it changed.
    PinDigest,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    #[default]
    Pending,
    Building,
    Deploying,
    Succeeded,
    Failed,
    Superseded,
    Canceled,
}

impl Redeployment {
    /// Whether its status says it has finished (whatever the outcome).
    pub fn is_finished(&self) -> bool {
        self.status.as_ref().and_then(|s| s.phase).is_some_and(Phase::is_finished)
    }

    /// Orders Redeployments by when they were asked for: the time the call
    /// was accepted (or, for one created by hand, created), then the name.
    pub fn order_key(&self) -> (Option<Timestamp>, String) {
        let received = self.spec.trigger.received_at.as_ref().map(|t| t.0);
        (received.or_else(|| self.metadata.creation_timestamp.as_ref().map(|t| t.0)), self.name_any())
    }
}

impl Phase {
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Superseded | Self::Canceled)
    }
}

impl ServicePhase {
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Skipped | Self::Superseded | Self::Canceled)
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServicePhase {
    #[default]
    Pending,
    Building,
    Deploying,
    Succeeded,
    Failed,
    /// Nothing to do, e.g. the pinned digest is already running.
    Skipped,
    Superseded,
    Canceled,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedeploymentStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The newer Redeployment that took over, when `Superseded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// The last deployment status posted to the GitHub Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github_state: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreviousTemplate {
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted_at: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceResult {
    pub service: String,
    pub phase: ServicePhase,
    /// Commit built or digest pinned.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_job: Option<String>,
    /// What the build Job built, as it reported it: the Service reconciler
    /// records it in the Service's `status.builds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built: Option<BuiltImage>,
    /// The workload generation the rollout produced: tracking waits for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_generation: Option<i64>,
    /// The container's image and restart annotation before the rollout, restored by auto-rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousTemplate>,
    /// True once auto-rollback restored `previous`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rolled_back: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
}
