//! Assembles the running operator: watched caches, the reconcilers, the hook
//! server and the admin server, all in one process.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use futures::{FutureExt, StreamExt, future::BoxFuture};
use k8s_openapi::api::batch::v1::Job;
use kube::{
    Client, Resource,
    runtime::{
        Controller, controller,
        events::{Recorder, Reporter},
        reflector, watcher,
    },
};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};

use crate::{
    api::{App, DeploymentProfile, Phase, Redeployment, Service, ServicePhase, ServiceResult},
    build::REDEPLOYMENT_LABEL,
    cache::{
        Caches, Change, Guarded, Indexed, OwnRedeployments, Scope, ServiceIndex, SharedWriter, Synced, Trigger,
        WorkloadChange, WorkloadIndex, as_history_when_finished, known::KnownVersions, watch_into,
    },
    context::{Context, Settings},
    hook::{
        handler::{HookState, Limits},
        index::HookIndex,
        routes::{AdminState, admin_router, hook_router},
        signature_keys::SignatureKeys,
    },
    leader::{Elector, LeaseConfig},
    metrics::Metrics,
    reconcile::{
        self, app,
        first_pass::{AppsFirst, FIRST_PASS_LIMIT, LISTED_SERVICES_QUEUED, Reconciled, hand_over_listed},
        redeployment, service,
    },
    server::{ConnectionLimits, serve},
    workload::Workload,
};

#[derive(Clone, Debug)]
pub struct Config {
    pub hook_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub settings: Settings,
    pub limits: Limits,
    /// What the hook and admin servers let connections hold, and for how long.
    pub connections: ConnectionLimits,
    /// Run the reconcilers only while holding this Lease; `None`: always.
    pub leader_election: Option<LeaseConfig>,
    /// The namespaces watched: the whole cluster, or only those listed.
    pub scope: Scope,
}

/// A running operator. Dropping it does not stop it: call [`Running::shutdown`].
pub struct Running {
    pub hook_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub context: Arc<Context>,
    pub ready: Arc<AtomicBool>,
    /// Whether this replica runs the reconcilers.
    leading: watch::Sender<bool>,
    /// Set when the reconcilers stopped because another replica took the Lease.
    lost_leadership: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    /// Servers and reconcilers: they finish on their own once stopped.
    tasks: JoinSet<()>,
    /// Watches feeding the caches: aborted once the rest has finished.
    background: JoinSet<()>,
}

impl Running {
    /// Stops everything and waits for it to finish.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        while self.tasks.join_next().await.is_some() {}
        self.background.shutdown().await;
    }

    /// Runs until SIGINT or SIGTERM, or until it lost the leadership, then
    /// shuts down; the latter is an error (a restarted replica follows).
    pub async fn until_signal(self) -> anyhow::Result<()> {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    term.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            () = terminate => {},
            () = stopped(&self.stop) => {},
        }
        tracing::info!("shutting down");
        let lost = self.lost_leadership.load(Ordering::Acquire);
        self.shutdown().await;
        anyhow::ensure!(!lost, "another replica took the leader lease: stopped, to start again as a follower");
        Ok(())
    }

    /// Whether this replica runs the reconcilers (holds the Lease, or elects none).
    pub fn is_leading(&self) -> bool {
        *self.leading.borrow()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// Completes once `stop` is set.
fn stopped(stop: &watch::Sender<bool>) -> BoxFuture<'static, ()> {
    let mut stop = stop.subscribe();
    async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    }
    .boxed()
}

/// [`stopped`] as a `Sync` future, as `Controller::graceful_shutdown_on` wants.
fn stopped_sync(
    stop: &watch::Sender<bool>,
    tasks: &mut JoinSet<()>,
) -> impl std::future::Future<Output = ()> + Send + Sync + 'static {
    let (fire, fired) = tokio::sync::oneshot::channel();
    let stopped = stopped(stop);
    tasks.spawn(async move {
        stopped.await;
        let _ = fire.send(());
    });
    fired.map(|_| ())
}

/// Reconciliations each controller runs at once. Unbounded, a start with
/// thousands of objects runs a reconciliation (and API requests, each on a
/// connection of its own) for every one of them at the same time.
const RECONCILE_CONCURRENCY: u16 = 32;

/// Namespace and name of a watched object.
fn key<K: Resource>(object: &K) -> (String, String) {
    (object.meta().namespace.clone().unwrap_or_default(), object.meta().name.clone().unwrap_or_default())
}

/// The Apps whose status lists a Service that was just recorded as
/// `indexed`: none when its App kept it (its status, say, changed: an App
/// lists only its Services' names), else the App it joined and the one it left.
fn apps_woken_by_service(service: &Service, indexed: Indexed) -> Vec<String> {
    match indexed {
        Indexed::Unchanged => Vec::new(),
        Indexed::New => vec![service.spec.app.clone()],
        Indexed::Moved { from } => vec![from, service.spec.app.clone()],
    }
}

/// The App a Redeployment change concerns: its status names the newest
/// Redeployment and its history keeps the newest finished ones, so it
/// hears of a Redeployment created, finished or deleted, not of each step
/// of one in progress (each would cost it a reconciliation).
fn app_woken_by_redeployment<'a>(change: &Change<'a, Guarded<Redeployment>>) -> Option<&'a str> {
    let (guard, deleted) = match *change {
        Change::Applied(guard) => (guard, false),
        Change::Deleted(guard) => (guard, true),
    };
    let redeployment = guard.0.as_ref().ok()?;
    let phase = redeployment.status.as_ref().and_then(|s| s.phase);
    let in_progress = phase.is_some_and(|phase| !phase.is_finished() && phase != Phase::Pending);
    (deleted || !in_progress).then_some(redeployment.spec.app.as_str())
}

/// The Services to reconcile when a Redeployment changed: those whose status
/// records what it did, once it is done with them, i.e. its finished
/// results that built an image or rolled out. One status write per Service
/// and call: a build is recorded with the rollout that follows it, not
/// apart (build reuse reads the Redeployments themselves, so it knows a
/// build as soon as it is recorded there). A deleted one wakes none: what it
/// recorded stays in the Services' status (deleting an unfinished one first
/// finishes it, Canceled).
fn services_woken_by_redeployment<'a>(change: &Change<'a, Guarded<Redeployment>>) -> Vec<&'a str> {
    let Change::Applied(Guarded(Ok(redeployment))) = *change else { return Vec::new() };
    let results = redeployment.status.iter().flat_map(|s| &s.services);
    let recorded = |r: &&ServiceResult| r.built.is_some() || r.phase == ServicePhase::Succeeded;
    results.filter(|r| r.phase.is_finished()).filter(recorded).map(|r| r.service.as_str()).collect()
}

/// The Services to reconcile when a workload changed: those targeting it,
/// when the containers they check came or went.
fn services_woken_by_workload(change: &WorkloadChange<'_>, index: &ServiceIndex) -> Vec<String> {
    if change.before.map(|w| &w.containers) == change.after.map(|w| &w.containers) {
        return Vec::new();
    }
    index.targeting(change.kind, change.namespace, change.name)
}

/// The Redeployments to reconcile when a workload changed: the one its pod
/// template names now, and the one it named before, if another.
fn redeployments_woken_by_workload(change: &WorkloadChange<'_>) -> Vec<String> {
    let named = |w: Option<&Workload>| w.and_then(|w| w.redeployment().map(str::to_string));
    let (before, after) = (named(change.before), named(change.after));
    let before = before.filter(|b| Some(b) != after.as_ref());
    after.into_iter().chain(before).collect()
}

/// The Redeployment a build Job belongs to: the one its controller
/// ownerReference names (a label anyone may set is not enough).
fn redeployment_owning_job(job: &Job) -> Option<&str> {
    let owner = job.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true))?;
    (owner.kind == "Redeployment" && owner.api_version == Redeployment::api_version(&())).then_some(owner.name.as_str())
}

/// Binds the ports and starts the caches, the reconcilers and both servers.
pub async fn start(client: Client, config: Config) -> anyhow::Result<Running> {
    config.limits.validate()?;
    let (stop, _) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut background = JoinSet::new();
    let metrics = Arc::new(Metrics::default());

    // Each controller is told what to reconcile by the watches below: one
    // watch per kind, shared by every controller and reader.
    let (app_trigger, app_requests) = Trigger::<Guarded<App>>::new();
    let (service_trigger, service_requests) = Trigger::<Guarded<Service>>::new();
    let (redeployment_trigger, redeployment_requests) = Trigger::<Guarded<Redeployment>>::new();
    let (apps, apps_writer) = reflector::store::<Guarded<App>>();
    let (services, services_writer) = reflector::store::<Guarded<Service>>();
    let (profiles, profiles_writer) = reflector::store::<Guarded<DeploymentProfile>>();
    let (redeployments, redeployments_writer) = reflector::store::<Guarded<Redeployment>>();
    let redeployments_writer = SharedWriter::new(redeployments_writer);
    let (jobs, jobs_writer) = reflector::store::<Job>();
    let service_index = ServiceIndex::default();
    let workloads = WorkloadIndex::default();
    let hooks = HookIndex::default().with_apps(apps.clone());

    let scope = &config.scope;
    let listed: [Synced; 4] = Default::default();
    let known_versions = KnownVersions::default();
    let apps_first = AppsFirst::new(apps.clone(), app_trigger.clone(), FIRST_PASS_LIMIT);
    let (trigger, known, first) = (app_trigger.clone(), known_versions.clone(), apps_first.clone());
    background.spawn(watch_into(
        scope.apis(&client),
        watcher::Config::default(),
        std::convert::identity,
        SharedWriter::new(apps_writer),
        listed[0].clone(),
        move |change, _| match change {
            Change::Applied(app) => {
                let (namespace, name) = key(app);
                trigger.reconcile(&namespace, &name);
            }
            Change::Deleted(app) => {
                let (namespace, name) = key(app);
                known.forget::<App>(&namespace, &name);
                first.forget(&namespace, &name);
            }
        },
    ));

    // During the first list every controller reconciles all its objects
    // anyway: the watches then wake only the objects' own controller. The
    // Services listed then are handed over after the Apps' first pass
    // (`first_pass::hand_over_listed`).
    let (index, trigger, app) = (service_index.clone(), service_trigger.clone(), app_trigger.clone());
    background.spawn(watch_into(
        scope.apis(&client),
        watcher::Config::default(),
        std::convert::identity,
        SharedWriter::new(services_writer),
        listed[1].clone(),
        move |change, initial| match change {
            Change::Applied(guard) => {
                let (namespace, name) = key(guard);
                if let Ok(service) = &guard.0 {
                    let indexed = index.insert(service);
                    for app_name in apps_woken_by_service(service, indexed).iter().filter(|_| !initial) {
                        app.reconcile(&namespace, app_name);
                    }
                }
                if !initial {
                    trigger.reconcile(&namespace, &name);
                }
            }
            Change::Deleted(guard) => {
                let (namespace, name) = key(guard);
                if let Some(app_name) = index.remove(&namespace, &name) {
                    app.reconcile(&namespace, &app_name);
                }
            }
        },
    ));

    let profiles_synced = listed[2].clone();
    background.spawn(watch_into(
        scope.apis(&client),
        watcher::Config::default(),
        std::convert::identity,
        SharedWriter::new(profiles_writer),
        profiles_synced,
        |change, _| {
            if let Change::Applied(Guarded(Err(invalid))) = change {
                tracing::warn!(
                    kind = "DeploymentProfile",
                    name = ?invalid.metadata.name,
                    namespace = ?invalid.metadata.namespace,
                    error = %invalid.error,
                    "skipping a malformed object"
                );
            }
        },
    ));

    let (trigger, app, services_trigger, known) =
        (redeployment_trigger.clone(), app_trigger.clone(), service_trigger.clone(), known_versions.clone());
    background.spawn(watch_into(
        scope.apis(&client),
        watcher::Config::default(),
        as_history_when_finished,
        redeployments_writer.clone(),
        listed[3].clone(),
        move |change, initial| {
            let (namespace, name) = match &change {
                Change::Applied(guard) | Change::Deleted(guard) => key(*guard),
            };
            if let Some(app_name) = app_woken_by_redeployment(&change).filter(|_| !initial) {
                app.reconcile(&namespace, app_name);
            }
            for service in services_woken_by_redeployment(&change).into_iter().filter(|_| !initial) {
                services_trigger.reconcile(&namespace, service);
            }
            match change {
                Change::Applied(_) => trigger.reconcile(&namespace, &name),
                Change::Deleted(_) => known.forget::<Redeployment>(&namespace, &name),
            }
        },
    ));

    // A build Job wakes the Redeployment that owns it; its store spares a
    // pass following a build a read of the Job.
    let trigger = redeployment_trigger.clone();
    background.spawn(watch_into(
        scope.apis::<Job>(&client),
        watcher::Config::default().labels(REDEPLOYMENT_LABEL),
        std::convert::identity,
        SharedWriter::new(jobs_writer),
        Synced::default(),
        move |change, _| {
            let (Change::Applied(job) | Change::Deleted(job)) = change;
            if let Some(redeployment) = redeployment_owning_job(job) {
                trigger.reconcile(job.metadata.namespace.as_deref().unwrap_or_default(), redeployment);
            }
        },
    ));

    // A workload wakes the Services that target it when its containers come
    // or go, and the Redeployments its pod template names as it rolls out.
    let (index, services_trigger, trigger) =
        (service_index.clone(), service_trigger.clone(), redeployment_trigger.clone());
    background.spawn(workloads.clone().run(client.clone(), scope.clone(), move |change: WorkloadChange<'_>| {
        for service in services_woken_by_workload(&change, &index) {
            services_trigger.reconcile(change.namespace, &service);
        }
        for redeployment in redeployments_woken_by_workload(&change) {
            trigger.reconcile(change.namespace, &redeployment);
        }
    }));

    // The hook Secrets' one watch keeps the hook index and wakes their Apps.
    let app = app_trigger.clone();
    background.spawn(hooks.clone().run(client.clone(), scope.clone(), move |(namespace, name)| {
        app.reconcile(namespace, name);
    }));

    let signature_keys = SignatureKeys::default();
    background.spawn(signature_keys.clone().run(client.clone(), scope.clone()));

    let controller_config = || controller::Config::default().concurrency(RECONCILE_CONCURRENCY);
    let app_controller = Controller::for_stream(futures::stream::pending(), apps.clone())
        .with_config(controller_config())
        .reconcile_on(app_requests);
    let redeployment_controller = Controller::for_stream(futures::stream::pending(), redeployments.clone())
        .with_config(controller_config())
        .reconcile_on(redeployment_requests);
    let service_controller = Controller::for_stream(futures::stream::pending(), services.clone())
        .with_config(controller_config())
        .reconcile_on(service_requests);

    let caches = Caches {
        apps,
        services,
        service_index,
        profiles,
        redeployments,
        own_redeployments: OwnRedeployments { writer: redeployments_writer, trigger: redeployment_trigger.clone() },
        jobs,
        workloads,
        hooks,
        signature_keys: signature_keys.clone(),
        listed: listed.to_vec(),
        synced: Default::default(),
    };
    let reporter = Reporter { controller: "redeploy-operator".into(), instance: std::env::var("POD_NAME").ok() };
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        http: crate::http::build_client()?,
        settings: config.settings.clone(),
        caches,
        metrics: metrics.clone(),
        known_versions,
        held_statuses: Default::default(),
    });

    // The reconcilers start once every cache holds a full list: before, a
    // missing object could not be told from one not listed yet.
    let ready = context.caches.synced.clone();
    let (synced, is_synced) = tokio::sync::oneshot::channel::<()>();
    {
        let caches = context.caches.clone();
        background.spawn(async move {
            caches.wait_synced().await;
            tracing::info!("caches synced; ready");
            let _ = synced.send(());
        });
    }
    // ...and only on the replica that holds the Lease. Once it loses it,
    // the whole operator stops: a replica started again follows.
    let (leading, _) = watch::channel(config.leader_election.is_none());
    if let Some(lease) = config.leader_election.clone() {
        tasks.spawn(Elector::new(client.clone(), lease).run(leading.clone(), stopped(&stop)));
    }
    let lost_leadership = Arc::new(AtomicBool::new(false));
    let services_after = apps_first.clone();
    let services_reconciled = Reconciled::default();
    let listed_services = hand_over_listed(
        context.caches.services.clone(),
        service_trigger.clone(),
        apps_first.clone(),
        services_reconciled.clone(),
        LISTED_SERVICES_QUEUED,
    );
    let reconcilers = futures::future::join4(
        app_controller
            .graceful_shutdown_on(stopped_sync(&stop, &mut background))
            .run(
                move |app, context| {
                    let first = apps_first.clone();
                    async move {
                        let reconciled = app::reconcile(app.clone(), context, &first).await;
                        first.reconciled(&app);
                        reconciled
                    }
                },
                reconcile::error_policy(app::CONTROLLER),
                context.clone(),
            )
            .for_each(|_| async {}),
        redeployment_controller
            .graceful_shutdown_on(stopped_sync(&stop, &mut background))
            .run(redeployment::reconcile, reconcile::error_policy(redeployment::CONTROLLER), context.clone())
            .for_each(|_| async {}),
        service_controller
            .graceful_shutdown_on(stopped_sync(&stop, &mut background))
            .run(
                move |service, context| {
                    let (first, reconciled) = (services_after.clone(), services_reconciled.clone());
                    async move {
                        first.wait().await;
                        let result = service::reconcile(service, context).await;
                        reconciled.one_more();
                        result
                    }
                },
                reconcile::error_policy(service::CONTROLLER),
                context.clone(),
            )
            .for_each(|_| async {}),
        listed_services,
    );
    let (mut leading_changes, lost, stop_all, stopped_first) =
        (leading.subscribe(), lost_leadership.clone(), stop.clone(), stopped(&stop));
    tasks.spawn(async move {
        let may_lead = async { is_synced.await.is_ok() && leading_changes.wait_for(|leading| *leading).await.is_ok() };
        let lead = tokio::select! {
            lead = may_lead => lead,
            () = stopped_first => false,
        };
        if !lead {
            return;
        }
        // Losing the Lease stops everything; a stop asked for lets the
        // reconcilers finish what they are doing (the Lease is handed back then too).
        let lost_lease = async {
            if leading_changes.wait_for(|leading| !*leading).await.is_ok() && !*stop_all.borrow() {
                return;
            }
            std::future::pending().await
        };
        tokio::select! {
            _ = reconcilers => {}
            () = lost_lease => {
                tracing::error!("lost the leader lease: stopping");
                lost.store(true, Ordering::Release);
                stop_all.send_replace(true);
            }
        }
    });

    let hook_listener = TcpListener::bind(config.hook_addr).await?;
    let admin_listener = TcpListener::bind(config.admin_addr).await?;
    let (hook_addr, admin_addr) = (hook_listener.local_addr()?, admin_listener.local_addr()?);
    let deliveries = crate::hook::deliveries::DeliveryLog::start(context.clone());
    let hook_state = Arc::new(HookState::new(context.clone(), config.limits.clone()).with_deliveries(deliveries));
    tasks.spawn(serve(hook_listener, hook_router(hook_state), config.connections.clone(), stopped(&stop)));
    let admin = AdminState { metrics, ready: ready.clone() };
    tasks.spawn(serve(admin_listener, admin_router(admin), config.connections.clone(), stopped(&stop)));
    tracing::info!(%hook_addr, %admin_addr, "serving");
    Ok(Running { hook_addr, admin_addr, context, ready, leading, lost_leadership, stop, tasks, background })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::Deployment;
    use serde_json::json;

    use super::*;
    use crate::{api::WorkloadKind, workload::WorkloadObject};

    fn service(name: &str, app: &str) -> Service {
        serde_json::from_value(json!({
            "apiVersion": "redeploy.dev/v1alpha1", "kind": "Service",
            "metadata": { "name": name, "namespace": "ns" },
            "spec": { "app": app, "target": { "name": "web" }, "image": { "reference": "example.com/web" } },
        }))
        .unwrap_or_else(|e| panic!("a valid Service: {e}"))
    }

    fn redeployment(phase: Option<&str>) -> Guarded<Redeployment> {
        let mut object = json!({
            "apiVersion": "redeploy.dev/v1alpha1", "kind": "Redeployment",
            "metadata": { "name": "shop-1", "namespace": "ns" },
            "spec": { "app": "shop", "trigger": { "provider": "github", "event": "push" } },
        });
        if let Some(phase) = phase {
            object["status"] = json!({ "phase": phase });
        }
        Guarded(Ok(serde_json::from_value(object).unwrap_or_else(|e| panic!("a valid Redeployment: {e}"))))
    }

    fn deployment(image: &str, redeployment: Option<&str>) -> Workload {
        let annotations = redeployment.map(|r| json!({ crate::workload::REDEPLOYMENT_ANNOTATION: r }));
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": { "name": "web", "namespace": "ns" },
            "spec": {
                "selector": {},
                "template": {
                    "metadata": { "annotations": annotations.unwrap_or(json!({})) },
                    "spec": { "containers": [{ "name": "main", "image": image }] },
                },
            },
        }))
        .unwrap_or_else(|e| panic!("a valid Deployment: {e}"));
        deployment.summary()
    }

    fn change<'a>(before: Option<&'a Workload>, after: Option<&'a Workload>) -> WorkloadChange<'a> {
        WorkloadChange { kind: WorkloadKind::Deployment, namespace: "ns", name: "web", before, after }
    }

    #[test]
    fn a_service_wakes_its_apps_only_when_it_joins_or_leaves_one() {
        let web = service("web", "shop");
        assert!(apps_woken_by_service(&web, Indexed::Unchanged).is_empty(), "a status change of a listed Service");
        assert_eq!(apps_woken_by_service(&web, Indexed::New), ["shop"]);
        assert_eq!(apps_woken_by_service(&web, Indexed::Moved { from: "blog".into() }), ["blog", "shop"]);
    }

    #[test]
    fn a_redeployment_wakes_its_app_when_created_finished_or_deleted() {
        let woken = |guard: &Guarded<Redeployment>, deleted: bool| {
            let change = if deleted { Change::Deleted(guard) } else { Change::Applied(guard) };
            app_woken_by_redeployment(&change).map(str::to_string)
        };
        let shop = Some("shop".to_string());
        assert_eq!(woken(&redeployment(None), false), shop, "created");
        assert_eq!(woken(&redeployment(Some("Pending")), false), shop);
        assert_eq!(woken(&redeployment(Some("Building")), false), None, "a step of one in progress");
        assert_eq!(woken(&redeployment(Some("Deploying")), false), None);
        for finished in ["Succeeded", "Failed", "Superseded", "Canceled"] {
            assert_eq!(woken(&redeployment(Some(finished)), false), shop, "{finished}");
        }
        assert_eq!(woken(&redeployment(Some("Deploying")), true), shop, "deleted");
    }

    #[test]
    fn a_redeployment_wakes_the_services_it_built_or_rolled_out_once_done_with_them() {
        let mut guard = redeployment(Some("Deploying"));
        let results = json!([
            { "service": "web", "phase": "Failed", "built": { "commit": "c1", "image": "r/web:c1" } },
            { "service": "worker", "phase": "Succeeded" },
            { "service": "api", "phase": "Building", "buildJob": "shop-1-api" },
            { "service": "cron", "phase": "Skipped" },
            { "service": "db", "phase": "Failed" },
            { "service": "queue", "phase": "Deploying", "built": { "commit": "c1", "image": "r/queue:c1" } },
        ]);
        if let Ok(redeployment) = guard.0.as_mut()
            && let Some(status) = redeployment.status.as_mut()
        {
            status.services = serde_json::from_value(results).unwrap_or_else(|e| panic!("valid results: {e}"));
        }
        assert_eq!(services_woken_by_redeployment(&Change::Applied(&guard)), ["web", "worker"]);
        assert!(services_woken_by_redeployment(&Change::Deleted(&guard)).is_empty(), "deleted");
        assert!(services_woken_by_redeployment(&Change::Applied(&redeployment(None))).is_empty(), "created");
    }

    #[test]
    fn a_workload_wakes_the_services_targeting_it_when_its_containers_change() {
        let index = ServiceIndex::default();
        index.insert(&service("web", "shop"));
        let (old, new) = (deployment("example.com/web:1", None), deployment("example.com/web:2", None));
        let rolled = deployment("example.com/web:1", Some("shop-1"));
        assert_eq!(services_woken_by_workload(&change(None, Some(&old)), &index), ["web"], "created");
        assert_eq!(services_woken_by_workload(&change(Some(&old), Some(&new)), &index), ["web"], "new image");
        assert_eq!(services_woken_by_workload(&change(Some(&old), None), &index), ["web"], "deleted");
        assert!(services_woken_by_workload(&change(Some(&old), Some(&rolled)), &index).is_empty(), "same containers");
    }

    #[test]
    fn a_workload_wakes_the_redeployments_its_template_named() {
        let (none, one, two) =
            (deployment("i", None), deployment("i", Some("shop-1")), deployment("i", Some("shop-2")));
        assert_eq!(redeployments_woken_by_workload(&change(Some(&none), Some(&one))), ["shop-1"]);
        assert_eq!(redeployments_woken_by_workload(&change(Some(&one), Some(&one))), ["shop-1"]);
        assert_eq!(redeployments_woken_by_workload(&change(Some(&one), Some(&two))), ["shop-2", "shop-1"]);
        assert_eq!(redeployments_woken_by_workload(&change(Some(&one), None)), ["shop-1"]);
        assert!(redeployments_woken_by_workload(&change(Some(&none), Some(&none))).is_empty());
    }

    #[test]
    fn a_build_job_wakes_only_the_redeployment_controlling_it() {
        let job = |owner: serde_json::Value| -> Job {
            serde_json::from_value(
                json!({ "metadata": { "name": "b", "namespace": "ns", "ownerReferences": [owner] } }),
            )
            .unwrap_or_else(|e| panic!("a valid Job: {e}"))
        };
        let owner = |kind: &str, controller: bool| json!({ "apiVersion": "redeploy.dev/v1alpha1", "kind": kind, "name": "shop-1", "uid": "u", "controller": controller });
        assert_eq!(redeployment_owning_job(&job(owner("Redeployment", true))), Some("shop-1"));
        assert_eq!(redeployment_owning_job(&job(owner("Redeployment", false))), None);
        assert_eq!(redeployment_owning_job(&job(owner("App", true))), None);
        assert_eq!(redeployment_owning_job(&Job::default()), None);
    }
}
