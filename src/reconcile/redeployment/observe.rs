//! *Observe*: every read one pass of the Redeployment reconciler needs, into
//! one plain value. Nothing here decides what happens; the caches are read
//! first, and the API server for what they lack (they may not have seen an
//! object created together with the Redeployment yet).

use std::{
    collections::{BTreeMap, HashMap},
    ops::Deref,
    sync::Arc,
};

use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use kube::{
    Api, Resource, ResourceExt,
    api::{ListParams, LogParams},
    runtime::reflector::ObjectRef,
};

use super::decide;
use crate::{
    api::{App, DeploymentProfile, PlanAction, Redeployment, Service, ServicePhase, ServiceResult},
    build,
    cache::{Guarded, Shared},
    context::Context,
    reconcile::{
        Error,
        digest::{self, Resolved},
    },
    workload::{self, Workload},
};

/// What one pass knows of the Redeployment's world.
#[derive(Clone, Debug)]
pub struct Observed {
    /// As read back from the API server (the cache can lag behind our own last status write).
    pub redeployment: Redeployment,
    pub app: Option<App>,
    /// The profile `spec.profile` names.
    pub profile: Option<DeploymentProfile>,
    /// The planned Services that exist, by name, whatever App they belong to.
    pub services: BTreeMap<String, SharedService>,
    /// The workloads of the planned Services still running, by Service name;
    /// a workload that does not exist is absent.
    pub workloads: BTreeMap<String, Arc<Workload>>,
    /// The build Job of each Git-built Service still pending or building, by
    /// Service name: the one its result records, or the one named after
    /// (Redeployment, Service) that an earlier pass may have created.
    pub jobs: BTreeMap<String, ObservedJob>,
    /// The registry's answer for the tags [`decide::digests_wanted`] asked for.
    pub digests: BTreeMap<String, Result<Resolved, String>>,
    /// The other Redeployments of the App, for the supersede/wait gate, as
    /// the cache holds them (a large App's history is megabytes).
    pub others: Shared<Redeployment>,
    /// The default build Job's image.
    pub builder_image: String,
}

/// A valid Service as the cache holds it: shared with the cache, not copied
/// (a large App's pass reads hundreds of them).
#[derive(Clone, Debug)]
pub struct SharedService(Arc<Guarded<Service>>);

impl SharedService {
    /// `None` for an object that is not a valid Service.
    pub fn new(cached: Arc<Guarded<Service>>) -> Option<Self> {
        cached.0.is_ok().then_some(Self(cached))
    }
}

impl From<Service> for SharedService {
    fn from(service: Service) -> Self {
        Self(Arc::new(Guarded(Ok(service))))
    }
}

impl Deref for SharedService {
    type Target = Service;

    fn deref(&self) -> &Service {
        match &self.0.0 {
            Ok(service) => service,
            Err(_) => unreachable!("a SharedService is made of a valid Service only"),
        }
    }
}

/// A build Job as far as a pass cares.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedJob {
    pub name: String,
    /// Whether its controller ownerReference names this Redeployment.
    pub owned: bool,
    pub state: JobState,
}

#[derive(Clone, Debug, PartialEq)]
pub enum JobState {
    Running,
    /// The first container's termination message of its own pods.
    Complete {
        termination_message: Option<String>,
    },
    /// The Job's `Failed` condition and the last lines of its pod's log (or
    /// the termination message when the log is empty).
    Failed {
        reason: String,
        message: String,
        log_tail: String,
    },
}

/// Reads what a pass over `redeployment` (as read back from the API server) needs.
pub async fn observe(redeployment: Redeployment, context: &Context) -> Result<Observed, Error> {
    let namespace = redeployment.namespace().unwrap_or_default();
    let app_name = redeployment.spec.app.clone();
    let app = context.caches.app(&namespace, &app_name);
    let mut observed = Observed::new(redeployment, app, &context.settings.builder_image);
    if observed.redeployment.is_finished() {
        // A finished Redeployment at most tells GitHub: the App is all it needs.
        return Ok(observed);
    }
    let client = &context.client;
    if observed.app.is_none() {
        observed.app = Api::<App>::namespaced(client.clone(), &namespace).get_opt(&app_name).await?;
    }
    if let Some(name) = observed.redeployment.spec.profile.clone() {
        let cached = context.caches.profiles_of(&namespace, &app_name).into_iter().find(|p| p.name_any() == name);
        observed.profile = match cached {
            Some(profile) => Some(profile),
            None => Api::<DeploymentProfile>::namespaced(client.clone(), &namespace).get_opt(&name).await?,
        };
    }
    observed.others = context.caches.redeployments_of(&namespace, &app_name);

    // One lookup per planned Service: a pass over 500 would otherwise scan 500
    // results for each. Borrowed: a 500-Service status is large.
    let recorded = observed.redeployment.status.as_ref().map(|status| status.services.as_slice()).unwrap_or_default();
    let mut results: HashMap<&str, &ServiceResult> = HashMap::with_capacity(recorded.len());
    for result in recorded {
        results.entry(result.service.as_str()).or_insert(result);
    }
    let phase_of = |service: &str| results.get(service).map(|r| r.phase);
    let unfinished: Vec<_> = observed
        .redeployment
        .spec
        .plan
        .iter()
        .filter(|p| !phase_of(&p.service).is_some_and(ServicePhase::is_finished))
        .cloned()
        .collect();
    let services = Api::<Service>::namespaced(client.clone(), &namespace);
    for planned in &unfinished {
        let cached = context.caches.services.get(&ObjectRef::new(&planned.service).within(&namespace));
        let service = match cached.and_then(SharedService::new) {
            Some(service) => Some(service),
            None => services.get_opt(&planned.service).await?.map(SharedService::from),
        };
        let Some(service) = service else { continue };
        let target = &service.spec.target;
        let workload = match context.caches.workloads.get(target.kind, &namespace, &target.name) {
            Some(workload) => Some(workload),
            None => workload::get(client, &namespace, target).await?.map(Arc::new),
        };
        if let Some(workload) = workload {
            observed.workloads.insert(planned.service.clone(), workload);
        }
        let phase = phase_of(&planned.service).unwrap_or_default();
        if planned.action == PlanAction::Build && matches!(phase, ServicePhase::Pending | ServicePhase::Building) {
            let recorded = results.get(planned.service.as_str()).and_then(|r| r.build_job.clone());
            let name = recorded.unwrap_or_else(|| build::job_name(&observed.redeployment.name_any(), &planned.service));
            // Before the build starts, a Job the cache does not hold is not
            // read: if an earlier pass made it, creating it again answers 409,
            // which execute takes as that Job.
            let must_exist = phase == ServicePhase::Building;
            if let Some(job) = observe_job(context, &namespace, &observed.redeployment, &name, must_exist).await? {
                observed.jobs.insert(planned.service.clone(), job);
            }
        }
        observed.services.insert(planned.service.clone(), service);
    }

    for service in decide::digests_wanted(&observed) {
        let Some(image) = observed.services.get(&service).and_then(|s| s.spec.image.clone()) else { continue };
        let resolved =
            digest::resolve(client, &context.http, &namespace, &image, &context.settings.insecure_registries).await;
        observed.digests.insert(service, resolved);
    }
    Ok(observed)
}

async fn observe_job(
    context: &Context,
    namespace: &str,
    redeployment: &Redeployment,
    name: &str,
    must_exist: bool,
) -> Result<Option<ObservedJob>, Error> {
    // The watched copy when there is one; one not watched yet (just made by
    // an earlier pass) is read when its absence would fail the build.
    let cached = context.caches.jobs.get(&ObjectRef::new(name).within(namespace)).map(|job| (*job).clone());
    let job = match cached {
        Some(job) => job,
        None if !must_exist => return Ok(None),
        None => match Api::<Job>::namespaced(context.client.clone(), namespace).get_opt(name).await? {
            Some(job) => job,
            None => return Ok(None),
        },
    };
    let owned = controlled_by(&job, redeployment.meta().uid.as_deref());
    let conditions = job.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let finished = |kind: &str| conditions.iter().find(|c| c.type_ == kind && c.status == "True");
    let state = if !owned {
        JobState::Running
    } else if finished("Complete").is_some() {
        let pods = job_pods(context, namespace, &job).await?;
        JobState::Complete { termination_message: termination_message(&pods) }
    } else if let Some(failed) = finished("Failed") {
        let pods = job_pods(context, namespace, &job).await.unwrap_or_default();
        JobState::Failed {
            reason: failed.reason.clone().unwrap_or_default(),
            message: failed.message.clone().unwrap_or_default(),
            log_tail: log_tail(context, namespace, &pods).await,
        }
    } else {
        JobState::Running
    };
    Ok(Some(ObservedJob { name: name.to_string(), owned, state }))
}

/// Whether `object`'s controller ownerReference names the object with `uid`.
fn controlled_by(object: &impl Resource, uid: Option<&str>) -> bool {
    let controller = object.meta().owner_references.iter().flatten().find(|o| o.controller == Some(true));
    uid.is_some() && controller.map(|o| o.uid.as_str()) == uid
}

/// The build Job's own pods: those with its `job-name` label that the Job
/// controls (anyone who may create pods in the namespace can set a label).
async fn job_pods(context: &Context, namespace: &str, job: &Job) -> Result<Vec<Pod>, Error> {
    let pods = Api::<Pod>::namespaced(context.client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("job-name={}", job.name_any())))
        .await?;
    let uid = job.meta().uid.as_deref();
    Ok(pods.items.into_iter().filter(|pod| controlled_by(pod, uid)).collect())
}

/// The first container's termination message of the build Job's pod.
fn termination_message(pods: &[Pod]) -> Option<String> {
    pods.iter().find_map(|pod| {
        let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
        let terminated = statuses.first()?.state.as_ref()?.terminated.as_ref()?;
        terminated.message.clone().filter(|m| !m.trim().is_empty())
    })
}

/// The last lines of the failed build's log, or its termination message.
async fn log_tail(context: &Context, namespace: &str, pods: &[Pod]) -> String {
    let Some(pod) = pods.last() else { return String::new() };
    let params = LogParams { tail_lines: Some(10), ..Default::default() };
    let api = Api::<Pod>::namespaced(context.client.clone(), namespace);
    match api.logs(&pod.name_any(), &params).await {
        Ok(logs) if !logs.trim().is_empty() => logs,
        _ => termination_message(std::slice::from_ref(pod)).unwrap_or_default(),
    }
}

/// What canceling a deleted Redeployment needs: itself and its App (for GitHub).
pub fn observe_deleted(redeployment: Redeployment, context: &Context) -> Observed {
    let app = context.caches.app(&redeployment.namespace().unwrap_or_default(), &redeployment.spec.app);
    Observed::new(redeployment, app, &context.settings.builder_image)
}

impl Observed {
    /// A Redeployment and its App, with nothing else observed yet.
    pub fn new(redeployment: Redeployment, app: Option<App>, builder_image: &str) -> Self {
        Self {
            redeployment,
            app,
            profile: None,
            services: BTreeMap::new(),
            workloads: BTreeMap::new(),
            jobs: BTreeMap::new(),
            digests: BTreeMap::new(),
            others: Shared::default(),
            builder_image: builder_image.to_string(),
        }
    }
}
