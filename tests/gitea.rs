//! A real Git host sending its own webhooks: Gitea (built from its Go module,
//! see `redeploy_testenv::Gitea`) hosts the repository on the real node's
//! gateway, a `git push` to it makes Gitea sign and deliver its own push
//! event to the App's hook, and the build Job on the real node clones the
//! commit from Gitea. Nothing here shapes or signs a payload: Gitea does.
//! Skipped, with the reason printed, where the machine cannot run a real node.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::ListParams};
use redeploy_operator::api::{Phase, Provider, Redeployment};
use redeploy_testenv::{GITEA_ADMIN, Gitea};
use serde_json::{Value, json};
use support::{
    apply_yaml, wait_for,
    web_app::{available, commit, git, http_get, ready_pod_of_app, web_deployment, web_dockerfile},
};

/// The App's Gitea signature key (`spec.hook.signatureSecrets.gitea`), given to Gitea's webhook.
const SECRET: &str = "gitea-s3cret";

/// Gitea's REST API (`/api/v1`) as its administrator, with a token of its own.
struct GiteaApi {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl GiteaApi {
    /// Creates an access token for the administrator (basic auth, as a person
    /// would in the web UI) and uses it from then on.
    async fn new(gitea: &Gitea) -> anyhow::Result<GiteaApi> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
        let response = http
            .post(format!("{}/api/v1/users/{GITEA_ADMIN}/tokens", gitea.url()))
            .basic_auth(GITEA_ADMIN, Some(gitea.admin_password()))
            .json(&json!({"name": "redeploy-test", "scopes": ["write:repository", "write:user"]}))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        anyhow::ensure!(status == 201, "creating a token: {status} {body}");
        let token = body["sha1"].as_str().ok_or_else(|| anyhow::anyhow!("no token in {body}"))?.to_string();
        Ok(GiteaApi { base: format!("{}/api/v1", gitea.url()), token, http })
    }

    /// `method path` with a JSON body; the answer, which must be `expected`.
    async fn call(&self, method: reqwest::Method, path: &str, body: Value, expected: u16) -> anyhow::Result<Value> {
        let response = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header("Authorization", format!("token {}", self.token))
            .json(&body)
            .send()
            .await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        anyhow::ensure!(status == expected, "{method} {path}: {status} {text}");
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A hook of type `gitea` on `repository` for push events, posting JSON
    /// signed with `secret` to `url`; its id.
    async fn create_hook(&self, repository: &str, url: &str, secret: &str) -> anyhow::Result<i64> {
        let hook = json!({
            "type": "gitea",
            "config": {"url": url, "content_type": "json", "secret": secret},
            "events": ["push"],
            "active": true,
        });
        let created = self.call(reqwest::Method::POST, &format!("/repos/{repository}/hooks"), hook, 201).await?;
        created["id"].as_i64().ok_or_else(|| anyhow::anyhow!("no hook id in {created}"))
    }
}

/// One entry of a hook's "Recent Deliveries".
#[derive(Debug)]
struct Delivery {
    /// Gitea's delivery id (`X-Gitea-Delivery`).
    uuid: String,
    /// The status code of the answer Gitea recorded.
    status: Option<u16>,
    /// The page's HTML for this delivery (request and response, HTML-escaped).
    html: String,
}

/// A hook's delivery history as Gitea's web UI shows it to its administrator
/// (`/<owner>/<repo>/settings/hooks/<id>`): Gitea v1.26's API has no endpoint
/// for it. Signs in with the web form (the session cookie), newest first.
async fn deliveries(gitea: &Gitea, repository: &str, hook: i64) -> anyhow::Result<Vec<Delivery>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let login = http
        .post(format!("{}/user/login", gitea.url()))
        .form(&[("user_name", GITEA_ADMIN), ("password", gitea.admin_password())])
        .send()
        .await?;
    // Signing in sets the session cookie twice (a new session, then the
    // signed-in one it is regenerated into): the last value of each counts.
    let mut cookies = std::collections::BTreeMap::new();
    for header in login.headers().get_all(reqwest::header::SET_COOKIE) {
        let pair = header.to_str()?.split(';').next().unwrap_or_default();
        if let Some((name, value)) = pair.split_once('=') {
            cookies.insert(name.trim().to_string(), value.trim().to_string());
        }
    }
    let cookies: Vec<String> = cookies.iter().map(|(name, value)| format!("{name}={value}")).collect();
    anyhow::ensure!(login.status().is_redirection(), "signing in to Gitea: {}", login.status());
    let url = format!("{}/{repository}/settings/hooks/{hook}", gitea.url());
    let page = http.get(&url).header(reqwest::header::COOKIE, cookies.join("; ")).send().await?;
    let status = page.status();
    let html = page.text().await?;
    // The hook's settings page, signed in: it lists Recent Deliveries, if any.
    anyhow::ensure!(status == 200 && html.contains("Recent Deliveries"), "GET {url}: {status}");
    Ok(parse_deliveries(&html))
}

/// Reads templates/repo/settings/webhook/history.tmpl's markup: per delivery,
/// `<button ... data-panel="#info-<id>"><uuid></button>`, then its response
/// tab's `<span class="ui green|red label"><status></span>`.
fn parse_deliveries(html: &str) -> Vec<Delivery> {
    html.split("data-panel=\"#info-")
        .skip(1)
        .filter_map(|item| {
            let (_, rest) = item.split_once("\">")?;
            let (uuid, _) = rest.split_once("</button>")?;
            let status = ["ui green label\">", "ui red label\">"]
                .iter()
                .find_map(|label| item.split_once(label))
                .and_then(|(_, after)| after.split_once('<'))
                .and_then(|(status, _)| status.trim().parse().ok());
            Some(Delivery { uuid: uuid.trim().to_string(), status, html: item.to_string() })
        })
        .collect()
}

/// Waits until `hook`'s history has `count` deliveries, each with an answer.
async fn wait_for_deliveries(
    gitea: &Gitea,
    repository: &str,
    hook: i64,
    count: usize,
) -> anyhow::Result<Vec<Delivery>> {
    wait_for(
        &format!("Gitea to record {count} answered deliveries of hook {hook}"),
        Duration::from_secs(90),
        Duration::from_millis(500),
        || async {
            let history = deliveries(gitea, repository, hook).await?;
            Ok((history.len() >= count && history.iter().all(|d| d.status.is_some())).then_some(history))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_to_gitea_is_delivered_by_gitea_built_from_gitea_and_rolled_out() -> anyhow::Result<()> {
    let started = Instant::now();
    let (cp, client, namespace) = support::setup("gitea").await?;
    let Some(node) = tokio::task::block_in_place(|| cp.real_node())? else { return Ok(()) };
    // The default build Job carries no toleration: make the real node the only one.
    node.take_all_pods(&client).await?;

    // Gitea on the node's gateway: this process pushes there and the build pod
    // clones from there. Its webhooks go to the operator on loopback, which
    // Gitea blocks unless allowed: loopback only, nothing else.
    let gitea = tokio::task::block_in_place(|| Gitea::start(node.gateway_ip().into(), &["loopback"]))?;
    let api = GiteaApi::new(&gitea).await?;
    let repository = format!("{GITEA_ADMIN}/web");
    let created = api
        .call(
            reqwest::Method::POST,
            "/user/repos",
            json!({"name": "web", "private": false, "default_branch": "main"}),
            201,
        )
        .await?;
    let clone_url = created["clone_url"].as_str().ok_or_else(|| anyhow::anyhow!("no clone_url in {created}"))?;
    assert_eq!(clone_url, format!("{}/{repository}.git", gitea.url()), "Gitea's ROOT_URL is where it listens");

    // The operator, with the locally built BuildKit as its builder.
    let hook_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut config = support::operator_config(hook_port, 4);
    config.settings.builder_image = node.images().buildkit.clone();
    config.settings.insecure_registries = vec![node.registry()];
    let operator = support::start_operator_with(client.clone(), config).await?;

    // The App signs with Gitea's key; its Service builds Gitea's clone URL.
    let image_repository = format!("{}/gitea/web", node.registry());
    let web = web_deployment("web", &node.images().base, "initial");
    let objects = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: webhook\nstringData:\n  gitea: {SECRET}\n\
         ---\napiVersion: redeploy.dev/v1alpha1\nkind: App\nmetadata:\n  name: shop\nspec:\n  hook:\n    \
         signatureSecrets:\n      gitea: {{name: webhook, key: gitea}}\n\
         ---\napiVersion: redeploy.dev/v1alpha1\nkind: Service\nmetadata:\n  name: web\nspec:\n  app: shop\n  \
         target:\n    kind: Deployment\n    name: web\n    container: web\n  git:\n    repository: {clone_url}\n    \
         branch: main\n  build:\n    image: {image_repository}\n---\n{web}\n"
    );
    apply_yaml(&client, &namespace, &objects).await?;
    available(&client, &namespace, "web").await?;
    let hook = support::hook_url(&client, &namespace, "shop").await?;
    // Gitea delivers once and does not retry: wait until the hook server knows
    // the App (an unsigned call is then refused 401, not 404).
    wait_for("the hook server to know the App", Duration::from_secs(60), Duration::from_millis(100), || async {
        let status = reqwest::Client::new().post(&hook).send().await?.status().as_u16();
        Ok((status != 404).then_some(()))
    })
    .await?;

    let good_hook = api.create_hook(&repository, &hook, SECRET).await?;

    // A commit pushed to Gitea over HTTP, as a developer would.
    let work = tempfile::tempdir()?;
    git(work.path(), &["init", "-q", "-b", "main"])?;
    let push_url = format!("http://{GITEA_ADMIN}:{}@{}/{repository}.git", gitea.admin_password(), gitea.address());
    let base = node.images().base.clone();
    let pushed = Instant::now();
    let sha = commit(work.path(), &push_url, &web_dockerfile(&base, true), "Serve the commit")?;

    // Gitea's own delivery was accepted: its history shows the 202 and the
    // Redeployment the operator stored before answering.
    let history = wait_for_deliveries(&gitea, &repository, good_hook, 1).await?;
    eprintln!("Gitea delivered the push {:.1}s after it: {:?}", pushed.elapsed().as_secs_f64(), history[0].status);
    assert_eq!(history.len(), 1, "one push, one delivery: {history:?}");
    let delivery = &history[0];
    assert_eq!(delivery.status, Some(202), "Gitea's record of its delivery: {}", delivery.html);
    let redeployments = Api::<Redeployment>::namespaced(client.clone(), &namespace);
    let stored = redeployments.list(&ListParams::default()).await?.items;
    assert_eq!(stored.len(), 1, "one Redeployment per accepted delivery");
    let name = stored[0].metadata.name.clone().unwrap_or_default();
    assert!(delivery.html.contains(&name), "Gitea recorded the answer naming {name}: {}", delivery.html);
    let trigger = &stored[0].spec.trigger;
    assert_eq!(trigger.provider, Provider::Gitea);
    assert_eq!(trigger.delivery_id.as_deref(), Some(delivery.uuid.as_str()), "X-Gitea-Delivery");
    let git_info = stored[0].spec.git.clone().unwrap_or_default();
    assert_eq!(git_info.sha.as_deref(), Some(sha.as_str()));
    assert_eq!(git_info.branch.as_deref(), Some("main"));

    // The build cloned that commit from Gitea on the real node, and it rolled out.
    let done = wait_for(
        &format!("Redeployment {name} to finish"),
        Duration::from_secs(600),
        Duration::from_millis(500),
        || async {
            let redeployment = redeployments.get(&name).await?;
            let finished = redeployment.status.as_ref().and_then(|s| s.phase).is_some_and(Phase::is_finished);
            Ok(finished.then_some(redeployment))
        },
    )
    .await?;
    let status = done.status.clone().unwrap_or_default();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:?}");
    let result = status.services.first().ok_or_else(|| anyhow::anyhow!("no Service result"))?;
    let image = result.image.clone().unwrap_or_default();
    assert!(image.starts_with(&format!("{image_repository}:{sha}")), "built image {image}");
    let job = result.build_job.clone().unwrap_or_default();
    let build_pods = Api::<Pod>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default().labels(&format!("job-name={job}")))
        .await?;
    let build_pod = build_pods.items.first().and_then(|p| p.metadata.name.clone()).unwrap_or_default();
    let log = Api::<Pod>::namespaced(client.clone(), &namespace).logs(&build_pod, &Default::default()).await?;
    let cloned = format!("redeploy: building {clone_url} at ");
    assert!(log.lines().any(|l| l.starts_with(&cloned) && l.contains(&sha)), "the build's log: {log}");
    let output = node.crane().args(["digest", &format!("{image_repository}:{sha}")]).output()?;
    anyhow::ensure!(output.status.success(), "crane digest: {}", String::from_utf8_lossy(&output.stderr));
    let digest = String::from_utf8(output.stdout)?.trim().to_string();
    let pod_ip = ready_pod_of_app(&client, &namespace, "web", &digest).await?;
    assert_eq!(http_get(&format!("http://{pod_ip}:8080/version")).await?.trim(), sha);
    eprintln!(
        "push to serving {sha}: {:.1}s; test so far: {:.1}s",
        pushed.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    // A hook signed with another secret: Gitea's delivery is refused 401 and
    // nothing is stored. The good hook is switched off so this push is the
    // wrong hook's alone.
    let path = format!("/repos/{repository}/hooks/{good_hook}");
    api.call(reqwest::Method::PATCH, &path, json!({"active": false}), 200).await?;
    let wrong_hook = api.create_hook(&repository, &hook, "not-the-apps-secret").await?;
    let changed = format!("{}# delivered by a hook with the wrong key\n", web_dockerfile(&base, true));
    let refused_sha = commit(work.path(), &push_url, &changed, "Delivered with the wrong key")?;
    let history = wait_for_deliveries(&gitea, &repository, wrong_hook, 1).await?;
    let delivery = &history[0];
    assert_eq!(delivery.status, Some(401), "Gitea's record of the wrong hook's delivery: {}", delivery.html);
    let stored = redeployments.list(&ListParams::default()).await?.items;
    assert_eq!(stored.len(), 1, "a refused delivery stores nothing: {:?}", stored.iter().map(|r| &r.metadata.name));
    assert!(stored.iter().all(|r| r.spec.git.as_ref().and_then(|g| g.sha.as_deref()) != Some(refused_sha.as_str())));
    let history = deliveries(&gitea, &repository, good_hook).await?;
    assert_eq!(history.len(), 1, "the switched-off hook delivered nothing more: {history:?}");

    eprintln!("whole test: {:.1}s", started.elapsed().as_secs_f64());
    operator.shutdown().await;
    Ok(())
}
