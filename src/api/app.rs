use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Provider, SecretKeyRef, schema};

/// One application (a Cloud 66 "stack"). Each App owns a secret redeployment
/// hook whose URL is kept in the Secret named by `status.hook.secretName`.
// Each printcolumn(...) repeats the same keys, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "redeploy.dev",
    version = "v1alpha1",
    kind = "App",
    namespaced,
    status = "AppStatus",
    shortname = "rapp",
    category = "redeploy",
    doc = "An application with a secret redeployment hook",
    printcolumn(name = "Environment", type_ = "string", json_path = ".spec.environment"),
    printcolumn(name = "Hook", type_ = "string", json_path = ".status.hook.path"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Last Redeployment", type_ = "string", json_path = ".status.lastRedeployment"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct AppSpec {
    /// Environment the App runs as, e.g. `production`; GitHub Deployments use it.
    #[serde(default = "default_environment")]
    #[schemars(length(min = 1, max = 63), regex(pattern = schema::DNS_LABEL))]
    pub environment: String,
    /// How the redeployment hook is authenticated.
    #[serde(default)]
    pub hook: HookSpec,
    /// GitHub continuous deploy: a push creates a GitHub Deployment, whose event deploys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github: Option<GitHubSpec>,
    /// How many finished Redeployments are kept.
    #[serde(default)]
    pub history: HistorySpec,
    /// Defaults for building the App's Git-built Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<AppBuildSpec>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppBuildSpec {
    /// Pod template of the build Job for every Git-built Service of the App
    /// that sets no `spec.build.template` of its own (same contract).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::embedded_object")]
    pub template: Option<Box<k8s_openapi::api::core::v1::PodTemplateSpec>>,
}

fn default_environment() -> String {
    "production".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookSpec {
    /// Name of the Secret holding the hook's `id`, `token` and `url`; defaults to `<app>-hook`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = schema::DNS_SUBDOMAIN))]
    pub secret_name: Option<String>,
    /// Providers whose calls are accepted; empty accepts every provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed_providers: Vec<Provider>,
    /// Secrets that calls must be signed with, in addition to the URL token. Once
    /// any is set, every call must carry a valid signature: the provider's own
    /// when its secret is set, else the generic one; calls that can carry
    /// neither are refused.
    #[serde(default, skip_serializing_if = "SignatureSecrets::is_empty")]
    pub signature_secrets: SignatureSecrets,
    /// Also skip pushes whose head commit message says `[skip ci]` or `[ci skip]`
    /// (`[skip deploy]` and `[deploy skip]` always skip).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub honor_skip_ci: bool,
}

/// Secrets for signatures beyond the URL token: HMAC keys, or GitLab's shared token.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignatureSecrets {
    /// HMAC-SHA256 key for GitHub's `X-Hub-Signature-256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github: Option<SecretKeyRef>,
    /// HMAC-SHA256 key for Bitbucket's `X-Hub-Signature`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitbucket: Option<SecretKeyRef>,
    /// Shared token GitLab sends as `X-Gitlab-Token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gitlab: Option<SecretKeyRef>,
    /// HMAC-SHA256 key for `X-Gitea-Signature` (Gitea and Forgejo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gitea: Option<SecretKeyRef>,
    /// HMAC-SHA256 key for `X-Gogs-Signature`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gogs: Option<SecretKeyRef>,
    /// HMAC-SHA256 key for `X-Signature-256: sha256=<hex>` over the body, for
    /// any caller (`curl`, CI, a registry) and for Git hosts without a secret above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generic: Option<SecretKeyRef>,
}

impl SignatureSecrets {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitHubSpec {
    /// Deploy through GitHub Deployments instead of directly on push.
    #[serde(default)]
    pub continuous_deploy: bool,
    /// The repository, e.g. `https://github.com/owner/repo`.
    #[schemars(length(min = 1))]
    pub repository: String,
    /// GitHub environment; defaults to `spec.environment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Secret key holding a token allowed to create deployments and statuses.
    pub token_secret_ref: SecretKeyRef,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistorySpec {
    /// Finished Redeployments kept per App; older ones are deleted.
    #[serde(default = "default_history_limit")]
    #[schemars(range(min = 1, max = 1000))]
    pub limit: i32,
}

impl Default for HistorySpec {
    fn default() -> Self {
        Self { limit: default_history_limit() }
    }
}

fn default_history_limit() -> i32 {
    20
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<HookStatus>,
    /// Names of the Services that belong to this App.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_redeployment: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
    /// The last hook calls (at most 20, newest first) and how each was answered.
    /// Written by the hook in batches, best effort, under a field manager of its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub recent_deliveries: Vec<Delivery>,
}

/// One hook call, as `status.recentDeliveries` keeps it: never a token, a signature or a body.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// When the call was answered.
    pub time: MicroTime,
    /// The provider it was read as; absent when its body was never read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
    /// The provider's event name, e.g. `push`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 128))]
    pub event: String,
    /// The provider's delivery id, when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub delivery_id: Option<String>,
    /// The HTTP status the call was answered with.
    pub code: u16,
    /// The Redeployment the call created (or, for a redelivery, found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redeployment: Option<String>,
    /// Why nothing was deployed, when nothing was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
    /// The call asked for a dry run (`dry_run=1`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookStatus {
    /// The hook's public id.
    pub id: String,
    /// The hook's path with the token masked; the full URL is in the Secret.
    pub path: String,
    /// The Secret holding `id`, `token` and `url`.
    pub secret_name: String,
}
