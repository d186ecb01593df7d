//! What the chart's tests share: the chart, running helm, a client acting as
//! a ServiceAccount, and asking the API server what that client may do.

use std::process::Command;

use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec},
    core::v1::ServiceAccount,
};
use kube::{Api, Client, api::PostParams};
use redeploy_testenv::ControlPlane;

pub const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/redeploy-operator");

/// Runs `command`; its stdout, or an error with its stderr.
pub fn run(command: &mut Command) -> anyhow::Result<String> {
    let output = command.output()?;
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    anyhow::ensure!(output.status.success(), "{command:?} failed ({}):\n{stderr}{stdout}", output.status);
    Ok(stdout.into_owned())
}

/// A client with a token of ServiceAccount `namespace/account`, as a pod running as it has.
pub async fn service_account_client(
    control_plane: &ControlPlane,
    admin: &Client,
    namespace: &str,
    account: &str,
) -> anyhow::Result<Client> {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { expiration_seconds: Some(3600), ..Default::default() }),
        ..Default::default()
    };
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), namespace)
        .create_token_request(account, &PostParams::default(), &request)
        .await?
        .status
        .and_then(|s| s.token)
        .ok_or_else(|| anyhow::anyhow!("the TokenRequest returned no token"))?;
    control_plane.client_with_token(&token).await
}

/// Whether `client` may do `verb` on `resource` (`group` "" for the core
/// group) in `namespace` (`None`: in every namespace).
pub async fn can(
    client: &Client,
    verb: &str,
    (group, resource): (&str, &str),
    namespace: Option<&str>,
) -> anyhow::Result<bool> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                namespace: namespace.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone()).create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}
