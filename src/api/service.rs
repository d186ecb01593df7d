use k8s_openapi::{
    api::core::v1::{LocalObjectReference, PodTemplateSpec},
    apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema;

/// One deployable part of an App: built from Git (`git` + `build`) or
/// deployed from a registry image (`image`), rolled out to one workload.
// Each printcolumn(...) repeats the same keys, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "redeploy.dev",
    version = "v1alpha1",
    kind = "Service",
    plural = "services",
    namespaced,
    status = "ServiceStatus",
    shortname = "rsvc",
    category = "redeploy",
    doc = "A deployable part of an App, built from Git or deployed from an image",
    printcolumn(name = "App", type_ = "string", json_path = ".spec.app"),
    printcolumn(name = "Type", type_ = "string", json_path = ".status.type"),
    printcolumn(name = "Kind", type_ = "string", json_path = ".spec.target.kind"),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.target.name"),
    printcolumn(name = "Deployed", type_ = "string", json_path = ".status.deployedRef"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!(has(self.git) && has(self.image))",
        "message": "a Service is built from Git or deployed from an image, not both: set spec.git (with spec.build) or spec.image",
    },
    {
        "rule": "has(self.git) || has(self.image)",
        "message": "a Service needs a source: set spec.git (with spec.build) for a Git-built Service, or spec.image for an image-based one",
    },
    {
        "rule": "!has(self.git) || has(self.build)",
        "message": "a Git-built Service needs spec.build.image: the repository the built image is pushed to",
    },
    {
        "rule": "!has(self.build) || has(self.git)",
        "message": "spec.build applies only to Git-built Services: set spec.git or remove spec.build",
    },
]))]
pub struct ServiceSpec {
    /// Name of the App (same namespace) this Service belongs to.
    #[schemars(length(min = 1, max = 253), regex(pattern = schema::DNS_SUBDOMAIN))]
    pub app: String,
    /// The workload this Service rolls out.
    pub target: WorkloadTarget,
    // The sources are boxed: a Service has one of them, and every Service is
    // cached, so their room inline (a quarter of a Service) was mostly empty.
    /// Build the image from this Git repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<Box<GitSource>>,
    /// Where and how a Git-built Service's image is built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Box<BuildSpec>>,
    /// Deploy this registry image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Box<ImageSource>>,
}

impl ServiceSpec {
    pub fn source_type(&self) -> SourceType {
        if self.git.is_some() { SourceType::Git } else { SourceType::Image }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadTarget {
    #[serde(default)]
    pub kind: WorkloadKind,
    #[schemars(length(min = 1, max = 253), regex(pattern = schema::DNS_SUBDOMAIN))]
    pub name: String,
    /// The container whose image is set; defaults to the workload's only container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = schema::DNS_LABEL))]
    pub container: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum WorkloadKind {
    #[default]
    Deployment,
    StatefulSet,
    DaemonSet,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitSource {
    /// Clone URL, in any form (`https://`, `git@host:owner/repo.git`, `ssh://`).
    #[schemars(length(min = 1, max = 2048))]
    pub repository: String,
    /// Branch this Service deploys; a push to another branch does not deploy it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub branch: Option<String>,
    /// Dockerfile path inside the context.
    #[serde(default = "default_dockerfile")]
    pub dockerfile: String,
    /// Build context inside the repository.
    #[serde(default = "default_context")]
    pub context: String,
    /// Secret with Git credentials (`username`/`password` or `ssh-privatekey`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    /// Glob patterns over repository paths (`*` within a directory, `**` across
    /// directories, e.g. `services/api/**`): a push redeploys this Service only if
    /// it changed a file matching one of them. Empty: any file. When the push's
    /// payload lists no files, or only some, the Service is redeployed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(min = 1, max = 1024)))]
    pub paths: Vec<String>,
    /// Glob patterns over repository paths whose changes alone do not redeploy
    /// this Service (e.g. `**/*.md`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(min = 1, max = 1024)))]
    pub ignore_paths: Vec<String>,
}

fn default_dockerfile() -> String {
    "Dockerfile".into()
}

fn default_context() -> String {
    ".".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildSpec {
    /// Image repository the build pushes to, tagged with the commit SHA.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Docker config Secret (`.dockerconfigjson`) used to push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_secret_ref: Option<LocalObjectReference>,
    /// Pod template of the build Job, replacing the default BuildKit one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::embedded_object")]
    pub template: Option<Box<PodTemplateSpec>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSource {
    /// Image reference, e.g. `registry.example.com/team/web:stable`.
    #[schemars(length(min = 1, max = 512))]
    pub reference: String,
    /// Pin the tag's current digest from the registry, and skip the rollout when it is unchanged.
    #[serde(default)]
    pub resolve_digest: bool,
    /// Docker config Secret used to ask the registry for digests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_secret_ref: Option<LocalObjectReference>,
}

/// A key of a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253), regex(pattern = schema::DNS_SUBDOMAIN))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SourceType {
    Git,
    Image,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `git` or `image`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<SourceType>,
    /// Commit (Git-built) or digest (image-based) now deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_redeployment: Option<String>,
    /// Images built for this Service, newest first (at most 10): a build of a
    /// listed commit is skipped when the profile's build policy is `ifMissing`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub builds: Vec<BuiltImage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuiltImage {
    pub commit: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}
