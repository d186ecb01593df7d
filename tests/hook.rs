//! The redeployment hook end to end: the operator (App reconciler, hook and
//! admin servers) runs against the real control plane, and each test POSTs
//! real payloads from `tests/fixtures` the way Git hosts send them.

mod support;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use redeploy_operator::api::{App, CANCEL_FINALIZER, PlanAction, Redeployment};
use serde_json::{Value, json};
use support::{eventually, operator};

fn fixture(path: &str) -> Vec<u8> {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhooks").join(path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// POSTs `body` with `headers`; returns the status and the JSON answer.
async fn post(url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> anyhow::Result<(u16, Value)> {
    answer(reqwest::Client::new().post(url).body(body), headers).await
}

/// Sends `request` with `headers`; the status and the JSON answer, which must
/// carry a `message`.
async fn answer(mut request: reqwest::RequestBuilder, headers: &[(&str, &str)]) -> anyhow::Result<(u16, Value)> {
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let body: Value = response.json().await?;
    anyhow::ensure!(body["message"].is_string(), "answer {status} has no message: {body}");
    Ok((status, body))
}

/// Applies `objects` (YAML) in the namespace and returns the App's hook URL
/// once the operator has made it and its caches know `services`.
async fn app_with_hook(
    client: &Client,
    namespace: &str,
    app: &str,
    services: &[&str],
    objects: &str,
) -> anyhow::Result<String> {
    let operator = operator();
    support::apply_yaml(client, namespace, objects).await?;
    let apps = Api::<App>::namespaced(client.clone(), namespace);
    eventually("the App's status to list its hook and Services", || async {
        let status = apps.get(app).await?.status.unwrap_or_default();
        let listed = services.iter().all(|s| status.services.iter().any(|l| l == s));
        Ok((status.hook.is_some() && listed).then_some(()))
    })
    .await?;
    let secret = Api::<Secret>::namespaced(client.clone(), namespace).get(&format!("{app}-hook")).await?;
    let value = |key: &str| support::secret_value(&secret, key);
    let (id, token, url) = (value("id")?, value("token")?, value("url")?);
    let hook = format!("{}/stacks/redeploy/{id}/{token}", operator.hook);
    assert_eq!(url, hook, "the Secret's url is the public URL of the hook");
    // The hook server learns of the Secret through its own watch: wait for it.
    eventually("the hook server to know the hook", || async {
        let (status, _) = post(&format!("{hook}?services=__probe__"), &[], Vec::new()).await?;
        Ok((status != 404).then_some(()))
    })
    .await?;
    Ok(hook)
}

/// A namespace of its own (named after `prefix`) with App `multi` and its
/// image-based Service `web`: the client, the namespace and the hook URL.
async fn multi_with_web(prefix: &str) -> anyhow::Result<(Client, String, String)> {
    let (_, client, namespace) = support::setup(prefix).await?;
    let objects = format!("{APP_MULTI}{}", image_service("web", "multi", "nginx"));
    let hook = app_with_hook(&client, &namespace, "multi", &["web"], &objects).await?;
    Ok((client, namespace, hook))
}

async fn redeployments(client: &Client, namespace: &str) -> anyhow::Result<Vec<Redeployment>> {
    Ok(Api::<Redeployment>::namespaced(client.clone(), namespace).list(&ListParams::default()).await?.items)
}

fn git_service(name: &str, repository: &str, branch: Option<&str>) -> String {
    let branch = branch.map(|b| format!("\n    branch: {b}")).unwrap_or_default();
    format!(
        "---\napiVersion: redeploy.dev/v1alpha1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  app: multi\n  target:\n    name: {name}\n  git:\n    repository: {repository}{branch}\n  build:\n    image: registry.example.com/{name}\n"
    )
}

fn image_service(name: &str, app: &str, reference: &str) -> String {
    format!(
        "---\napiVersion: redeploy.dev/v1alpha1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  app: {app}\n  target:\n    name: {name}\n  image:\n    reference: {reference}\n"
    )
}

const APP_MULTI: &str = "apiVersion: redeploy.dev/v1alpha1\nkind: App\nmetadata:\n  name: multi\nspec: {}\n";

#[tokio::test]
async fn the_app_gets_a_hook_secret_a_masked_status_and_rotation() -> anyhow::Result<()> {
    let (_, client, namespace) = support::setup("hook-secret").await?;
    let hook = app_with_hook(&client, &namespace, "multi", &[], APP_MULTI).await?;

    let apps = Api::<App>::namespaced(client.clone(), &namespace);
    let app = apps.get("multi").await?;
    let status = app.status.clone().unwrap_or_default();
    let hook_status = status.hook.clone().expect("hook status");
    assert_eq!(hook_status.path, format!("/stacks/redeploy/{}/********", hook_status.id));
    assert_eq!(hook_status.secret_name, "multi-hook");
    let token = hook.rsplit('/').next().unwrap_or_default().to_string();
    assert!(token.len() >= 43, "the token carries at least 32 random bytes");
    assert!(!serde_json::to_string(&app)?.contains(&token), "the App never shows the token");
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").expect("Ready condition");
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("True", "HookReady"));

    let secrets = Api::<Secret>::namespaced(client.clone(), &namespace);
    let secret = secrets.get("multi-hook").await?;
    let owner = &secret.owner_references()[0];
    assert_eq!((owner.kind.as_str(), owner.controller), ("App", Some(true)));

    // Asking for rotation changes the token, keeps the id, and the old URL stops working.
    let patch = json!({"metadata": {"annotations": {"redeploy.dev/rotate-token": "1"}}});
    apps.patch("multi", &PatchParams::default(), &Patch::Merge(&patch)).await?;
    let new_hook = eventually("a new token", || async {
        let data = secrets.get("multi-hook").await?.data.unwrap_or_default();
        let url = String::from_utf8(data.get("url").map(|v| v.0.clone()).unwrap_or_default())?;
        Ok((url != hook).then_some(url))
    })
    .await?;
    assert_eq!(new_hook.rsplit_once('/').map(|x| x.0), hook.rsplit_once('/').map(|x| x.0), "the id stays");
    eventually("the old token to be refused", || async {
        let (status, _) = post(&format!("{hook}?services=__probe__"), &[], Vec::new()).await?;
        Ok((status == 404).then_some(()))
    })
    .await?;
    let (status, _) = post(&format!("{new_hook}?services=__probe__"), &[], Vec::new()).await?;
    assert_eq!(status, 422, "the new token works");

    // A deleted Secret is made again, with new credentials.
    secrets.delete("multi-hook", &Default::default()).await?;
    eventually("the Secret to be recreated", || async {
        let secret = secrets.get_opt("multi-hook").await?;
        Ok(secret.filter(|s| s.metadata.deletion_timestamp.is_none()).and_then(|s| s.data))
    })
    .await?;
    Ok(())
}

struct Case {
    fixture: &'static str,
    headers: &'static [(&'static str, &'static str)],
    status: u16,
    /// The Service planned, when one is.
    service: Option<&'static str>,
    sha: Option<&'static str>,
    provider: &'static str,
}

#[tokio::test]
async fn every_provider_fixture_creates_the_expected_redeployment() -> anyhow::Result<()> {
    let (_, client, namespace) = support::setup("hook-providers").await?;
    let services = [
        git_service("github", "git@github.com:codertocat/hello-world.git", Some("master")),
        git_service("gitlab", "http://example.com/mike/diaspora", Some("master")),
        git_service("gitlab-tags", "http://example.com/jsmith/example.git", None),
        git_service("gitea", "http://localhost:3000/example/example.git", Some("master")),
        git_service("gogs", "http://localhost:3000/unknwon/webhooks.git", Some("develop")),
        git_service("bitbucket", "https://bitbucket.org/team_name/repo_name.git", None),
        git_service("bbserver", "https://server.bitbucket.local/scm/~gopher/webhook-test.git", None),
        git_service(
            "azure",
            "https://dev.azure.com/fabrikam-fiber-inc/DefaultCollection/_git/Fabrikam-Fiber-Git",
            Some("main"),
        ),
        image_service("testhook", "multi", "svendowideit/testhook:latest"),
    ]
    .concat();
    let names = ["github", "gitlab", "gitlab-tags", "gitea", "gogs", "bitbucket", "bbserver", "azure", "testhook"];
    let hook = app_with_hook(&client, &namespace, "multi", &names, &format!("{APP_MULTI}{services}")).await?;

    const JSON: (&str, &str) = ("Content-Type", "application/json");
    let cases = [
        Case {
            fixture: "github/push-new-branch.json",
            headers: &[JSON, ("X-GitHub-Event", "push"), ("X-GitHub-Delivery", "d-gh-push")],
            status: 202,
            service: Some("github"),
            sha: Some("6113728f27ae82c7b1a177c8d03f9e96e0adf246"),
            provider: "github",
        },
        Case {
            fixture: "github/deployment.json",
            headers: &[JSON, ("X-GitHub-Event", "deployment"), ("X-GitHub-Delivery", "d-gh-deployment")],
            status: 202,
            service: Some("github"),
            sha: Some("f95f852bd8fca8fcc58a9a2d6c842781e32a215e"),
            provider: "github",
        },
        Case {
            fixture: "github/ping.json",
            headers: &[JSON, ("X-GitHub-Event", "ping"), ("X-GitHub-Delivery", "d-gh-ping")],
            status: 200,
            service: None,
            sha: None,
            provider: "github",
        },
        Case {
            fixture: "github/deployment-status.json",
            headers: &[JSON, ("X-GitHub-Event", "deployment_status"), ("X-GitHub-Delivery", "d-gh-ds")],
            status: 200,
            service: None,
            sha: None,
            provider: "github",
        },
        Case {
            fixture: "github/push-tag-deleted.json",
            headers: &[JSON, ("X-GitHub-Event", "push"), ("X-GitHub-Delivery", "d-gh-del")],
            status: 200,
            service: None,
            sha: None,
            provider: "github",
        },
        Case {
            fixture: "gitlab/push-event.json",
            headers: &[JSON, ("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Event-UUID", "d-gl-push")],
            status: 202,
            service: Some("gitlab"),
            sha: Some("da1560886d4f094c3e6c9ef40349f7d38b5d27d7"),
            provider: "gitlab",
        },
        Case {
            fixture: "gitlab/tag-event.json",
            headers: &[JSON, ("X-Gitlab-Event", "Tag Push Hook"), ("X-Gitlab-Event-UUID", "d-gl-tag")],
            status: 202,
            service: Some("gitlab-tags"),
            sha: Some("82b3d5ae55f7080f1e6022629cdb57bfae7cccc7"),
            provider: "gitlab",
        },
        Case {
            fixture: "gitea/push-event.json",
            headers: &[JSON, ("X-Gitea-Event", "push"), ("X-Gitea-Delivery", "d-gitea")],
            status: 202,
            service: Some("gitea"),
            sha: Some("67b56589a45103f891bdee7c0546e5d40bc02001"),
            provider: "gitea",
        },
        Case {
            fixture: "gogs/push-event.json",
            headers: &[JSON, ("X-Gogs-Event", "push"), ("X-Gogs-Delivery", "d-gogs")],
            status: 202,
            service: Some("gogs"),
            sha: Some("bffeb74224043ba2feb48d137756c8a9331c449a"),
            provider: "gogs",
        },
        Case {
            fixture: "bitbucket-cloud/repo-push.json",
            headers: &[JSON, ("X-Event-Key", "repo:push"), ("X-Request-UUID", "d-bbc")],
            status: 202,
            service: Some("bitbucket"),
            sha: Some("709d658dc5b6d6afcd46049c2f332ee3f515a67d"),
            provider: "bitbucketCloud",
        },
        // The Bitbucket Server sample deletes its branch: nothing to deploy.
        Case {
            fixture: "bitbucket-server/repo-refs-changed.json",
            headers: &[JSON, ("X-Event-Key", "repo:refs_changed"), ("X-Request-Id", "d-bbs")],
            status: 200,
            service: None,
            sha: None,
            provider: "bitbucketServer",
        },
        Case {
            fixture: "azure-devops/git-push.json",
            headers: &[JSON],
            status: 202,
            service: Some("azure"),
            sha: Some("33b55f7cb7e7e245323987634f960cf4a6e6bc74"),
            provider: "azureDevOps",
        },
        Case {
            fixture: "dockerhub/push.json",
            headers: &[JSON],
            status: 202,
            service: Some("testhook"),
            sha: None,
            provider: "dockerHub",
        },
    ];
    for case in &cases {
        let before = redeployments(&client, &namespace).await?.len();
        let (status, body) = post(&hook, case.headers, fixture(case.fixture)).await?;
        assert_eq!(status, case.status, "{}: {body}", case.fixture);
        let after = redeployments(&client, &namespace).await?;
        let Some(service) = case.service else {
            assert_eq!(after.len(), before, "{} stored a Redeployment", case.fixture);
            continue;
        };
        assert_eq!(after.len(), before + 1, "{} stored no Redeployment", case.fixture);
        assert_eq!(body["services"], json!([service]), "{}: {body}", case.fixture);
        let name = body["redeployment"].as_str().expect("a Redeployment name");
        let stored = after.iter().find(|r| r.name_any() == name).expect("the answered Redeployment exists");
        assert_eq!(stored.spec.plan.len(), 1, "{}", case.fixture);
        assert_eq!(stored.spec.plan[0].service, service, "{}", case.fixture);
        assert_eq!(serde_json::to_value(stored.spec.trigger.provider)?, json!(case.provider), "{}", case.fixture);
        assert_eq!(stored.labels().get("redeploy.dev/app").map(String::as_str), Some("multi"));
        assert_eq!(stored.owner_references()[0].kind, "App");
        match case.sha {
            Some(sha) => {
                assert_eq!(stored.spec.plan[0].action, PlanAction::Build, "{}", case.fixture);
                assert_eq!(stored.spec.plan[0].git_ref.as_deref(), Some(sha), "{}", case.fixture);
                assert_eq!(stored.spec.git.as_ref().and_then(|g| g.sha.as_deref()), Some(sha), "{}", case.fixture);
            }
            None => assert_eq!(stored.spec.plan[0].action, PlanAction::Restart, "{}", case.fixture),
        }
    }
    Ok(())
}

#[tokio::test]
async fn wrong_token_and_unknown_id_get_the_same_404_and_store_nothing() -> anyhow::Result<()> {
    let (client, namespace, hook) = multi_with_web("hook-404").await?;
    let (base, token) = hook.rsplit_once('/').expect("a hook URL");
    let (prefix, id) = base.rsplit_once('/').expect("a hook URL");
    let mut wrong_token = token.to_string();
    wrong_token.replace_range(0..1, if token.starts_with('A') { "B" } else { "A" });

    let (status_token, body_token) = post(&format!("{base}/{wrong_token}"), &[], Vec::new()).await?;
    let (status_id, body_id) = post(&format!("{prefix}/{}x/{token}", &id[..id.len() - 1]), &[], Vec::new()).await?;
    let (status_path, _) = post(&format!("{}/somewhere/else", operator().hook), &[], Vec::new()).await?;
    assert_eq!((status_token, status_id, status_path), (404, 404, 404));
    assert_eq!(body_token, body_id, "an unknown id and a wrong token are answered alike");
    assert!(redeployments(&client, &namespace).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_redelivery_is_answered_with_the_original_redeployment() -> anyhow::Result<()> {
    let (_, client, namespace) = support::setup("hook-redelivery").await?;
    let objects =
        format!("{APP_MULTI}{}", git_service("github", "https://github.com/Codertocat/Hello-World", Some("master")));
    let hook = app_with_hook(&client, &namespace, "multi", &["github"], &objects).await?;
    let headers = [
        ("Content-Type", "application/json"),
        ("X-GitHub-Event", "push"),
        ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
    ];
    let (first, first_body) = post(&hook, &headers, fixture("github/push-new-branch.json")).await?;
    let (second, second_body) = post(&hook, &headers, fixture("github/push-new-branch.json")).await?;
    assert_eq!((first, second), (202, 200), "{first_body} / {second_body}");
    assert_eq!(first_body["redeployment"], second_body["redeployment"]);
    assert_eq!(first_body["services"], second_body["services"]);
    assert!(second_body["message"].as_str().unwrap_or_default().contains("already accepted"), "{second_body}");
    assert_eq!(redeployments(&client, &namespace).await?.len(), 1, "a redelivery is not stored twice");

    // Without a delivery id every call is a new request.
    let anonymous = [("Content-Type", "application/json"), ("X-GitHub-Event", "push")];
    let (third, _) = post(&hook, &anonymous, fixture("github/push-new-branch.json")).await?;
    assert_eq!(third, 202);
    assert_eq!(redeployments(&client, &namespace).await?.len(), 2);
    Ok(())
}

#[tokio::test]
async fn unknown_services_profiles_and_bad_refs_are_422_and_store_nothing() -> anyhow::Result<()> {
    let (client, namespace, hook) = multi_with_web("hook-422").await?;
    let (status, body) = post(&format!("{hook}?services=web,wbe"), &[], Vec::new()).await?;
    assert_eq!(status, 422);
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("wbe") && message.contains("web"), "names the unknown one and the known ones: {message}");
    let (status, body) = post(&format!("{hook}?deployment_profile=Quick+Fix"), &[], Vec::new()).await?;
    assert_eq!(status, 422);
    assert!(body["message"].as_str().unwrap_or_default().contains("Quick Fix"), "{body}");
    let (status, _) = post(&format!("{hook}?git_ref=a..b"), &[], Vec::new()).await?;
    assert_eq!(status, 422);
    let (status, body) = post(&hook, &[("Content-Type", "application/json")], b"{not json".to_vec()).await?;
    assert_eq!(status, 400, "{body}");
    assert!(redeployments(&client, &namespace).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_call_without_git_information_redeploys_every_service_with_modifiers() -> anyhow::Result<()> {
    let (_, client, namespace) = support::setup("hook-nogit").await?;
    let objects = format!(
        "{APP_MULTI}{}{}---\napiVersion: redeploy.dev/v1alpha1\nkind: DeploymentProfile\nmetadata:\n  name: quick-fix\nspec:\n  app: multi\n  displayName: Quick Fix\n  services: [web]\n",
        git_service("web", "https://github.com/o/web", Some("main")),
        image_service("worker", "multi", "nginx:1.27"),
    );
    let hook = app_with_hook(&client, &namespace, "multi", &["web", "worker"], &objects).await?;

    // `curl -X POST <url>`: every Service.
    let (status, body) = post(&hook, &[], Vec::new()).await?;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["services"], json!(["web", "worker"]));
    let name = body["redeployment"].as_str().expect("name").to_string();
    let stored = Api::<Redeployment>::namespaced(client.clone(), &namespace).get(&name).await?;
    assert_eq!(serde_json::to_value(stored.spec.trigger.provider)?, json!("empty"));
    assert_eq!(stored.finalizers(), [CANCEL_FINALIZER], "created cancelable, ready to run");
    assert!(stored.spec.git.is_none());
    let actions: BTreeMap<_, _> =
        stored.spec.plan.iter().map(|p| (p.service.as_str(), (p.action, p.git_ref.clone()))).collect();
    assert_eq!(actions["web"], (PlanAction::Build, Some("main".to_string())));
    assert_eq!(actions["worker"], (PlanAction::Restart, None));

    // git_ref as a form field, and a profile found by its display name.
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let (status, body) =
        post(&format!("{hook}?deployment_profile=Quick%20Fix"), &form, b"git_ref=v1.2.3".to_vec()).await?;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["services"], json!(["web"]));
    let stored = Api::<Redeployment>::namespaced(client.clone(), &namespace)
        .get(body["redeployment"].as_str().unwrap_or_default())
        .await?;
    assert_eq!(stored.spec.profile.as_deref(), Some("quick-fix"));
    assert_eq!(stored.spec.git_ref.as_deref(), Some("v1.2.3"));
    assert_eq!(stored.spec.plan[0].git_ref.as_deref(), Some("v1.2.3"));

    let (status, body) = post(&format!("{hook}?services=worker"), &[], Vec::new()).await?;
    assert_eq!((status, body["services"].clone()), (202, json!(["worker"])));
    Ok(())
}

#[tokio::test]
async fn a_configured_github_signature_must_verify() -> anyhow::Result<()> {
    let (client, namespace, hook) = signed_app("hook-hmac", GITHUB_KEY, "production").await?;
    let body = fixture("github/push-new-branch.json");
    let event = [("Content-Type", "application/json"), ("X-GitHub-Event", "push")];

    let (missing, _) = post(&hook, &event, body.clone()).await?;
    let wrong_signature = support::hmac_sha256_signature(b"other", &body);
    let (wrong, wrong_body) =
        post(&hook, &[event[0], event[1], ("X-Hub-Signature-256", &wrong_signature)], body.clone()).await?;
    let (malformed, _) = post(&hook, &[event[0], event[1], ("X-Hub-Signature-256", "sha256=zz")], body.clone()).await?;
    let mut reencoded = serde_json::to_vec(&serde_json::from_slice::<Value>(&body)?)?;
    reencoded.push(b'\n');
    let signature = support::hmac_sha256_signature(b"s3cret", &body);
    let (other_bytes, _) = post(&hook, &[event[0], event[1], ("X-Hub-Signature-256", &signature)], reencoded).await?;
    assert_eq!((missing, wrong, malformed, other_bytes), (401, 401, 400, 401), "{wrong_body}");
    assert!(!wrong_body.to_string().contains("s3cret"), "the secret is never echoed");
    assert!(redeployments(&client, &namespace).await?.is_empty());

    let (good, body) = post(&hook, &[event[0], event[1], ("X-Hub-Signature-256", &signature)], body).await?;
    assert_eq!(good, 202, "{body}");
    Ok(())
}

/// POSTs with no body at all, as `curl -X POST <url>` does.
async fn post_without_body(url: &str, headers: &[(&str, &str)]) -> anyhow::Result<(u16, Value)> {
    answer(reqwest::Client::new().post(url), headers).await
}

/// A namespace with App `multi` whose hook requires the signatures of
/// `signature_secrets` (YAML flow mappings, keys in Secret `signing-keys`),
/// of environment `environment`, with the Git-built Service `github` of the
/// GitHub fixtures' repository: the client, the namespace and the hook URL.
async fn signed_app(
    prefix: &str,
    signature_secrets: &str,
    environment: &str,
) -> anyhow::Result<(Client, String, String)> {
    let (_, client, namespace) = support::setup(prefix).await?;
    let objects = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: signing-keys\nstringData:\n  github: s3cret\n  generic: g3neric\n---\napiVersion: redeploy.dev/v1alpha1\nkind: App\nmetadata:\n  name: multi\nspec:\n  environment: {environment}\n  hook:\n    signatureSecrets:\n{signature_secrets}\n{}",
        git_service("github", "https://github.com/Codertocat/Hello-World", Some("master"))
    );
    let hook = app_with_hook(&client, &namespace, "multi", &["github"], &objects).await?;
    Ok((client, namespace, hook))
}

/// What a call is, its headers and its body.
type Call<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>);

const GITHUB_KEY: &str = "      github: {name: signing-keys, key: github}";
const GENERIC_KEY: &str = "      generic: {name: signing-keys, key: generic}";
const JSON: (&str, &str) = ("Content-Type", "application/json");
const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");
const PUSH_SHA: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";

#[tokio::test]
async fn a_configured_signature_cannot_be_dodged_by_choosing_the_provider() -> anyhow::Result<()> {
    let (client, namespace, hook) = signed_app("hook-fail-closed", GITHUB_KEY, "production").await?;
    let push = fixture("github/push-new-branch.json");
    let signature = support::hmac_sha256_signature(b"s3cret", &push);
    let signed = ("X-Hub-Signature-256", signature.as_str());
    let gitlab = [JSON, ("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Event-UUID", "d-gl")];
    let cases: Vec<Call> = vec![
        ("an empty body", vec![], Vec::new()),
        ("an empty body as a GitHub push", vec![JSON, ("X-GitHub-Event", "push"), signed], Vec::new()),
        ("the signed push without GitHub headers", vec![JSON, signed], push.clone()),
        ("the push with GitLab headers", gitlab.to_vec(), push.clone()),
        ("a form body", vec![FORM], b"git_ref=main".to_vec()),
        ("unknown JSON", vec![JSON], br#"{"hello": "world"}"#.to_vec()),
        ("a Docker Hub push", vec![JSON], fixture("dockerhub/push.json")),
        ("a body that is not JSON", vec![JSON], b"{not json".to_vec()),
        ("a body that is not JSON, as a GitHub push", vec![JSON, ("X-GitHub-Event", "push")], b"{not json".to_vec()),
    ];
    let mut answers = Vec::new();
    for (what, headers, body) in cases {
        answers.push((what, post(&hook, &headers, body).await?));
    }
    answers.push(("no body at all", post_without_body(&hook, &[]).await?));
    for (what, (status, body)) in &answers {
        assert_eq!(*status, 401, "{what}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains("X-Hub-Signature-256"), "{what}: says which signature is accepted: {message}");
        assert!(!message.contains("signing-keys") && !message.contains("s3cret"), "{what}: {message}");
    }
    assert!(redeployments(&client, &namespace).await?.is_empty(), "nothing was stored");

    // Only a caller holding the key learns what is wrong with its payload.
    let malformed = b"{not json".to_vec();
    let signature = support::hmac_sha256_signature(b"s3cret", &malformed);
    let (status, body) =
        post(&hook, &[JSON, ("X-GitHub-Event", "push"), ("X-Hub-Signature-256", signature.as_str())], malformed)
            .await?;
    assert_eq!(status, 400, "a signed but malformed body: {body}");
    assert!(body["message"].as_str().unwrap_or_default().contains("JSON"), "{body}");

    let (status, body) = post(&hook, &[JSON, ("X-GitHub-Event", "push"), signed], push).await?;
    assert_eq!(status, 202, "a correctly signed push is still accepted: {body}");
    Ok(())
}

/// The hook keeps a signature key it read while its Secret is unchanged;
/// a key changed or deleted in its Secret takes effect within moments, not
/// after some expiry.
#[tokio::test]
async fn a_changed_or_deleted_signature_key_takes_effect_at_once() -> anyhow::Result<()> {
    let (client, namespace, hook) = signed_app("hook-key-change", GENERIC_KEY, "production").await?;
    let call = |key: &'static [u8], i: u32| {
        let hook = hook.clone();
        async move {
            let form = format!("git_ref=main&call={i}").into_bytes();
            let signature = support::hmac_sha256_signature(key, &form);
            post(&hook, &[FORM, ("X-Signature-256", &signature)], form).await
        }
    };
    let (status, body) = call(b"g3neric", 0).await?;
    assert_eq!(status, 202, "{body}");
    let (status, body) = call(b"g3neric", 1).await?;
    assert_eq!(status, 202, "the key read for the first call: {body}");

    let secrets = Api::<Secret>::namespaced(client.clone(), &namespace);
    let rotated = json!({ "stringData": { "generic": "r0tated" } });
    secrets.patch("signing-keys", &PatchParams::default(), &Patch::Merge(&rotated)).await?;
    let changed = std::time::Instant::now();
    let mut i = 2;
    eventually("the new key to be required", || {
        i += 2;
        let i = i;
        async move {
            let (old, body) = call(b"g3neric", i).await?;
            anyhow::ensure!(old == 202 || old == 401, "the old key: {old} {body}");
            let (new, body) = call(b"r0tated", i + 1).await?;
            anyhow::ensure!(new == 202 || new == 401, "the new key: {new} {body}");
            Ok((old == 401 && new == 202).then_some(()))
        }
    })
    .await?;
    let took = changed.elapsed();
    assert!(took < std::time::Duration::from_secs(5), "the change took {took:?} to take effect");
    let (status, body) = call(b"g3neric", 1000).await?;
    assert_eq!(status, 401, "the old key stays refused: {body}");

    secrets.delete("signing-keys", &Default::default()).await?;
    eventually("a deleted key to refuse every call", || async {
        let (status, body) = call(b"r0tated", 2000).await?;
        Ok((status == 500).then_some(body))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_generic_hmac_signs_calls_without_a_git_host() -> anyhow::Result<()> {
    let (client, namespace, hook) = signed_app("hook-generic", GENERIC_KEY, "production").await?;
    // As the README's curl example: a signed form body naming the ref.
    let form = b"git_ref=v1.2.3&at=1764600000".to_vec();
    let good = support::hmac_sha256_signature(b"g3neric", &form);
    let wrong = support::hmac_sha256_signature(b"not the key", &form);
    let (status, body) = post(&hook, &[FORM, ("X-Signature-256", &wrong)], form.clone()).await?;
    assert_eq!(status, 401, "{body}");
    assert!(body["message"].as_str().unwrap_or_default().contains("X-Signature-256"), "{body}");
    let (status, body) = post(&hook, &[FORM], form.clone()).await?;
    assert_eq!(status, 401, "unsigned: {body}");
    assert!(redeployments(&client, &namespace).await?.is_empty());

    let (status, body) = post(&hook, &[FORM, ("X-Signature-256", &good)], form.clone()).await?;
    assert_eq!(status, 202, "{body}");
    let stored = Api::<Redeployment>::namespaced(client.clone(), &namespace)
        .get(body["redeployment"].as_str().unwrap_or_default())
        .await?;
    assert_eq!(stored.spec.plan[0].git_ref.as_deref(), Some("v1.2.3"), "the signed body names the ref");

    // The query is not signed: it cannot name the ref of a signed call.
    let other = b"at=1764600001".to_vec();
    let signature = support::hmac_sha256_signature(b"g3neric", &other);
    let (status, body) =
        post(&format!("{hook}?git_ref=v6.6.6"), &[FORM, ("X-Signature-256", &signature)], other).await?;
    assert_eq!(status, 422, "{body}");

    // A Git host the App has no secret for signs with the generic key too.
    let push = fixture("github/push-new-branch.json");
    let signature = support::hmac_sha256_signature(b"g3neric", &push);
    let (status, body) =
        post(&hook, &[JSON, ("X-GitHub-Event", "push"), ("X-Signature-256", &signature)], push).await?;
    assert_eq!(status, 202, "{body}");
    assert_eq!(redeployments(&client, &namespace).await?.len(), 2);
    Ok(())
}

#[tokio::test]
async fn a_signed_push_decides_the_commit_and_is_executed_once() -> anyhow::Result<()> {
    let (client, namespace, hook) = signed_app("hook-signed-ref", GITHUB_KEY, "production").await?;
    let push = fixture("github/push-new-branch.json");
    let signature = support::hmac_sha256_signature(b"s3cret", &push);
    let delivery = |id: &'static str| [JSON, ("X-GitHub-Event", "push"), ("X-GitHub-Delivery", id)];
    let signed = |id: &'static str| {
        let mut headers = delivery(id).to_vec();
        headers.push(("X-Hub-Signature-256", signature.as_str()));
        headers
    };

    let other_sha = "0000000000000000000000000000000000000001";
    for query in [format!("git_ref={other_sha}"), "git_ref=main".into()] {
        let (status, body) = post(&format!("{hook}?{query}"), &signed("d-1"), push.clone()).await?;
        assert_eq!(status, 422, "{query}: {body}");
        assert!(body["message"].as_str().unwrap_or_default().contains("signed payload"), "{body}");
    }
    let (status, body) = post(&hook, &[FORM, ("X-GitHub-Event", "push")], b"git_ref=main".to_vec()).await?;
    assert_eq!(status, 401, "{body}");
    assert!(redeployments(&client, &namespace).await?.is_empty(), "nothing was stored");

    // services= may still narrow the selection.
    let (status, first) = post(&format!("{hook}?services=github"), &signed("d-1"), push.clone()).await?;
    assert_eq!(status, 202, "{first}");
    let stored = Api::<Redeployment>::namespaced(client.clone(), &namespace)
        .get(first["redeployment"].as_str().unwrap_or_default())
        .await?;
    assert_eq!(stored.spec.plan[0].git_ref.as_deref(), Some(PUSH_SHA));

    // GitHub's own Redeliver, and a replay of the captured delivery under a forged id.
    for id in ["d-1", "d-forged"] {
        let (status, again) = post(&hook, &signed(id), push.clone()).await?;
        assert_eq!(status, 200, "{id}: {again}");
        assert_eq!(again["redeployment"], first["redeployment"], "{id}");
    }
    assert_eq!(redeployments(&client, &namespace).await?.len(), 1, "a replay is not stored twice");
    Ok(())
}

#[tokio::test]
async fn refs_that_are_not_branches_tags_or_commits_are_422() -> anyhow::Result<()> {
    let (_, client, namespace) = support::setup("hook-refs").await?;
    let objects =
        format!("{APP_MULTI}{}", git_service("github", "https://github.com/Codertocat/Hello-World", Some("master")));
    let hook = app_with_hook(&client, &namespace, "multi", &["github"], &objects).await?;
    for git_ref in ["refs/pull/1/head", "fix%231", "refs/merge-requests/1/head", "HEAD~1", "a%01b"] {
        let (status, body) = post(&format!("{hook}?git_ref={git_ref}"), &[], Vec::new()).await?;
        assert_eq!(status, 422, "{git_ref}: {body}");
        let (status, body) = post(&hook, &[FORM], format!("git_ref={git_ref}").into_bytes()).await?;
        assert_eq!(status, 422, "{git_ref} in a form: {body}");
    }
    assert!(redeployments(&client, &namespace).await?.is_empty());
    let (status, body) = post(&format!("{hook}?git_ref=refs/tags/v1.2.3"), &[], Vec::new()).await?;
    assert_eq!(status, 202, "{body}");
    Ok(())
}

#[tokio::test]
async fn deployment_events_deploy_only_the_apps_environment() -> anyhow::Result<()> {
    // The fixture's deployment is for `production`.
    let deployment = fixture("github/deployment.json");
    let signature = support::hmac_sha256_signature(b"s3cret", &deployment);
    let headers = [JSON, ("X-GitHub-Event", "deployment"), ("X-Hub-Signature-256", &signature)];

    let (client, namespace, hook) = signed_app("hook-env-staging", GITHUB_KEY, "staging").await?;
    let (status, body) = post(&hook, &headers, deployment.clone()).await?;
    assert_eq!(status, 200, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("`production`") && message.contains("`staging`"), "says why: {message}");
    assert!(redeployments(&client, &namespace).await?.is_empty(), "nothing was stored");

    let (client, namespace, hook) = signed_app("hook-env-production", GITHUB_KEY, "production").await?;
    let (status, body) = post(&hook, &headers, deployment).await?;
    assert_eq!(status, 202, "{body}");
    assert_eq!(redeployments(&client, &namespace).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_missing_signature_key_is_told_to_the_owner_not_the_caller() -> anyhow::Result<()> {
    use k8s_openapi::api::events::v1::Event;

    let (_, client, namespace) = support::setup("hook-key-missing").await?;
    let objects = format!(
        "apiVersion: redeploy.dev/v1alpha1\nkind: App\nmetadata:\n  name: multi\nspec:\n  hook:\n    signatureSecrets:\n      github: {{name: gh-key-absent, key: hmac-key}}\n{}",
        git_service("github", "https://github.com/Codertocat/Hello-World", Some("master"))
    );
    let hook = app_with_hook(&client, &namespace, "multi", &["github"], &objects).await?;
    let push = fixture("github/push-new-branch.json");
    let signature = support::hmac_sha256_signature(b"s3cret", &push);
    let (status, body) =
        post(&hook, &[JSON, ("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &signature)], push).await?;
    assert_eq!(status, 500, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(!message.contains("gh-key-absent") && !message.contains("hmac-key"), "names no Secret: {message}");
    assert!(message.contains("Events"), "tells where the owner can look: {message}");
    assert!(redeployments(&client, &namespace).await?.is_empty());

    let events = Api::<Event>::namespaced(client.clone(), &namespace);
    let note = eventually("a Warning Event on the App", || async {
        let list = events.list(&ListParams::default()).await?;
        Ok(list
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("multi"))
            .filter(|e| e.reason.as_deref() == Some("SignatureKeyMissing"))
            .find_map(|e| e.note))
    })
    .await?;
    assert!(note.contains("gh-key-absent") && note.contains("hmac-key"), "the owner learns which: {note}");
    Ok(())
}

#[tokio::test]
async fn limits_oversized_bodies_and_concurrent_calls() -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;

    let (client, namespace, hook) = multi_with_web("hook-limits").await?;
    let (status, body) =
        post(&hook, &[("Content-Type", "application/json")], vec![b' '; support::BODY_LIMIT + 1]).await?;
    assert_eq!(status, 413, "{body}");

    // The hook server's index may see the App's Secret a moment after the App's
    // status shows the URL: a slow call sent before then is answered 404 at once
    // and holds no slot. The probe names no Service, so it answers 422 and stores nothing.
    eventually("the hook to know the App", || async {
        let (status, _) = post(&format!("{hook}?services=__probe__"), &[], Vec::new()).await?;
        Ok((status == 422).then_some(()))
    })
    .await?;
    // Hold every slot of the App with calls whose bodies never finish...
    let path = hook.trim_start_matches(&operator().hook).to_string();
    let address = operator().hook.trim_start_matches("http://").to_string();
    let mut slow = Vec::new();
    for _ in 0..support::CONCURRENCY_PER_APP {
        let mut stream = tokio::net::TcpStream::connect(&address).await?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
        );
        stream.write_all(head.as_bytes()).await?;
        slow.push(stream);
    }
    // ...and the next one is told to come back later.
    let seen = std::sync::Mutex::new(Vec::new());
    let answer = eventually("a 429", || async {
        let response = reqwest::Client::new().post(format!("{hook}?services=__probe__")).send().await?;
        seen.lock().unwrap_or_else(|e| e.into_inner()).push(response.status().as_u16());
        let retry_after = response.headers().get("retry-after").cloned();
        Ok((response.status() == 429).then_some(retry_after))
    })
    .await
    .map_err(|e| e.context(format!("answers seen: {:?}", seen.lock().unwrap_or_else(|e| e.into_inner()))))?;
    assert!(answer.is_some(), "429 carries Retry-After");
    drop(slow);
    // Once the slow calls are gone (cut off by the body timeout at the latest) calls are taken again.
    eventually("slots to free up", || async {
        let (status, _) = post(&format!("{hook}?services=__probe__"), &[], Vec::new()).await?;
        Ok((status == 422).then_some(()))
    })
    .await?;
    assert!(redeployments(&client, &namespace).await?.is_empty());
    Ok(())
}

/// App `multi` of a monorepo: `readme` watches README.md, `api` watches services/api/**,
/// `develop` builds another branch, `cache` is image-based.
fn monorepo() -> String {
    let filtered = |name: &str, branch: &str, paths: &str| {
        format!(
            "---\napiVersion: redeploy.dev/v1alpha1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  app: multi\n  target:\n    name: {name}\n  git:\n    repository: https://github.com/Codertocat/Hello-World\n    branch: {branch}\n    paths: [{paths}]\n  build:\n    image: registry.example.com/{name}\n"
        )
    };
    format!(
        "{APP_MULTI}{}{}{}{}",
        filtered("readme", "master", "README.md"),
        filtered("api", "master", "\"services/api/**\""),
        filtered("develop", "develop", "\"**\""),
        image_service("cache", "multi", "redis:7")
    )
}

const MONOREPO: [&str; 4] = ["api", "cache", "develop", "readme"];

fn github_push(delivery: &str) -> [(&str, &str); 3] {
    [JSON, ("X-GitHub-Event", "push"), ("X-GitHub-Delivery", delivery)]
}

fn decisions(answer: &Value) -> BTreeMap<String, String> {
    let list = answer["decisions"].as_array().cloned().unwrap_or_default();
    list.iter()
        .map(|d| {
            (
                d["service"].as_str().unwrap_or_default().to_owned(),
                d["decision"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_github_push_with_paths_says_why_for_every_service() -> anyhow::Result<()> {
    let (_, client, namespace) = support::setup("hook-paths").await?;
    let hook = app_with_hook(&client, &namespace, "multi", &MONOREPO, &monorepo()).await?;
    // The fixture's one commit adds README.md.
    let (status, answer) = post(&hook, &github_push("paths-1"), fixture("github/push-new-branch.json")).await?;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["services"], json!(["readme"]));
    let expected = BTreeMap::from(
        [
            ("api", "pathsNotMatched"),
            ("cache", "imageBasedOnGitPush"),
            ("develop", "otherBranch"),
            ("readme", "deployed"),
        ]
        .map(|(s, d)| (s.to_owned(), d.to_owned())),
    );
    assert_eq!(decisions(&answer), expected, "{answer}");
    let stored = redeployments(&client, &namespace).await?;
    assert_eq!(stored.len(), 1);
    let recorded = serde_json::to_value(&stored[0].spec)?;
    assert_eq!(decisions(&recorded), expected, "the Redeployment's spec carries the same decisions");
    Ok(())
}

#[tokio::test]
async fn a_dry_run_plans_exactly_and_stores_nothing() -> anyhow::Result<()> {
    let (_, client, namespace) = support::setup("hook-dry-run").await?;
    let hook = app_with_hook(&client, &namespace, "multi", &MONOREPO, &monorepo()).await?;
    let dry = format!("{hook}?dry_run=1");
    let (status, answer) = post(&dry, &github_push("dry-1"), fixture("github/push-new-branch.json")).await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["dryRun"], json!(true));
    assert_eq!(answer["services"], json!(["readme"]));
    assert_eq!(answer["plan"][0]["ref"], json!(PUSH_SHA));
    assert_eq!(decisions(&answer)["api"], "pathsNotMatched");
    assert!(answer["message"].as_str().unwrap_or_default().starts_with("dry run:"), "{answer}");
    // Refusals are the real call's.
    let (status, answer) =
        post(&format!("{dry}&services=nope"), &github_push("dry-2"), fixture("github/push-new-branch.json")).await?;
    assert_eq!(status, 422, "{answer}");
    assert!(redeployments(&client, &namespace).await?.is_empty(), "a dry run stores nothing");
    // The same call without dry_run stores one.
    let (status, _) = post(&hook, &github_push("dry-3"), fixture("github/push-new-branch.json")).await?;
    assert_eq!(status, 202);
    assert_eq!(redeployments(&client, &namespace).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn recent_deliveries_record_pushes_that_deployed_and_pushes_that_did_not() -> anyhow::Result<()> {
    let (_, client, namespace) = support::setup("hook-deliveries").await?;
    let hook = app_with_hook(&client, &namespace, "multi", &MONOREPO, &monorepo()).await?;
    let push: Value = serde_json::from_slice(&fixture("github/push-new-branch.json"))?;
    let mut skipped = push.clone();
    skipped["head_commit"]["message"] = json!("Initial commit [skip deploy]");
    let mut elsewhere = push.clone();
    elsewhere["ref"] = json!("refs/heads/elsewhere");
    let (deployed, answer) = post(&hook, &github_push("delivery-deployed"), serde_json::to_vec(&push)?).await?;
    assert_eq!(deployed, 202, "{answer}");
    let redeployment = answer["redeployment"].as_str().unwrap_or_default().to_owned();
    let (status, answer) = post(&hook, &github_push("delivery-skipped"), serde_json::to_vec(&skipped)?).await?;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["message"].as_str().unwrap_or_default().contains("[skip deploy]"), "{answer}");
    assert_eq!(decisions(&answer)["readme"], "skipMarker");
    let (status, answer) = post(&hook, &github_push("delivery-elsewhere"), serde_json::to_vec(&elsewhere)?).await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(redeployments(&client, &namespace).await?.len(), 1);

    let apps = Api::<App>::namespaced(client.clone(), &namespace);
    let deliveries = eventually("the App's status to list the three calls", || async {
        let status = apps.get("multi").await?.status.unwrap_or_default();
        let ids: Vec<String> = status
            .recent_deliveries
            .iter()
            .filter_map(|d| d.delivery_id.clone())
            .filter(|id| id.starts_with("delivery-"))
            .collect();
        Ok((ids.len() == 3).then_some(status.recent_deliveries))
    })
    .await?;
    let by_id = |id: &str| deliveries.iter().find(|d| d.delivery_id.as_deref() == Some(id)).cloned();
    let first = by_id("delivery-deployed").ok_or_else(|| anyhow::anyhow!("no deployed delivery"))?;
    assert_eq!((first.code, first.redeployment.as_deref(), first.reason.as_deref()), (202, Some(&*redeployment), None));
    assert_eq!((first.event.as_str(), first.provider), ("push", Some(redeploy_operator::api::Provider::GitHub)));
    let skip = by_id("delivery-skipped").ok_or_else(|| anyhow::anyhow!("no skipped delivery"))?;
    assert_eq!((skip.code, skip.redeployment.as_deref()), (200, None));
    assert!(skip.reason.as_deref().unwrap_or_default().contains("[skip deploy]"), "{skip:?}");
    let other = by_id("delivery-elsewhere").ok_or_else(|| anyhow::anyhow!("no other-branch delivery"))?;
    assert!(other.reason.as_deref().unwrap_or_default().contains("elsewhere"), "{other:?}");
    // Newest first.
    let times: Vec<_> = deliveries.iter().map(|d| d.time.0).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    // Never the token.
    let rendered = serde_json::to_string(&deliveries)?;
    let token = hook.rsplit('/').next().unwrap_or_default();
    assert!(!rendered.contains(token), "{rendered}");
    Ok(())
}
