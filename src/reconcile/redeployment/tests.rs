//! Table tests of [`decide`]: one row per situation a pass can find, with the
//! concrete status and effects it must decide. Effects are shown as one line
//! each (see [`line`]), so a row reads as what the pass does.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentCondition, DeploymentSpec, DeploymentStatus},
        core::v1::{Container, PodSpec, PodTemplateSpec},
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time},
    jiff::{SignedDuration, Timestamp},
};
use kube::{ResourceExt, runtime::events::EventType};
use serde_json::json;

use super::{
    decide::{
        Decision, Effect, decide, decide_cancel, digests_wanted, may_wait, only_messages_differ, overall_phase,
        plan_refusal,
    },
    observe::{JobState, Observed, ObservedJob},
};
use crate::{
    api::{
        App, BuildPolicy, BuiltImage, DeploymentProfile, DeploymentProfileSpec, Phase, PlannedService,
        PreviousTemplate, Redeployment, RedeploymentSpec, RedeploymentStatus, Service, ServicePhase, ServiceResult,
        ServiceStatus, Strategy, conditions,
    },
    build,
    plan::tests::{build, pin, restart},
    reconcile::digest::Resolved,
    workload::{PREVIOUS_ANNOTATION, REDEPLOYMENT_ANNOTATION, RESTARTED_AT_ANNOTATION, WorkloadObject},
};

// ---- builders ----

const NS: &str = "shop-ns";
const RD: &str = "shop-1";
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const OLD_SHA: &str = "fedcba9876543210fedcba9876543210fedcba98";

/// When the Redeployment was created; a pass runs [`NOW`] seconds later.
fn t0() -> Timestamp {
    "2026-12-01T10:00:00Z".parse().expect("a timestamp")
}

fn at(seconds: i64) -> Timestamp {
    t0() + SignedDuration::from_secs(seconds)
}

const NOW: i64 = 10;
const STAMP: &str = "2026-12-01T10:00:00Z";

fn app() -> App {
    serde_json::from_value(json!({
        "apiVersion": "redeploy.dev/v1alpha1", "kind": "App",
        "metadata": { "name": "shop", "namespace": NS, "uid": "uid-app" },
        "spec": { "environment": "production" },
    }))
    .expect("an App")
}

fn github_app() -> App {
    let mut app = app();
    app.spec.github = Some(
        serde_json::from_value(
            json!({ "repository": "https://github.com/o/r", "tokenSecretRef": { "name": "gh", "key": "token" } }),
        )
        .expect("a GitHub spec"),
    );
    app
}

fn git_svc(name: &str) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "redeploy.dev/v1alpha1", "kind": "Service",
        "metadata": { "name": name, "namespace": NS, "resourceVersion": "11" },
        "spec": {
            "app": "shop", "target": { "name": name },
            "git": { "repository": "https://github.com/o/r" },
            "build": { "image": format!("registry.example.com/{name}") },
        },
    }))
    .expect("a Git-built Service")
}

fn img_svc(name: &str, resolve_digest: bool) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "redeploy.dev/v1alpha1", "kind": "Service",
        "metadata": { "name": name, "namespace": NS, "resourceVersion": "12" },
        "spec": {
            "app": "shop", "target": { "name": name },
            "image": { "reference": "registry.example.com/worker:stable", "resolveDigest": resolve_digest },
        },
    }))
    .expect("an image-based Service")
}

fn with_builds(mut service: Service, builds: &[&str]) -> Service {
    let builds = builds
        .iter()
        .map(|commit| BuiltImage { commit: commit.to_string(), image: image_of(&service, commit), digest: None })
        .collect();
    service.status = Some(ServiceStatus { builds, ..Default::default() });
    service
}

/// The digest builds report.
fn digest() -> String {
    format!("sha256:{}", "a".repeat(64))
}

fn image_of(service: &Service, commit: &str) -> String {
    build::image_for(service, commit)
}

fn redeployment_named(name: &str, received: Timestamp, plan: Vec<PlannedService>) -> Redeployment {
    let mut redeployment = Redeployment::new(name, RedeploymentSpec { app: "shop".into(), plan, ..Default::default() });
    redeployment.metadata.namespace = Some(NS.into());
    redeployment.metadata.uid = Some(format!("uid-{name}"));
    redeployment.metadata.generation = Some(1);
    redeployment.metadata.creation_timestamp = Some(Time(received));
    redeployment.spec.trigger.received_at = Some(MicroTime(received));
    redeployment
}

fn redeployment(plan: Vec<PlannedService>) -> Redeployment {
    redeployment_named(RD, t0(), plan)
}

/// The Redeployment with its Services' results as an earlier pass wrote them.
fn with_results(mut redeployment: Redeployment, results: Vec<ServiceResult>) -> Redeployment {
    let phase = overall_phase(&results, false);
    redeployment.status = Some(RedeploymentStatus {
        phase: Some(phase),
        services: results,
        started_at: Some(Time(t0())),
        ..Default::default()
    });
    redeployment
}

fn result(service: &str, phase: ServicePhase) -> ServiceResult {
    ServiceResult { service: service.into(), phase, started_at: Some(Time(t0())), ..Default::default() }
}

fn building(service: &str) -> ServiceResult {
    ServiceResult {
        build_job: Some(build::job_name(RD, service)),
        git_ref: Some(SHA.into()),
        ..result(service, ServicePhase::Building)
    }
}

fn deploying(service: &str, image: &str, previous: &str) -> ServiceResult {
    ServiceResult {
        image: Some(image.into()),
        rollout_generation: Some(5),
        previous: Some(PreviousTemplate { image: previous.into(), restarted_at: None }),
        ..result(service, ServicePhase::Deploying)
    }
}

/// A Deployment as the workload cache keeps it.
struct Workload {
    image: String,
    generation: i64,
    observed: i64,
    rolled_out: bool,
    deadline_exceeded: bool,
    redeployment: Option<String>,
    restarted_at: Option<String>,
    previous: Option<PreviousTemplate>,
}

fn workload(image: &str) -> Workload {
    Workload {
        image: image.into(),
        generation: 4,
        observed: 4,
        rolled_out: true,
        deadline_exceeded: false,
        redeployment: None,
        restarted_at: None,
        previous: None,
    }
}

impl Workload {
    /// As this Redeployment's rollout left it: generation 5, not observed yet.
    fn patched_by_us(mut self, previous: &str) -> Self {
        self.redeployment = Some(RD.into());
        self.generation = 5;
        self.observed = 4;
        self.previous = Some(PreviousTemplate { image: previous.into(), restarted_at: None });
        self
    }

    fn at(mut self, generation: i64, rolled_out: bool) -> Self {
        (self.generation, self.observed, self.rolled_out) = (generation, generation, rolled_out);
        self
    }

    fn summary(self) -> crate::workload::Workload {
        let mut template_annotations = BTreeMap::new();
        if let Some(r) = self.redeployment {
            template_annotations.insert(REDEPLOYMENT_ANNOTATION.to_string(), r);
        }
        if let Some(r) = self.restarted_at {
            template_annotations.insert(RESTARTED_AT_ANNOTATION.to_string(), r);
        }
        let annotations = self.previous.map(|p| {
            BTreeMap::from([(PREVIOUS_ANNOTATION.to_string(), serde_json::to_string(&p).unwrap_or_default())])
        });
        let progressing = DeploymentCondition {
            type_: Some("Progressing".into()),
            reason: Some("ProgressDeadlineExceeded".into()),
            message: Some("ReplicaSet has timed out progressing".into()),
            ..Default::default()
        };
        let ready = if self.rolled_out { 1 } else { 0 };
        Deployment {
            metadata: ObjectMeta {
                generation: Some(self.generation),
                resource_version: Some("7".into()),
                annotations,
                ..Default::default()
            },
            spec: DeploymentSpec {
                replicas: Some(1),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta { annotations: Some(template_annotations), ..Default::default() }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "main".into(),
                            image: Some(self.image),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                },
                ..Default::default()
            },
            status: Some(DeploymentStatus {
                observed_generation: Some(self.observed),
                replicas: Some(1),
                updated_replicas: Some(ready),
                available_replicas: Some(ready),
                conditions: self.deadline_exceeded.then(|| vec![progressing]),
                ..Default::default()
            }),
        }
        .summary()
    }
}

fn profile(strategy: Strategy, build: BuildPolicy, auto_rollback: bool) -> DeploymentProfile {
    let mut spec = DeploymentProfileSpec { app: "shop".into(), strategy, build, ..Default::default() };
    spec.rollout.auto_rollback = auto_rollback;
    spec.rollout.timeout_seconds = 600;
    DeploymentProfile::new("quick", spec)
}

fn job(service: &str, state: JobState) -> ObservedJob {
    ObservedJob { name: build::job_name(RD, service), owned: true, state }
}

fn reported(service: &Service, commit: &str) -> JobState {
    let message = json!({ "commit": commit, "image": image_of(service, commit), "digest": digest() }).to_string();
    JobState::Complete { termination_message: Some(message) }
}

/// What a pass observed: the Redeployment, the App, and the Services with
/// their workloads (`None`: the workload does not exist).
fn observed(redeployment: Redeployment, services: Vec<(Service, Option<Workload>)>) -> Observed {
    let mut observed = Observed::new(redeployment, Some(app()), "buildkit@sha256:00");
    for (service, workload) in services {
        let name = service.name_any();
        if let Some(workload) = workload {
            observed.workloads.insert(name.clone(), Arc::new(workload.summary()));
        }
        observed.services.insert(name, service.into());
    }
    observed
}

fn with_profile(mut observed: Observed, profile: DeploymentProfile) -> Observed {
    observed.redeployment.spec.profile = Some(profile.name_any());
    observed.profile = Some(profile);
    observed
}

fn with_job(mut observed: Observed, service: &str, job: ObservedJob) -> Observed {
    observed.jobs.insert(service.into(), job);
    observed
}

// ---- effects, one line each ----

fn line(effect: &Effect) -> String {
    match effect {
        Effect::CreateJob { service, job } => format!("create Job {} for {service}", job.name_any()),
        Effect::DeleteJob { name } => format!("delete Job {name}"),
        Effect::PatchWorkload { service, patch, .. } => {
            let template = &patch["spec"]["template"];
            let annotations = &template["metadata"]["annotations"];
            let mut parts = vec![format!("patch {service}")];
            if let Some(image) = template["spec"]["containers"][0]["image"].as_str() {
                parts.push(format!("image={image}"));
            }
            if let Some(stamp) = annotations[RESTARTED_AT_ANNOTATION].as_str() {
                parts.push(format!("restartedAt={stamp}"));
            }
            parts.push(format!("by={}", annotations[REDEPLOYMENT_ANNOTATION].as_str().unwrap_or("-")));
            if let Some(previous) = patch["metadata"]["annotations"][PREVIOUS_ANNOTATION].as_str() {
                parts.push(format!("previous={previous}"));
            }
            parts.push(format!("if-version={}", patch["metadata"]["resourceVersion"].as_str().unwrap_or("-")));
            parts.join(" ")
        }
        Effect::RollBack { service, patch, .. } => format!(
            "roll back {service} to {}",
            patch["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap_or("-")
        ),
        Effect::PublishEvent { type_, reason, note } => {
            let type_ = if *type_ == EventType::Warning { "Warning" } else { "Normal" };
            format!("{type_} {reason}: {note}")
        }
        Effect::ReportGitHubStatus { deployment, state, description } => {
            format!("GitHub deployment {deployment}: {state} ({description})")
        }
    }
}

fn lines(decision: &Decision) -> Vec<String> {
    decision.effects.iter().map(line).collect()
}

fn phases(status: &RedeploymentStatus) -> Vec<(String, ServicePhase)> {
    status.services.iter().map(|r| (r.service.clone(), r.phase)).collect()
}

fn service_result<'a>(decision: &'a Decision, service: &str) -> &'a ServiceResult {
    decision.status.services.iter().find(|r| r.service == service).expect("a result for the Service")
}

struct Row {
    case: &'static str,
    observed: Observed,
    phase: Phase,
    services: Vec<(&'static str, ServicePhase)>,
    effects: Vec<String>,
    requeue: Option<Duration>,
}

fn check(rows: Vec<Row>) {
    for row in rows {
        let decision = decide(&row.observed, at(NOW));
        let case = row.case;
        assert_eq!(decision.status.phase, Some(row.phase), "{case}: {:#?}", decision.status);
        let expected: Vec<(String, ServicePhase)> = row.services.iter().map(|(s, p)| (s.to_string(), *p)).collect();
        assert_eq!(phases(&decision.status), expected, "{case}: {:#?}", decision.status);
        assert_eq!(lines(&decision), row.effects, "{case}");
        assert_eq!(decision.requeue, row.requeue, "{case}");
    }
}

fn s(text: &str) -> String {
    text.to_string()
}

const NGINX: &str = "registry.example.com/worker:1";
const PINNED: &str = "registry.example.com/worker:stable@sha256:bb";

// ---- the table ----

#[test]
fn each_build_policy_builds_reuses_or_deploys_the_last_image() {
    use ServicePhase::*;
    let web = || git_svc("web");
    let web_image = image_of(&web(), SHA);
    let old_image = image_of(&web(), OLD_SHA);
    let job = build::job_name(RD, "web");
    let plan = || redeployment(vec![build("web", Some(SHA))]);
    let built_before = || with_builds(web(), &[SHA]);
    let create = vec![format!("create Job {job} for web")];
    let deploy = |image: &str| {
        vec![format!("patch web image={image} by=shop-1 previous={{\"image\":\"{old_image}\"}} if-version=7")]
    };
    let policy = |build| profile(Strategy::Parallel, build, false);
    // An older Redeployment, finished, that built `commit`: the Service's
    // reconciler may not have listed that build in the Service's status yet.
    let with_older_build = |mut observed: Observed, commit: &str| {
        let built = BuiltImage { commit: commit.into(), image: image_of(&web(), commit), digest: Some(digest()) };
        let result = ServiceResult { built: Some(built), ..result("web", Succeeded) };
        let older = redeployment_named("shop-0", at(-60), vec![build("web", Some(commit))]);
        observed.others = vec![with_results(older, vec![result])].into();
        observed
    };
    check(vec![
        Row {
            case: "ifMissing reuses what an older Redeployment built, before the Service's status lists it",
            observed: with_older_build(observed(plan(), vec![(web(), Some(workload(&old_image)))]), SHA),
            phase: Phase::Deploying,
            services: vec![("web", Deploying)],
            effects: deploy(&web_image),
            requeue: Some(Duration::from_secs(5)),
        },
        Row {
            case: "never deploys what an older Redeployment built last, newer than the Service's status lists",
            observed: with_profile(
                with_older_build(
                    observed(plan(), vec![(with_builds(web(), &[OLD_SHA]), Some(workload(&old_image)))]),
                    SHA,
                ),
                policy(BuildPolicy::Never),
            ),
            phase: Phase::Deploying,
            services: vec![("web", Deploying)],
            effects: deploy(&web_image),
            requeue: Some(Duration::from_secs(5)),
        },
        Row {
            case: "always builds, though the commit was built before",
            observed: with_profile(
                observed(plan(), vec![(built_before(), Some(workload(&old_image)))]),
                policy(BuildPolicy::Always),
            ),
            phase: Phase::Building,
            services: vec![("web", Building)],
            effects: create.clone(),
            requeue: Some(Duration::from_secs(30)),
        },
        Row {
            case: "ifMissing (the default) reuses the image built for the commit",
            observed: observed(plan(), vec![(built_before(), Some(workload(&old_image)))]),
            phase: Phase::Deploying,
            services: vec![("web", Deploying)],
            effects: deploy(&web_image),
            requeue: Some(Duration::from_secs(5)),
        },
        Row {
            case: "ifMissing builds a commit never built",
            observed: observed(plan(), vec![(with_builds(web(), &[OLD_SHA]), Some(workload(&old_image)))]),
            phase: Phase::Building,
            services: vec![("web", Building)],
            effects: create,
            requeue: Some(Duration::from_secs(30)),
        },
        Row {
            case: "never deploys the last image built",
            observed: with_profile(
                observed(plan(), vec![(with_builds(web(), &[OLD_SHA]), Some(workload("registry.example.com/web:x")))]),
                policy(BuildPolicy::Never),
            ),
            phase: Phase::Deploying,
            services: vec![("web", Deploying)],
            effects: vec![format!(
                "patch web image={old_image} by=shop-1 previous={{\"image\":\"registry.example.com/web:x\"}} if-version=7"
            )],
            requeue: Some(Duration::from_secs(5)),
        },
        Row {
            case: "never fails when nothing was ever built",
            observed: with_profile(
                observed(plan(), vec![(web(), Some(workload(&old_image)))]),
                policy(BuildPolicy::Never),
            ),
            phase: Phase::Failed,
            services: vec![("web", Failed)],
            effects: vec![s(
                "Warning RedeploymentFailed: Redeployment shop-1: web: Failed (build policy never, but no image was ever built for this Service)",
            )],
            requeue: None,
        },
    ]);
}

#[test]
fn restarts_and_digest_pins_roll_out_or_skip() {
    use ServicePhase::*;
    let worker = || img_svc("worker", false);
    let pinned = || img_svc("worker", true);
    let resolved = Resolved { digest: "sha256:bb".into(), pinned: PINNED.into() };
    let with_digest = |mut o: Observed, answer: Result<Resolved, String>| {
        o.digests.insert("worker".into(), answer);
        o
    };
    check(vec![
        Row {
            case: "a restart stamps the template with the Redeployment's creation time",
            observed: observed(redeployment(vec![restart("worker")]), vec![(worker(), Some(workload(NGINX)))]),
            phase: Phase::Deploying,
            services: vec![("worker", Deploying)],
            effects: vec![format!(
                "patch worker restartedAt={STAMP} by=shop-1 previous={{\"image\":\"{NGINX}\"}} if-version=7"
            )],
            requeue: Some(Duration::from_secs(5)),
        },
        Row {
            case: "a restart of a workload that does not exist fails",
            observed: observed(redeployment(vec![restart("worker")]), vec![(worker(), None)]),
            phase: Phase::Failed,
            services: vec![("worker", Failed)],
            effects: vec![s(
                "Warning RedeploymentFailed: Redeployment shop-1: worker: Failed (Deployment shop-ns/worker does not exist)",
            )],
            requeue: None,
        },
        Row {
            case: "a pin waits for the registry's answer, observed next",
            observed: observed(redeployment(vec![pin("worker")]), vec![(pinned(), Some(workload(NGINX)))]),
            phase: Phase::Pending,
            services: vec![("worker", Pending)],
            effects: vec![],
            requeue: Some(Duration::ZERO),
        },
        Row {
            case: "a pin rolls out a new digest",
            observed: with_digest(
                observed(redeployment(vec![pin("worker")]), vec![(pinned(), Some(workload(NGINX)))]),
                Ok(resolved.clone()),
            ),
            phase: Phase::Deploying,
            services: vec![("worker", Deploying)],
            effects: vec![format!(
                "patch worker image={PINNED} by=shop-1 previous={{\"image\":\"{NGINX}\"}} if-version=7"
            )],
            requeue: Some(Duration::from_secs(5)),
        },
        Row {
            case: "a pin of the digest already running is skipped",
            observed: with_digest(
                observed(redeployment(vec![pin("worker")]), vec![(pinned(), Some(workload(PINNED)))]),
                Ok(resolved),
            ),
            phase: Phase::Succeeded,
            services: vec![("worker", Skipped)],
            effects: vec![s(
                "Normal RedeploymentSucceeded: Redeployment shop-1: worker: Skipped (main is already running digest sha256:bb)",
            )],
            requeue: None,
        },
        Row {
            case: "a registry error fails the pin",
            observed: with_digest(
                observed(redeployment(vec![pin("worker")]), vec![(pinned(), Some(workload(NGINX)))]),
                Err("registry.example.com answered 401".into()),
            ),
            phase: Phase::Failed,
            services: vec![("worker", Failed)],
            effects: vec![s(
                "Warning RedeploymentFailed: Redeployment shop-1: worker: Failed (registry.example.com answered 401)",
            )],
            requeue: None,
        },
    ]);
}

#[test]
fn serial_goes_one_at_a_time_and_stops_at_the_first_failure_parallel_starts_all() {
    use ServicePhase::*;
    let (a, b) = (|| img_svc("a", false), || img_svc("b", false));
    let plan = || redeployment(vec![restart("a"), restart("b")]);
    let serial = profile(Strategy::Serial, BuildPolicy::IfMissing, false);
    let a_rolling = ServiceResult { rollout_generation: Some(5), image: Some(NGINX.into()), ..result("a", Deploying) };
    let a_failed = ServiceResult { message: Some("it broke".into()), ..result("a", Failed) };
    check(vec![
        Row {
            case: "serial starts the first only",
            observed: with_profile(
                observed(plan(), vec![(a(), Some(workload(NGINX))), (b(), Some(workload(NGINX)))]),
                serial.clone(),
            ),
            phase: Phase::Deploying,
            services: vec![("a", Deploying), ("b", Pending)],
            effects: vec![format!(
                "patch a restartedAt={STAMP} by=shop-1 previous={{\"image\":\"{NGINX}\"}} if-version=7"
            )],
            requeue: Some(Duration::from_secs(5)),
        },
        Row {
            case: "serial waits while the first rolls out",
            observed: with_profile(
                observed(
                    with_results(plan(), vec![a_rolling, result("b", Pending)]),
                    vec![(a(), Some(workload(NGINX).at(5, false))), (b(), Some(workload(NGINX)))],
                ),
                serial.clone(),
            ),
            phase: Phase::Deploying,
            services: vec![("a", Deploying), ("b", Pending)],
            effects: vec![],
            // Never longer than 5 minutes between passes; the workload's events wake it sooner.
            requeue: Some(Duration::from_secs(300)),
        },
        Row {
            case: "serial cancels what follows a failure",
            observed: with_profile(
                observed(
                    with_results(plan(), vec![a_failed, result("b", Pending)]),
                    vec![(a(), Some(workload(NGINX))), (b(), Some(workload(NGINX)))],
                ),
                serial,
            ),
            phase: Phase::Failed,
            services: vec![("a", Failed), ("b", Canceled)],
            effects: vec![s(
                "Warning RedeploymentFailed: Redeployment shop-1: a: Failed (it broke); b: Canceled (not started: a failed before it (strategy serial))",
            )],
            requeue: None,
        },
        Row {
            case: "parallel starts every Service, one Event for both",
            observed: observed(plan(), vec![(a(), Some(workload(NGINX))), (b(), Some(workload(NGINX)))]),
            phase: Phase::Deploying,
            services: vec![("a", Deploying), ("b", Deploying)],
            effects: vec![
                format!("patch a restartedAt={STAMP} by=shop-1 previous={{\"image\":\"{NGINX}\"}} if-version=7"),
                format!("patch b restartedAt={STAMP} by=shop-1 previous={{\"image\":\"{NGINX}\"}} if-version=7"),
            ],
            requeue: Some(Duration::from_secs(5)),
        },
    ]);
}

#[test]
fn a_newer_redeployment_supersedes_a_pending_one_and_an_older_running_one_makes_it_wait() {
    use ServicePhase::*;
    let worker = || (img_svc("worker", false), Some(workload(NGINX)));
    let newer = redeployment_named("shop-2", at(5), vec![restart("worker")]);
    let older =
        with_results(redeployment_named("shop-0", at(-5), vec![restart("worker")]), vec![result("worker", Deploying)]);
    let older_pending = with_results(
        redeployment_named("shop-0", at(-5), vec![restart("worker"), restart("other")]),
        vec![result("worker", Pending), result("other", Pending)],
    );
    let with_others = |mut o: Observed, others: Vec<Redeployment>| {
        o.others = others.into();
        o
    };
    let superseded = with_others(observed(redeployment(vec![restart("worker")]), vec![worker()]), vec![newer]);
    let decision = decide(&superseded, at(NOW));
    assert_eq!(decision.status.superseded_by.as_deref(), Some("shop-2"));
    assert_eq!(
        service_result(&decision, "worker").message.as_deref(),
        Some("superseded by the newer Redeployment shop-2")
    );
    check(vec![
        Row {
            case: "superseded by a newer one covering its Services",
            observed: superseded,
            phase: Phase::Superseded,
            services: vec![("worker", Superseded)],
            effects: vec![s(
                "Normal RedeploymentSuperseded: Redeployment shop-1: worker: Superseded (superseded by the newer Redeployment shop-2)",
            )],
            requeue: None,
        },
        Row {
            case: "waits behind an older one rolling out the same Service",
            observed: with_others(observed(redeployment(vec![restart("worker")]), vec![worker()]), vec![older]),
            phase: Phase::Pending,
            services: vec![("worker", Pending)],
            effects: vec![s(
                "Normal RedeploymentPending: Redeployment shop-1: waiting for Redeployment shop-0 to finish with Service worker",
            )],
            requeue: Some(Duration::from_secs(2)),
        },
        Row {
            // It may be starting right now, or have patched the workload
            // before a SIGKILL (tests/faults.rs): rolling out beside it
            // would roll the workload out twice at once.
            case: "an older one not started yet, not covered by this one, holds it too",
            observed: with_others(observed(redeployment(vec![restart("worker")]), vec![worker()]), vec![older_pending]),
            phase: Phase::Pending,
            services: vec![("worker", Pending)],
            effects: vec![s(
                "Normal RedeploymentPending: Redeployment shop-1: waiting for Redeployment shop-0 to finish with Service worker",
            )],
            requeue: Some(Duration::from_secs(2)),
        },
    ]);
    let waiting = with_others(
        observed(redeployment(vec![restart("worker")]), vec![worker()]),
        vec![with_results(
            redeployment_named("shop-0", at(-5), vec![restart("worker")]),
            vec![result("worker", Deploying)],
        )],
    );
    assert_eq!(
        decide(&waiting, at(NOW)).status.message.as_deref(),
        Some("waiting for Redeployment shop-0 to finish with Service worker")
    );
}

#[test]
fn a_build_is_followed_to_its_result() {
    use ServicePhase::*;
    let web = || git_svc("web");
    let old_image = image_of(&web(), OLD_SHA);
    let web_image = image_of(&web(), SHA);
    let job_name = build::job_name(RD, "web");
    let plan = || with_results(redeployment(vec![build("web", Some(SHA))]), vec![building("web")]);
    let failed = JobState::Failed {
        reason: "BackoffLimitExceeded".into(),
        message: "Job has reached the specified backoff limit".into(),
        log_tail: "error: failed to solve: https://user:hunter2@github.com/o/r: not found\n".into(),
    };
    let foreign = JobState::Complete {
        termination_message: Some(json!({ "commit": SHA, "image": format!("evil.example.com/web:{SHA}") }).to_string()),
    };
    let not_ours = ObservedJob { owned: false, ..job("web", JobState::Running) };
    let with = |state: ObservedJob| with_job(observed(plan(), vec![(web(), Some(workload(&old_image)))]), "web", state);
    check(vec![
        Row {
            case: "a running build is polled",
            observed: with(job("web", JobState::Running)),
            phase: Phase::Building,
            services: vec![("web", Building)],
            effects: vec![],
            requeue: Some(Duration::from_secs(30)),
        },
        Row {
            case: "a build that reported its image is recorded in the result and rolled out",
            observed: with(job("web", reported(&web(), SHA))),
            phase: Phase::Deploying,
            services: vec![("web", Deploying)],
            effects: vec![format!(
                "patch web image={web_image} by=shop-1 previous={{\"image\":\"{old_image}\"}} if-version=7"
            )],
            requeue: Some(Duration::from_secs(5)),
        },
        Row {
            case: "a failed build fails with its reason and redacted log lines",
            observed: with(job("web", failed)),
            phase: Phase::Failed,
            services: vec![("web", Failed)],
            effects: vec![
                format!(
                    "Warning BuildFailed: build Job {job_name} failed (BackoffLimitExceeded: Job has reached the specified backoff limit); last log lines:\nerror: failed to solve: https://user:hunter2@github.com/o/r: not found"
                ),
                format!(
                    "Warning RedeploymentFailed: Redeployment shop-1: web: Failed (build Job {job_name} failed (BackoffLimitExceeded: Job has reached the specified backoff limit); last log lines:\nerror: failed to solve: https://***@github.com/o/r: not found)"
                ),
            ],
            requeue: None,
        },
        Row {
            case: "a build reporting another repository's image fails",
            observed: with(job("web", foreign)),
            phase: Phase::Failed,
            services: vec![("web", Failed)],
            effects: {
                let error = format!(
                    "build Job {job_name}: the build reported the image \"evil.example.com/web:{SHA}\", which is not in spec.build.image \"registry.example.com/web\" of Service web: a build only deploys images it pushed to its Service's repository (registry.example.com/web:<commit>)"
                );
                vec![
                    format!("Warning BuildFailed: {error}"),
                    format!("Warning RedeploymentFailed: Redeployment shop-1: web: Failed ({error})"),
                ]
            },
            requeue: None,
        },
        Row {
            case: "a Job of another owner is not trusted",
            observed: with(not_ours),
            phase: Phase::Failed,
            services: vec![("web", Failed)],
            effects: {
                let error = format!(
                    "build Job {job_name} is not this Redeployment's (another controller owns it): it is ignored"
                );
                vec![
                    format!("Warning BuildFailed: {error}"),
                    format!("Warning RedeploymentFailed: Redeployment shop-1: web: Failed ({error})"),
                ]
            },
            requeue: None,
        },
        Row {
            case: "a Job deleted before it finished fails the build",
            observed: observed(plan(), vec![(web(), Some(workload(&old_image)))]),
            phase: Phase::Failed,
            services: vec![("web", Failed)],
            effects: vec![format!(
                "Warning RedeploymentFailed: Redeployment shop-1: web: Failed (build Job {job_name} was deleted before it finished)"
            )],
            requeue: None,
        },
    ]);
    // What the build made is in the status write that moves the Service on.
    let built = decide(&with(job("web", reported(&web(), SHA))), at(NOW));
    let expected = BuiltImage { commit: SHA.into(), image: web_image.clone(), digest: Some(digest()) };
    assert_eq!(service_result(&built, "web").built, Some(expected));
    let running = decide(&with(job("web", JobState::Running)), at(NOW));
    assert_eq!(service_result(&running, "web").built, None, "nothing built yet");
}

#[test]
fn a_rollout_succeeds_times_out_or_fails_and_rolls_back() {
    use ServicePhase::*;
    let web = || git_svc("web");
    let (old_image, web_image) = (image_of(&web(), OLD_SHA), image_of(&web(), SHA));
    let plan =
        || with_results(redeployment(vec![build("web", Some(SHA))]), vec![deploying("web", &web_image, &old_image)]);
    let long_ago = || {
        let mut results = vec![deploying("web", &web_image, &old_image)];
        results[0].started_at = Some(Time(at(NOW - 600)));
        with_results(redeployment(vec![build("web", Some(SHA))]), results)
    };
    let rolling = || workload(&web_image).patched_by_us(&old_image).at(5, false);
    let stuck = || Workload { deadline_exceeded: true, ..rolling() };
    let rollback = || profile(Strategy::Parallel, BuildPolicy::IfMissing, true);
    let built = with_builds(web(), &[SHA]);
    check(vec![
        Row {
            case: "in progress: looked at again by the deadline",
            observed: observed(plan(), vec![(web(), Some(rolling()))]),
            phase: Phase::Deploying,
            services: vec![("web", Deploying)],
            effects: vec![],
            requeue: Some(Duration::from_secs(300)),
        },
        Row {
            case: "rolled out: succeeded (the Service's reconciler records it from the result)",
            observed: observed(
                plan(),
                vec![(built.clone(), Some(workload(&web_image).patched_by_us(&old_image).at(5, true)))],
            ),
            phase: Phase::Succeeded,
            services: vec![("web", Succeeded)],
            effects: vec![s(
                "Normal RedeploymentSucceeded: Redeployment shop-1: web: Succeeded (Deployment shop-ns/web rolled out)",
            )],
            requeue: None,
        },
        Row {
            case: "past the profile's timeout",
            observed: observed(long_ago(), vec![(web(), Some(rolling()))]),
            phase: Phase::Failed,
            services: vec![("web", Failed)],
            effects: vec![
                s(
                    "Warning RolloutFailed: Deployment shop-ns/web failed to roll out (Timeout): not rolled out within 600s: 0 of 1 pods updated, 0 available, 1 in all",
                ),
                s(
                    "Warning RedeploymentFailed: Redeployment shop-1: web: Failed (Deployment shop-ns/web failed to roll out (Timeout): not rolled out within 600s: 0 of 1 pods updated, 0 available, 1 in all)",
                ),
            ],
            requeue: None,
        },
        Row {
            case: "a failed rollout is rolled back under autoRollback",
            observed: with_profile(observed(plan(), vec![(web(), Some(stuck()))]), rollback()),
            phase: Phase::Failed,
            services: vec![("web", Failed)],
            effects: vec![
                format!("roll back web to {old_image}"),
                format!(
                    "Warning RolloutFailed: Deployment shop-ns/web failed to roll out (ProgressDeadlineExceeded): ReplicaSet has timed out progressing; rolled back to {old_image}"
                ),
                format!(
                    "Warning RedeploymentFailed: Redeployment shop-1: web: Failed (Deployment shop-ns/web failed to roll out (ProgressDeadlineExceeded): ReplicaSet has timed out progressing; rolled back to {old_image})"
                ),
            ],
            requeue: None,
        },
        Row {
            case: "without autoRollback it is left as it is",
            observed: observed(plan(), vec![(web(), Some(stuck()))]),
            phase: Phase::Failed,
            services: vec![("web", Failed)],
            effects: vec![
                s(
                    "Warning RolloutFailed: Deployment shop-ns/web failed to roll out (ProgressDeadlineExceeded): ReplicaSet has timed out progressing",
                ),
                s(
                    "Warning RedeploymentFailed: Redeployment shop-1: web: Failed (Deployment shop-ns/web failed to roll out (ProgressDeadlineExceeded): ReplicaSet has timed out progressing)",
                ),
            ],
            requeue: None,
        },
    ]);
    let rolled_back = decide(&with_profile(observed(plan(), vec![(web(), Some(stuck()))]), rollback()), at(NOW));
    assert!(service_result(&rolled_back, "web").rolled_back);
}

#[test]
fn a_pass_after_a_half_done_one_does_not_build_patch_or_record_twice() {
    use ServicePhase::*;
    let web = || git_svc("web");
    let worker = || img_svc("worker", false);
    let (old_image, web_image) = (image_of(&web(), OLD_SHA), image_of(&web(), SHA));
    let job_name = build::job_name(RD, "web");
    // The Job exists, the status still says Pending.
    let pending_build =
        observed(redeployment(vec![build("web", Some(SHA))]), vec![(web(), Some(workload(&old_image)))]);
    let job_made = with_job(pending_build, "web", job("web", JobState::Running));
    // The restart patch was applied, the status still says Pending.
    let mut restarted = workload(NGINX).patched_by_us(NGINX);
    restarted.restarted_at = Some(STAMP.into());
    let restart_patched = observed(redeployment(vec![restart("worker")]), vec![(worker(), Some(restarted))]);
    // The image was patched, the status (and the build in it) still says Building.
    let built_and_patched = with_job(
        observed(
            with_results(redeployment(vec![build("web", Some(SHA))]), vec![building("web")]),
            vec![(web(), Some(workload(&web_image).patched_by_us(&old_image)))],
        ),
        "web",
        job("web", reported(&web(), SHA)),
    );
    // Rolled back, the status still says Deploying.
    let rolled_back = with_profile(
        observed(
            with_results(redeployment(vec![build("web", Some(SHA))]), vec![deploying("web", &web_image, &old_image)]),
            vec![(web(), Some(workload(&old_image).patched_by_us(&old_image).at(6, false)))],
        ),
        profile(Strategy::Parallel, BuildPolicy::IfMissing, true),
    );
    // Rolled out and recorded on the Service, the status still says Deploying.
    let mut recorded = with_builds(web(), &[SHA]);
    if let Some(status) = recorded.status.as_mut() {
        status.deployed_ref = Some(SHA.into());
        status.deployed_image = Some(web_image.clone());
        status.last_redeployment = Some(RD.into());
    }
    let mut deploying_web = deploying("web", &web_image, &old_image);
    deploying_web.git_ref = Some(SHA.into());
    let recorded_deployed = observed(
        with_results(redeployment(vec![build("web", Some(SHA))]), vec![deploying_web]),
        vec![(recorded, Some(workload(&web_image).patched_by_us(&old_image).at(5, true)))],
    );
    check(vec![
        Row {
            case: "Job made, status not written: followed, not made again",
            observed: job_made,
            phase: Phase::Building,
            services: vec![("web", Building)],
            effects: vec![],
            requeue: Some(Duration::from_secs(30)),
        },
        Row {
            case: "workload restarted, status not written: not patched again",
            observed: restart_patched,
            phase: Phase::Deploying,
            services: vec![("worker", Deploying)],
            effects: vec![],
            // Followed from where the rollout is: its own events wake the pass.
            requeue: Some(Duration::from_secs(300)),
        },
        Row {
            case: "built and image patched, status not written: neither again",
            observed: built_and_patched,
            phase: Phase::Deploying,
            services: vec![("web", Deploying)],
            effects: vec![],
            // Followed from where the rollout is: its own events wake the pass.
            requeue: Some(Duration::from_secs(300)),
        },
        Row {
            case: "rolled back, status not written: failed as rolled back, not rolled back again",
            observed: rolled_back,
            phase: Phase::Failed,
            services: vec![("web", Failed)],
            effects: vec![format!(
                "Warning RedeploymentFailed: Redeployment shop-1: web: Failed (Deployment shop-ns/web failed to roll out; rolled back to {old_image})"
            )],
            requeue: None,
        },
        Row {
            case: "deployment recorded, status not written: not recorded again",
            observed: recorded_deployed,
            phase: Phase::Succeeded,
            services: vec![("web", Succeeded)],
            effects: vec![s(
                "Normal RedeploymentSucceeded: Redeployment shop-1: web: Succeeded (Deployment shop-ns/web rolled out)",
            )],
            requeue: None,
        },
    ]);
    // The workload patched by the half-done pass is tracked at the generation it made.
    let mut restarted = workload(NGINX).patched_by_us(NGINX);
    restarted.restarted_at = Some(STAMP.into());
    let decision = decide(&observed(redeployment(vec![restart("worker")]), vec![(worker(), Some(restarted))]), at(NOW));
    assert_eq!(service_result(&decision, "worker").rollout_generation, Some(5));
    assert_eq!(
        service_result(&decision, "worker").previous,
        Some(PreviousTemplate { image: NGINX.into(), restarted_at: None })
    );
    let _ = job_name;
}

#[test]
fn a_missing_app_a_foreign_plan_or_a_late_service_fail_or_wait() {
    use ServicePhase::*;
    let worker = || (img_svc("worker", false), Some(workload(NGINX)));
    let mut no_app = observed(redeployment(vec![restart("worker")]), vec![worker()]);
    no_app.app = None;
    let mut late = redeployment(vec![restart("ghost")]);
    late.metadata.creation_timestamp = Some(Time(at(NOW - 120)));
    check(vec![
        Row {
            case: "the App does not exist",
            observed: no_app,
            phase: Phase::Failed,
            services: vec![("worker", Failed)],
            effects: vec![s(
                "Warning RedeploymentFailed: Redeployment shop-1: worker: Failed (App `shop` does not exist in namespace shop-ns)",
            )],
            requeue: None,
        },
        Row {
            case: "a plan that does not fit its Services runs nothing",
            observed: observed(redeployment(vec![build("worker", None)]), vec![worker()]),
            phase: Phase::Failed,
            services: vec![("worker", Failed)],
            effects: vec![
                s(
                    "Warning PlanRefused: the plan was refused, nothing of it was run: Service `worker` is image-based without resolveDigest: action Build does not apply to it",
                ),
                s(
                    "Warning RedeploymentFailed: Redeployment shop-1: worker: Failed (the plan was refused, nothing of it was run: Service `worker` is image-based without resolveDigest: action Build does not apply to it)",
                ),
            ],
            requeue: None,
        },
        Row {
            case: "a Service not created yet is waited for",
            observed: observed(redeployment(vec![restart("ghost")]), vec![]),
            phase: Phase::Pending,
            services: vec![("ghost", Pending)],
            effects: vec![],
            requeue: Some(Duration::from_secs(2)),
        },
        Row {
            case: "...for a minute",
            observed: observed(late, vec![]),
            phase: Phase::Failed,
            services: vec![("ghost", Failed)],
            effects: vec![s(
                "Warning RedeploymentFailed: Redeployment shop-1: ghost: Failed (Service `ghost` of App `shop` does not exist)",
            )],
            requeue: None,
        },
    ]);
}

#[test]
fn github_hears_each_phase_once_even_after_the_redeployment_finished() {
    let worker = || (img_svc("worker", false), Some(workload(NGINX)));
    let mut finished = with_results(
        redeployment(vec![restart("worker")]),
        vec![ServiceResult { message: Some("done".into()), ..result("worker", ServicePhase::Succeeded) }],
    );
    finished.spec.github_deployment = Some(77);
    if let Some(status) = finished.status.as_mut() {
        status.message = Some("worker: Succeeded (done)".into());
    }
    let mut owed = observed(finished.clone(), vec![worker()]);
    owed.app = Some(github_app());
    let decision = decide(&owed, at(NOW));
    assert_eq!(lines(&decision), vec![s("GitHub deployment 77: success (worker: Succeeded (done))")]);
    assert_eq!(Some(&decision.status), finished.status.as_ref(), "the status is left to execute");
    assert_eq!((decision.requeue, decision.finished), (None, None));

    if let Some(status) = finished.status.as_mut() {
        status.github_state = Some("success".into());
    }
    let mut told = observed(finished.clone(), vec![worker()]);
    told.app = Some(github_app());
    assert_eq!(lines(&decide(&told, at(NOW))), Vec::<String>::new());
    assert!(super::decide::is_done(&finished));

    // Without a token there is nothing to post.
    let mut starting = redeployment(vec![restart("worker")]);
    starting.spec.github_deployment = Some(77);
    let decision = decide(&observed(starting.clone(), vec![worker()]), at(NOW));
    assert!(!lines(&decision).iter().any(|l| l.starts_with("GitHub")), "{:?}", lines(&decision));
    let mut with_token = observed(starting, vec![worker()]);
    with_token.app = Some(github_app());
    let decision = decide(&with_token, at(NOW));
    assert_eq!(lines(&decision).last().map(String::as_str), Some("GitHub deployment 77: in_progress (Deploying)"));
}

#[test]
fn deleting_a_redeployment_cancels_its_builds() {
    let web = || git_svc("web");
    let mut running = with_results(
        redeployment(vec![build("web", Some(SHA)), restart("worker")]),
        vec![building("web"), result("worker", ServicePhase::Succeeded)],
    );
    running.spec.github_deployment = Some(9);
    let mut observed = observed(running, vec![(web(), None)]);
    observed.app = Some(github_app());
    let decision = decide_cancel(&observed, at(NOW));
    assert_eq!(
        lines(&decision),
        vec![
            format!("delete Job {}", build::job_name(RD, "web")),
            s("GitHub deployment 9: inactive (canceled: the Redeployment was deleted)"),
        ]
    );
    assert_eq!(decision.status.phase, Some(Phase::Canceled));
    assert_eq!(
        phases(&decision.status),
        vec![(s("web"), ServicePhase::Canceled), (s("worker"), ServicePhase::Succeeded)]
    );
    assert_eq!(decision.finished, Some(Phase::Canceled));

    let done = with_results(redeployment(vec![restart("worker")]), vec![result("worker", ServicePhase::Succeeded)]);
    let decision = decide_cancel(&super::observe::Observed::new(done.clone(), Some(app()), ""), at(NOW));
    assert_eq!((lines(&decision), decision.finished), (vec![], None));
    assert_eq!(Some(&decision.status), done.status.as_ref());
}

#[test]
fn only_the_digests_a_pass_would_use_are_resolved() {
    let pinned = |name: &str| (img_svc(name, true), Some(workload(NGINX)));
    let plan = || redeployment(vec![pin("a"), pin("b")]);
    assert_eq!(digests_wanted(&observed(plan(), vec![pinned("a"), pinned("b")])), vec![s("a"), s("b")]);
    let serial = profile(Strategy::Serial, BuildPolicy::IfMissing, false);
    assert_eq!(
        digests_wanted(&with_profile(observed(plan(), vec![pinned("a"), pinned("b")]), serial.clone())),
        vec![s("a")]
    );
    let a_done = with_results(plan(), vec![result("a", ServicePhase::Skipped), result("b", ServicePhase::Pending)]);
    assert_eq!(digests_wanted(&with_profile(observed(a_done, vec![pinned("a"), pinned("b")]), serial)), vec![s("b")]);
    let mut waiting = observed(plan(), vec![pinned("a"), pinned("b")]);
    waiting.others = vec![with_results(
        redeployment_named("shop-0", at(-5), vec![pin("a")]),
        vec![result("a", ServicePhase::Deploying)],
    )]
    .into();
    assert_eq!(digests_wanted(&waiting), Vec::<String>::new(), "a Redeployment that waits resolves nothing");
}

#[test]
fn the_status_carries_the_ready_condition_and_redacted_messages() {
    let web = git_svc("web");
    let failed = JobState::Failed {
        reason: "Error".into(),
        message: "x".into(),
        log_tail: "fatal: https://token:s3cret@github.com/o/r".into(),
    };
    let observed = with_job(
        observed(with_results(redeployment(vec![build("web", Some(SHA))]), vec![building("web")]), vec![(web, None)]),
        "web",
        job("web", failed),
    );
    let decision = decide(&observed, at(NOW));
    let status = &decision.status;
    assert!(!format!("{status:?}").contains("s3cret"), "{status:#?}");
    assert_eq!(status.finished_at, Some(Time(at(NOW))));
    assert_eq!(status.observed_generation, Some(1));
    let [ready] = status.conditions.as_slice() else { panic!("one condition: {:?}", status.conditions) };
    assert_eq!((ready.type_.as_str(), ready.status.as_str(), ready.reason.as_str()), ("Ready", "False", "Failed"));
    assert_eq!(ready.last_transition_time, Time(at(NOW)));
    assert_eq!(decision.finished, Some(Phase::Failed));
}

// ---- the pure helpers kept from before the split ----

fn results(phases: &[ServicePhase]) -> Vec<ServiceResult> {
    phases.iter().map(|p| ServiceResult { phase: *p, ..Default::default() }).collect()
}

#[test]
fn a_plan_is_held_against_the_apps_services_and_profile() {
    let mut theirs = img_svc("theirs", false);
    theirs.spec.app = "other".into();
    let services: BTreeMap<String, Service> =
        [git_svc("web"), img_svc("worker", false), img_svc("pinned", true), theirs, git_svc("api")]
            .into_iter()
            .map(|s| (s.name_any(), s))
            .collect();
    let lookup = |name: &str| services.get(name);
    let planner_made = [
        build("web", None),
        restart("worker"),
        pin("pinned"),
        restart("pinned-later"), // not cached yet: left to the step
    ];
    assert_eq!(plan_refusal("shop", &planner_made, lookup, None), None);
    let own = DeploymentProfile::new("quick", DeploymentProfileSpec { app: "shop".into(), ..Default::default() });
    assert_eq!(plan_refusal("shop", &planner_made, lookup, Some(&own)), None);

    for (plan, expected) in [
        (vec![restart("theirs")], "Service `theirs` belongs to App `other`"),
        (vec![build("worker", None)], "`worker` is image-based without resolveDigest: action Build"),
        (vec![restart("web")], "`web` is Git-built: action Restart"),
        (vec![pin("web")], "`web` is Git-built: action PinDigest"),
        (vec![pin("worker")], "action PinDigest does not apply"),
        (vec![build("pinned", None)], "resolveDigest: action Build"),
        (vec![build("web", None), build("web", None)], "`web` is planned more than once"),
    ] {
        let mut plan = plan;
        plan.insert(0, build("api", None)); // a valid entry does not save the plan
        let refused = plan_refusal("shop", &plan, lookup, None).unwrap_or_else(|| panic!("{plan:?} was accepted"));
        assert!(refused.contains(expected), "{refused}");
        assert!(refused.starts_with("the plan was refused, nothing of it was run"), "{refused}");
    }
    let mut foreign = own.clone();
    foreign.spec.app = "other".into();
    let refused = plan_refusal("shop", &planner_made, lookup, Some(&foreign)).expect("refused");
    assert!(refused.contains("spec.profile `quick` belongs to App `other`"), "{refused}");
}

#[test]
fn the_phase_follows_the_services() {
    use ServicePhase::*;
    assert_eq!(overall_phase(&results(&[Pending, Pending]), false), Phase::Pending);
    assert_eq!(overall_phase(&results(&[Building, Deploying]), false), Phase::Building);
    assert_eq!(overall_phase(&results(&[Succeeded, Deploying]), false), Phase::Deploying);
    assert_eq!(overall_phase(&results(&[Succeeded, Pending]), false), Phase::Deploying);
    assert_eq!(overall_phase(&results(&[Succeeded, Skipped]), false), Phase::Succeeded);
    assert_eq!(overall_phase(&results(&[Succeeded, Failed]), false), Phase::Failed);
    assert_eq!(overall_phase(&results(&[Failed, Canceled]), false), Phase::Failed);
    assert_eq!(overall_phase(&results(&[Canceled, Canceled]), false), Phase::Canceled);
    assert_eq!(overall_phase(&results(&[Superseded]), true), Phase::Superseded);
}

#[test]
fn only_a_change_of_messages_may_wait_to_be_written() {
    let deploying = |message: &str| ServiceResult {
        service: "web".into(),
        phase: ServicePhase::Deploying,
        rollout_generation: Some(2),
        message: Some(message.into()),
        ..Default::default()
    };
    let ready = |reason: &str, message: &str| {
        conditions::condition_at(&[], conditions::READY, false, reason, message, Some(1), t0())
    };
    let before = RedeploymentStatus {
        phase: Some(Phase::Deploying),
        services: vec![deploying("waiting for the Deployment controller")],
        conditions: vec![ready("Deploying", "waiting")],
        ..Default::default()
    };
    let mut next = before.clone();
    next.services[0] = deploying("0 of 1 pods updated, 0 available");
    next.message = Some("rolling out".into());
    next.conditions = vec![ready("Deploying", "rolling out")];
    assert!(only_messages_differ(&before, &next), "progress only");
    let mut reason = next.clone();
    reason.conditions = vec![ready("Building", "rolling out")];
    assert!(!only_messages_differ(&before, &reason), "a condition's reason changed");
    let mut more = next.clone();
    more.services.push(deploying("0 of 1 pods updated, 0 available"));
    assert!(!only_messages_differ(&before, &more), "a result was added");
    let mut finished = next.clone();
    finished.services[0].phase = ServicePhase::Succeeded;
    assert!(!only_messages_differ(&before, &finished), "a phase changed");
    let mut recorded = next.clone();
    recorded.services[0].rollout_generation = Some(3);
    assert!(!only_messages_differ(&before, &recorded), "a record changed");
    let mut phase = next;
    phase.phase = Some(Phase::Succeeded);
    assert!(!only_messages_differ(&before, &phase), "the overall phase changed");
}

#[test]
fn only_a_start_the_next_pass_finds_again_may_wait_to_be_written() {
    let worker = || img_svc("worker", false);
    let web = || git_svc("web");
    let old_image = image_of(&web(), OLD_SHA);
    let nothing = RedeploymentStatus::default();
    let first_pass = |observed: Observed| {
        let plan = observed.redeployment.spec.plan.clone();
        (plan, decide(&observed, at(NOW)).status)
    };

    let (plan, restarted) =
        first_pass(observed(redeployment(vec![restart("worker")]), vec![(worker(), Some(workload(NGINX)))]));
    assert_eq!(restarted.phase, Some(Phase::Deploying));
    assert!(may_wait(&plan, &nothing, &restarted), "a restart: its patch names the Redeployment and its stamp");
    let (plan, building) =
        first_pass(observed(redeployment(vec![build("web", Some(SHA))]), vec![(web(), Some(workload(&old_image)))]));
    assert_eq!(building.phase, Some(Phase::Building));
    assert!(may_wait(&plan, &nothing, &building), "a build: its Job is named after the Redeployment");

    let mut pinned =
        observed(redeployment(vec![pin("worker")]), vec![(img_svc("worker", true), Some(workload(NGINX)))]);
    pinned.digests.insert("worker".into(), Ok(Resolved { digest: "sha256:bb".into(), pinned: PINNED.into() }));
    let (plan, pinned) = first_pass(pinned);
    assert_eq!(pinned.phase, Some(Phase::Deploying));
    assert!(!may_wait(&plan, &nothing, &pinned), "a digest resolved again could differ");
    let (plan, reused) = first_pass(observed(
        redeployment(vec![build("web", Some(SHA))]),
        vec![(with_builds(web(), &[SHA]), Some(workload(&old_image)))],
    ));
    assert_eq!(reused.phase, Some(Phase::Deploying));
    assert!(!may_wait(&plan, &nothing, &reused), "an image reused: a newer build could be listed by then");
    let (plan, missing) = first_pass(observed(redeployment(vec![restart("worker")]), vec![(worker(), None)]));
    assert!(!may_wait(&plan, &nothing, &missing), "finished");
    let mut told = restarted.clone();
    told.github_state = Some("in_progress".into());
    assert!(!may_wait(&[restart("worker")], &nothing, &told), "GitHub was told");
    let recorded = RedeploymentStatus { services: vec![result("web", ServicePhase::Building)], ..building.clone() };
    let mut deploying = recorded.clone();
    deploying.services[0].phase = ServicePhase::Deploying;
    assert!(!may_wait(&[build("web", Some(SHA))], &recorded, &deploying), "a recorded start moving on");
    let mut waiting = observed(redeployment(vec![restart("worker")]), vec![(worker(), Some(workload(NGINX)))]);
    let older = redeployment_named("shop-0", at(-5), vec![restart("worker")]);
    waiting.others = vec![with_results(older, vec![result("worker", ServicePhase::Deploying)])].into();
    let (plan, pending) = first_pass(waiting);
    assert_eq!(pending.phase, Some(Phase::Pending));
    assert!(!may_wait(&plan, &nothing, &pending), "waiting: its Event is published once, with the write");
}

#[test]
fn a_start_not_recorded_is_followed_not_superseded_and_dated_when_asked_for() {
    use ServicePhase::*;
    let mut restarted = workload(NGINX).patched_by_us(NGINX).at(5, true);
    restarted.restarted_at = Some(STAMP.into());
    let mut recovered =
        observed(redeployment(vec![restart("worker")]), vec![(img_svc("worker", false), Some(restarted))]);
    // A newer Redeployment of the same Service came while the first pass's write was held back.
    recovered.others = vec![redeployment_named("shop-2", at(5), vec![restart("worker")])].into();
    let decision = decide(&recovered, at(NOW));
    assert_eq!(decision.status.superseded_by, None, "{:#?}", decision.status);
    assert_eq!(phases(&decision.status), vec![(s("worker"), Succeeded)], "followed to the end of its rollout");
    assert_eq!(decision.status.started_at, Some(Time(t0())), "started when asked for, not in this pass");
    assert_eq!(service_result(&decision, "worker").started_at, Some(Time(t0())));
    assert!(lines(&decision).iter().all(|l| !l.starts_with("patch")), "not patched again: {:?}", lines(&decision));
    assert!(digests_wanted(&recovered).is_empty());

    // A build Job made, and finished, before any status was written: what it built is deployed in this pass.
    let web = || git_svc("web");
    let (old_image, web_image) = (image_of(&web(), OLD_SHA), image_of(&web(), SHA));
    let built = with_job(
        observed(redeployment(vec![build("web", Some(SHA))]), vec![(web(), Some(workload(&old_image)))]),
        "web",
        job("web", reported(&web(), SHA)),
    );
    let decision = decide(&built, at(NOW));
    assert_eq!(phases(&decision.status), vec![(s("web"), Deploying)]);
    assert_eq!(
        lines(&decision),
        vec![format!("patch web image={web_image} by=shop-1 previous={{\"image\":\"{old_image}\"}} if-version=7")]
    );
    assert_eq!(service_result(&decision, "web").built.as_ref().map(|b| b.image.as_str()), Some(web_image.as_str()));
    assert!(!may_wait(&built.redeployment.spec.plan, &RedeploymentStatus::default(), &decision.status));

    // Not started: the same newer Redeployment supersedes it, and this pass is its start.
    let mut pending = recovered.clone();
    pending.workloads.insert("worker".into(), Arc::new(workload(NGINX).summary()));
    let decision = decide(&pending, at(NOW));
    assert_eq!(decision.status.superseded_by.as_deref(), Some("shop-2"));
    assert_eq!(decision.status.started_at, Some(Time(at(NOW))));
}
