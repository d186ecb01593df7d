//! `kubectl redeploy`, the toolbelt: trigger a Redeployment (planned exactly
//! as a hook call with the same modifiers would be), follow it to its end,
//! show an App's hook URL, rotate its token, list its history. It talks to
//! the API server only: it needs no route to the hook.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;

use crate::{
    api::{App, DeploymentProfile, Phase, Provider, Redeployment, Service, ServicePhase},
    hook::{
        credentials::{APP_LABEL, ROTATE_ANNOTATION, secret_name},
        event::HookEvent,
        record,
    },
    install::FIELD_MANAGER,
    plan::{self, Modifiers},
};

/// What `kubectl redeploy trigger` asks for.
#[derive(Clone, Debug, Default)]
pub struct TriggerRequest {
    pub app: String,
    pub services: Vec<String>,
    pub profile: Option<String>,
    pub git_ref: Option<String>,
    /// Who asked, recorded as the trigger's sender.
    pub sender: Option<String>,
}

/// Plans and stores a Redeployment as the hook would for a call without Git
/// information; an error says why nothing could be planned.
pub async fn trigger(client: &Client, namespace: &str, request: &TriggerRequest) -> anyhow::Result<Redeployment> {
    let Planned { app, event, modifiers, plan } = plan_trigger(client, namespace, request).await?;
    if plan.is_empty() {
        anyhow::bail!("nothing to deploy: {}", plan.reason.unwrap_or_else(|| "no Service matched".into()));
    }
    let redeployment = record::redeployment(&app, &event, None, &modifiers, &plan, Timestamp::now());
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    Ok(Api::<Redeployment>::namespaced(client.clone(), namespace).create(&params, &redeployment).await?)
}

/// `trigger --dry-run`: the plan [`trigger`] would store, and per Service why, as text; nothing is stored.
pub async fn dry_run(client: &Client, namespace: &str, request: &TriggerRequest) -> anyhow::Result<String> {
    let Planned { plan, .. } = plan_trigger(client, namespace, request).await?;
    let mut out = match &plan.reason {
        Some(reason) => format!("dry run: nothing to deploy: {reason}\n"),
        None => {
            let planned: Vec<String> = plan
                .services
                .iter()
                .map(|p| match &p.git_ref {
                    Some(git_ref) => format!("{} at {git_ref}", p.service),
                    None => p.service.clone(),
                })
                .collect();
            format!("dry run: would deploy {} (nothing stored)\n", planned.join(", "))
        }
    };
    let _ = writeln!(out, "{:<24} {:<20} REASON", "SERVICE", "DECISION");
    for decision in &plan.decisions {
        let name = serde_json::to_value(decision.decision)?.as_str().unwrap_or_default().to_owned();
        let _ = writeln!(out, "{:<24} {:<20} {}", decision.service, name, decision.reason);
    }
    Ok(out)
}

struct Planned {
    app: App,
    event: HookEvent,
    modifiers: Modifiers,
    plan: plan::Plan,
}

async fn plan_trigger(client: &Client, namespace: &str, request: &TriggerRequest) -> anyhow::Result<Planned> {
    let app = Api::<App>::namespaced(client.clone(), namespace)
        .get_opt(&request.app)
        .await?
        .ok_or_else(|| anyhow::anyhow!("App `{}` does not exist in namespace {namespace}", request.app))?;
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    if !request.services.is_empty() {
        query.append_pair("services", &request.services.join(","));
    }
    if let Some(profile) = &request.profile {
        query.append_pair("deployment_profile", profile);
    }
    if let Some(git_ref) = &request.git_ref {
        query.append_pair("git_ref", git_ref);
    }
    let modifiers = Modifiers::parse(Some(&query.finish()), None)?;
    let services = list_of_app::<Service>(client, namespace, &request.app, |s| &s.spec.app).await?;
    let profiles = list_of_app::<DeploymentProfile>(client, namespace, &request.app, |p| &p.spec.app).await?;
    let event = HookEvent {
        provider: Provider::Manual,
        event: "kubectl redeploy".into(),
        sender: request.sender.clone(),
        ..Default::default()
    };
    let plan = plan::plan_with_profiles(&event, &app, &services, &profiles, &modifiers)?;
    Ok(Planned { app, event, modifiers, plan })
}

async fn list_of_app<K>(
    client: &Client,
    namespace: &str,
    app: &str,
    app_of: impl Fn(&K) -> &String,
) -> anyhow::Result<Vec<K>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let all = Api::<K>::namespaced(client.clone(), namespace).list(&ListParams::default()).await?;
    Ok(all.items.into_iter().filter(|o| app_of(o) == app).collect())
}

/// Follows a Redeployment, writing a line to `out` at each change of its
/// phase or of a Service's, until it has finished; returns its final phase.
pub async fn follow(client: &Client, namespace: &str, name: &str, mut out: impl FnMut(&str)) -> anyhow::Result<Phase> {
    let api = Api::<Redeployment>::namespaced(client.clone(), namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut changes = watcher(api, config).default_backoff().applied_objects().boxed();
    let mut last: (Option<Phase>, BTreeMap<String, ServicePhase>) = (None, BTreeMap::new());
    while let Some(redeployment) = changes.try_next().await? {
        let status = redeployment.status.unwrap_or_default();
        for result in &status.services {
            if last.1.get(&result.service) != Some(&result.phase) {
                let message = result.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
                out(&format!("  {:<24} {:?}{message}", result.service, result.phase));
                last.1.insert(result.service.clone(), result.phase);
            }
        }
        if status.phase != last.0 {
            if let Some(phase) = status.phase {
                out(&format!("{name}: {phase:?}"));
                if phase.is_finished() {
                    return Ok(phase);
                }
            }
            last.0 = status.phase;
        }
    }
    anyhow::bail!("the watch on Redeployment {name} ended before it finished")
}

/// The App's hook URL, from its Secret.
pub async fn hook_url(client: &Client, namespace: &str, app: &str) -> anyhow::Result<String> {
    let app = Api::<App>::namespaced(client.clone(), namespace)
        .get_opt(app)
        .await?
        .ok_or_else(|| anyhow::anyhow!("App `{app}` does not exist in namespace {namespace}"))?;
    url_of(client, namespace, &app)
        .await?
        .ok_or_else(|| anyhow::anyhow!("App `{}` has no hook Secret yet: is the operator running?", app.name_any()))
}

async fn url_of(client: &Client, namespace: &str, app: &App) -> anyhow::Result<Option<String>> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace).get_opt(&secret_name(app)).await?;
    let url = secret.and_then(|s| s.data?.remove("url")).map(|url| String::from_utf8(url.0)).transpose()?;
    Ok(url)
}

/// Rotates the App's hook token and returns the new URL once the operator
/// has written it (the old one answers 404 from then on).
pub async fn rotate(client: &Client, namespace: &str, app: &str, timeout: Duration) -> anyhow::Result<String> {
    let old = hook_url(client, namespace, app).await?;
    let apps = Api::<App>::namespaced(client.clone(), namespace);
    let patch = json!({ "metadata": { "annotations": { ROTATE_ANNOTATION: Timestamp::now().to_string() } } });
    let app = apps.patch(app, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(url) = url_of(client, namespace, &app).await?.filter(|url| *url != old) {
            return Ok(url);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the operator did not rotate the token of App `{}` within {timeout:?}: is it running?",
            app.name_any()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The App's Redeployments, newest first, as a table.
pub async fn history(client: &Client, namespace: &str, app: &str) -> anyhow::Result<String> {
    let api = Api::<Redeployment>::namespaced(client.clone(), namespace);
    let mut all = api.list(&ListParams::default().labels(&format!("{APP_LABEL}={app}"))).await?.items;
    all.sort_by_key(|r| std::cmp::Reverse(r.order_key()));
    let mut table = format!("{:<32} {:<11} {:<10} {:<25} {}\n", "NAME", "PHASE", "TRIGGER", "CREATED", "SERVICES");
    for redeployment in &all {
        let phase = redeployment.status.as_ref().and_then(|s| s.phase).unwrap_or_default();
        let services: Vec<&str> = redeployment.spec.plan.iter().map(|p| p.service.as_str()).collect();
        let created = redeployment.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()).unwrap_or_default();
        let _ = writeln!(
            table,
            "{:<32} {:<11} {:<10} {:<25} {}",
            redeployment.name_any(),
            format!("{phase:?}"),
            redeployment.spec.trigger.provider.display_name(),
            created,
            services.join(",")
        );
    }
    Ok(table)
}

/// The App's `status.recentDeliveries`, newest first, as a table.
pub async fn deliveries(client: &Client, namespace: &str, app: &str) -> anyhow::Result<String> {
    let app = Api::<App>::namespaced(client.clone(), namespace)
        .get_opt(app)
        .await?
        .ok_or_else(|| anyhow::anyhow!("App `{app}` does not exist in namespace {namespace}"))?;
    let deliveries = app.status.map(|s| s.recent_deliveries).unwrap_or_default();
    let mut table = format!(
        "{:<28} {:<16} {:<14} {:<38} {:<5} {:<32} {}\n",
        "TIME", "PROVIDER", "EVENT", "DELIVERY", "CODE", "REDEPLOYMENT", "REASON"
    );
    for d in &deliveries {
        let provider = d.provider.map(Provider::display_name).unwrap_or("-");
        let dry = if d.dry_run { "dry run: " } else { "" };
        let reason =
            d.reason.as_deref().map(|r| format!("{dry}{r}")).unwrap_or_else(|| dry.trim_end_matches(": ").to_owned());
        let _ = writeln!(
            table,
            "{:<28} {:<16} {:<14} {:<38} {:<5} {:<32} {}",
            d.time.0.to_string(),
            provider,
            if d.event.is_empty() { "-" } else { &d.event },
            d.delivery_id.as_deref().unwrap_or("-"),
            d.code,
            d.redeployment.as_deref().unwrap_or("-"),
            reason
        );
    }
    Ok(table)
}
