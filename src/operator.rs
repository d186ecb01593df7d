//! Assembles the running operator: watched caches, the reconcilers, the hook
//! server and the admin server, all in one process.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::{FutureExt, StreamExt, future::BoxFuture};
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, StatefulSet},
    batch::v1::Job,
    core::v1::Secret,
};
use kube::{
    Api, Client, ResourceExt,
    core::error_boundary::DeserializeGuard,
    runtime::{
        Controller, WatchStreamExt,
        events::{Recorder, Reporter},
        reflector::{self, ObjectRef},
        watcher,
    },
};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};

use crate::{
    api::{App, DeploymentProfile, Redeployment, Service, WorkloadKind},
    build::REDEPLOYMENT_LABEL,
    context::{Caches, Context, Settings},
    hook::{
        credentials::HOOK_LABEL,
        handler::{HookState, Limits},
        index::HookIndex,
        routes::{AdminState, admin_router, hook_router},
    },
    metrics::Metrics,
    reconcile::{self, app, redeployment, service},
    server::serve,
    workload,
};

#[derive(Clone, Debug)]
pub struct Config {
    pub hook_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub settings: Settings,
    pub limits: Limits,
    /// Time a client has to send its request headers.
    pub header_timeout: Duration,
}

/// A running operator. Dropping it does not stop it: call [`Running::shutdown`].
pub struct Running {
    pub hook_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub context: Arc<Context>,
    pub ready: Arc<AtomicBool>,
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

    /// Runs until SIGINT or SIGTERM, then shuts down.
    pub async fn until_signal(self) {
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
        }
        tracing::info!("shutting down");
        self.shutdown().await;
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

/// Malformed objects stay in the caches as errors, skipped by every reader;
/// the watch goes on.
fn warn_if_malformed<K>(kind: &str, change: Result<DeserializeGuard<K>, watcher::Error>) {
    if let Ok(DeserializeGuard(Err(invalid))) = change {
        tracing::warn!(
            kind,
            name = ?invalid.metadata.name,
            namespace = ?invalid.metadata.namespace,
            error = %invalid.error,
            "skipping a malformed object"
        );
    }
}

/// Binds the ports and starts the caches, the reconcilers and both servers.
pub async fn start(client: Client, config: Config) -> anyhow::Result<Running> {
    let (stop, _) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut background = JoinSet::new();
    let metrics = Arc::new(Metrics::default());

    let (services, services_writer) = reflector::store();
    let targets = service::TargetIndex::default();
    let service_events = watcher(Api::<DeserializeGuard<Service>>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(services_writer);

    let (profiles, profiles_writer) = reflector::store();
    let profile_changes =
        watcher(Api::<DeserializeGuard<DeploymentProfile>>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .reflect(profiles_writer)
            .applied_objects();
    background.spawn(profile_changes.for_each(|change| async move { warn_if_malformed("DeploymentProfile", change) }));
    let index = targets.clone();
    background.spawn(service_events.for_each(move |event| {
        match &event {
            Ok(watcher::Event::Apply(DeserializeGuard(Ok(service))))
            | Ok(watcher::Event::InitApply(DeserializeGuard(Ok(service)))) => index.insert(service),
            Ok(watcher::Event::Delete(guard)) => {
                let metadata = match &guard.0 {
                    Ok(service) => service.metadata.clone(),
                    Err(invalid) => invalid.metadata.clone(),
                };
                index.remove(&metadata.namespace.unwrap_or_default(), &metadata.name.unwrap_or_default());
            }
            Ok(watcher::Event::Apply(guard)) | Ok(watcher::Event::InitApply(guard)) => {
                warn_if_malformed("Service", Ok(guard.clone()));
            }
            _ => {}
        }
        async {}
    }));

    let hooks = HookIndex::default();
    background.spawn(hooks.clone().run(Api::<Secret>::all(client.clone())));

    let app_controller = Controller::new(Api::<DeserializeGuard<App>>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Secret>::all(client.clone()), watcher::Config::default().labels(&format!("{HOOK_LABEL}=true")))
        .watches(
            Api::<DeserializeGuard<Service>>::all(client.clone()),
            watcher::Config::default(),
            |guard: DeserializeGuard<Service>| {
                let service = guard.0.ok()?;
                Some(ObjectRef::new(&service.spec.app).within(&service.namespace()?))
            },
        );

    let redeployment_controller =
        Controller::new(Api::<DeserializeGuard<Redeployment>>::all(client.clone()), watcher::Config::default())
            .owns(Api::<Job>::all(client.clone()), watcher::Config::default().labels(REDEPLOYMENT_LABEL))
            .watches(Api::<Deployment>::all(client.clone()), watcher::Config::default(), |deployment| {
                let name = workload::redeployment_of(Some(&deployment.spec.template))?;
                Some(ObjectRef::new(&name).within(&deployment.namespace()?))
            })
            .watches(Api::<StatefulSet>::all(client.clone()), watcher::Config::default(), |set| {
                let name = workload::redeployment_of(Some(&set.spec.template))?;
                Some(ObjectRef::new(&name).within(&set.namespace()?))
            })
            .watches(Api::<DaemonSet>::all(client.clone()), watcher::Config::default(), |set| {
                let name = workload::redeployment_of(Some(&set.spec.template))?;
                Some(ObjectRef::new(&name).within(&set.namespace()?))
            });
    let app_controller = app_controller.watches(
        Api::<DeserializeGuard<Redeployment>>::all(client.clone()),
        watcher::Config::default(),
        |guard: DeserializeGuard<Redeployment>| {
            let redeployment = guard.0.ok()?;
            Some(ObjectRef::new(&redeployment.spec.app).within(&redeployment.namespace()?))
        },
    );
    let service_controller =
        Controller::new(Api::<DeserializeGuard<Service>>::all(client.clone()), watcher::Config::default());
    // A workload created or changed after its Service updates the Service's TargetReady condition.
    let (by_deployment, by_stateful_set, by_daemon_set) = (targets.clone(), targets.clone(), targets.clone());
    let service_controller = service_controller
        .watches(Api::<Deployment>::all(client.clone()), watcher::Config::default(), move |w| {
            by_deployment.services(WorkloadKind::Deployment, w.namespace(), w.name_any())
        })
        .watches(Api::<StatefulSet>::all(client.clone()), watcher::Config::default(), move |w| {
            by_stateful_set.services(WorkloadKind::StatefulSet, w.namespace(), w.name_any())
        })
        .watches(Api::<DaemonSet>::all(client.clone()), watcher::Config::default(), move |w| {
            by_daemon_set.services(WorkloadKind::DaemonSet, w.namespace(), w.name_any())
        });

    let caches = Caches {
        apps: app_controller.store(),
        services,
        profiles,
        redeployments: redeployment_controller.store(),
        hooks,
    };
    let reporter = Reporter { controller: "redeploy-operator".into(), instance: std::env::var("POD_NAME").ok() };
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        settings: config.settings.clone(),
        caches,
        metrics: metrics.clone(),
    });

    let ready = Arc::new(AtomicBool::new(false));
    {
        let (caches, ready) = (context.caches.clone(), ready.clone());
        background.spawn(async move {
            if caches.wait_synced().await.is_ok() {
                ready.store(true, Ordering::Release);
                tracing::info!("caches synced; ready");
            }
        });
    }

    tasks.spawn(
        app_controller
            .graceful_shutdown_on(stopped_sync(&stop, &mut background))
            .run(app::reconcile, reconcile::error_policy(app::CONTROLLER), context.clone())
            .for_each(|_| async {}),
    );
    tasks.spawn(
        redeployment_controller
            .graceful_shutdown_on(stopped_sync(&stop, &mut background))
            .run(redeployment::reconcile, reconcile::error_policy(redeployment::CONTROLLER), context.clone())
            .for_each(|_| async {}),
    );
    tasks.spawn(
        service_controller
            .graceful_shutdown_on(stopped_sync(&stop, &mut background))
            .run(service::reconcile, reconcile::error_policy(service::CONTROLLER), context.clone())
            .for_each(|_| async {}),
    );

    let hook_listener = TcpListener::bind(config.hook_addr).await?;
    let admin_listener = TcpListener::bind(config.admin_addr).await?;
    let (hook_addr, admin_addr) = (hook_listener.local_addr()?, admin_listener.local_addr()?);
    let hook_state = Arc::new(HookState::new(context.clone(), config.limits.clone()));
    tasks.spawn(serve(hook_listener, hook_router(hook_state), config.header_timeout, stopped(&stop)));
    let admin = AdminState { metrics, ready: ready.clone() };
    tasks.spawn(serve(admin_listener, admin_router(admin), config.header_timeout, stopped(&stop)));
    tracing::info!(%hook_addr, %admin_addr, "serving");
    Ok(Running { hook_addr, admin_addr, context, ready, stop, tasks, background })
}
