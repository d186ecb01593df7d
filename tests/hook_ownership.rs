//! One owner per hook id: a Secret made in another namespace with an App's
//! (public) hook id, its labels and even an App of its own can neither take
//! the hook over nor, once deleted, switch it off.

mod support;

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, Client,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use redeploy_operator::api::App;
use serde_json::json;
use support::{eventually, operator};

const HOOK_LABEL: &str = "redeploy.dev/hook";
const APP_LABEL: &str = "redeploy.dev/app";

fn app_and_service(app: &str) -> String {
    format!(
        "---\napiVersion: redeploy.dev/v1alpha1\nkind: App\nmetadata:\n  name: {app}\nspec: {{}}\n\
         ---\napiVersion: redeploy.dev/v1alpha1\nkind: Service\nmetadata:\n  name: web\nspec:\n  app: {app}\n  \
         target:\n    name: web\n  image:\n    reference: nginx\n"
    )
}

/// The HTTP status of a POST to `url` (`?services=__probe__`: 422 once the
/// hook is known, 404 while it is not; nothing is stored either way).
async fn probe(url: &str) -> anyhow::Result<u16> {
    Ok(reqwest::Client::new().post(format!("{url}?services=__probe__")).send().await?.status().as_u16())
}

/// Applies App `app` (with a Service) in `namespace`; returns its hook id and
/// token once the hook server answers for it.
async fn hook_of(client: &Client, namespace: &str, app: &str) -> anyhow::Result<(String, String)> {
    support::apply_yaml(client, namespace, &app_and_service(app)).await?;
    let apps = Api::<App>::namespaced(client.clone(), namespace);
    eventually("the App's hook", || async { Ok(apps.get(app).await?.status.and_then(|s| s.hook).map(|_| ())) }).await?;
    let secret = Api::<Secret>::namespaced(client.clone(), namespace).get(&format!("{app}-hook")).await?;
    let (id, token) = (support::secret_value(&secret, "id")?, support::secret_value(&secret, "token")?);
    let url = hook_url(&id, &token);
    eventually("the hook server to know the hook", || async { Ok((probe(&url).await? != 404).then_some(())) }).await?;
    Ok((id, token))
}

fn hook_url(id: &str, token: &str) -> String {
    format!("{}/stacks/redeploy/{id}/{token}", operator().hook)
}

/// The hook watch sees Secrets in the order they were written: once a hook
/// made after `what` answers, the index has seen `what` too.
async fn index_has_seen(client: &Client, namespace: &str, marker: &str) -> anyhow::Result<()> {
    hook_of(client, namespace, marker).await.map(|_| ())
}

/// The victim's hook answers (never 404) on every probe for a while.
async fn stays_served(url: &str) -> anyhow::Result<()> {
    for _ in 0..10 {
        let status = probe(url).await?;
        anyhow::ensure!(status == 422, "the victim's hook answered {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn accepted(url: &str) -> anyhow::Result<u16> {
    Ok(reqwest::Client::new().post(url).send().await?.status().as_u16())
}

#[tokio::test]
async fn a_copied_hook_id_in_another_namespace_never_disables_the_hook() -> anyhow::Result<()> {
    operator();
    let (_, client, victim_ns) = support::setup("victim").await?;
    let (id, token) = hook_of(&client, &victim_ns, "shop").await?;
    let victim = hook_url(&id, &token);
    let (_, _, evil_ns) = support::setup("evil").await?;
    let secrets = Api::<Secret>::namespaced(client.clone(), &evil_ns);

    // 1. A bare Secret with the hook labels and the victim's id.
    let planted = Secret {
        metadata: ObjectMeta {
            name: Some("shop-hook".into()),
            labels: Some(BTreeMap::from([(HOOK_LABEL.into(), "true".into()), (APP_LABEL.into(), "shop".into())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            ("id".into(), ByteString(id.clone().into_bytes())),
            ("token".into(), ByteString(b"evil-token".to_vec())),
        ])),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &planted).await?;
    index_has_seen(&client, &evil_ns, "marker-1").await?;
    stays_served(&victim).await?;
    assert_eq!(probe(&hook_url(&id, "evil-token")).await?, 404, "the copy's token opens nothing");
    assert_eq!(accepted(&victim).await?, 202);
    secrets.delete("shop-hook", &DeleteParams::default()).await?;
    index_has_seen(&client, &evil_ns, "marker-2").await?;
    stays_served(&victim).await?;

    // 2. A real App of the attacker's whose own hook Secret is rewritten to the victim's id.
    let (_, evil_token) = hook_of(&client, &evil_ns, "cart").await?;
    let patch = json!({"data": {"id": ByteString(id.clone().into_bytes())}});
    secrets.patch("cart-hook", &PatchParams::default(), &Patch::Merge(&patch)).await?;
    index_has_seen(&client, &evil_ns, "marker-3").await?;
    stays_served(&victim).await?;
    assert_eq!(probe(&hook_url(&id, &evil_token)).await?, 404, "the copy's token opens nothing");
    secrets.delete("cart-hook", &DeleteParams::default()).await?;
    index_has_seen(&client, &evil_ns, "marker-4").await?;
    stays_served(&victim).await?;
    assert_eq!(accepted(&victim).await?, 202);
    Ok(())
}
