//! [`desired_status`]: the Service's whole status from the Service, its
//! workload and its App's Redeployments.

use k8s_openapi::{
    api::apps::v1::Deployment,
    apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, MicroTime},
};
use serde_json::json;

use super::*;
use crate::{
    api::{PlanAction, PlannedService, RedeploymentSpec, RedeploymentStatus, SourceType},
    workload::WorkloadObject,
};

/// No Redeployment at all.
const NONE: &[Redeployment] = &[];

fn now() -> Timestamp {
    "2026-12-02T10:00:00Z".parse().unwrap_or_else(|e| panic!("a timestamp: {e}"))
}

fn web() -> Service {
    serde_json::from_value(json!({
        "apiVersion": "redeploy.dev/v1alpha1", "kind": "Service",
        "metadata": { "name": "web", "namespace": "ns", "generation": 3, "resourceVersion": "42" },
        "spec": {
            "app": "shop", "target": { "name": "web", "container": "main" },
            "git": { "repository": "https://github.com/o/r" },
            "build": { "image": "registry.example.com/web" },
        },
    }))
    .unwrap_or_else(|e| panic!("a valid Service: {e}"))
}

fn deployment(container: &str) -> Workload {
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "web", "namespace": "ns" },
        "spec": { "selector": {}, "template": { "spec": { "containers": [{ "name": container, "image": "i" }] } } },
    }))
    .unwrap_or_else(|e| panic!("a valid Deployment: {e}"));
    deployment.summary()
}

fn built(commit: &str, digest: &str) -> BuiltImage {
    BuiltImage {
        commit: commit.into(),
        image: format!("registry.example.com/web:{commit}"),
        digest: Some(format!("sha256:{digest}")),
    }
}

/// A Redeployment of App `app` received `minute` minutes after 10:00, with these results.
fn redeployment(name: &str, app: &str, minute: i64, results: Vec<ServiceResult>) -> Redeployment {
    let plan = results
        .iter()
        .map(|r| PlannedService { service: r.service.clone(), action: PlanAction::Build, git_ref: None })
        .collect();
    let mut redeployment = Redeployment::new(name, RedeploymentSpec { app: app.into(), plan, ..Default::default() });
    redeployment.metadata.namespace = Some("ns".into());
    let received = now() + k8s_openapi::jiff::SignedDuration::from_mins(minute);
    redeployment.spec.trigger.received_at = Some(MicroTime(received));
    redeployment.status = Some(RedeploymentStatus { services: results, ..Default::default() });
    redeployment
}

fn result(service: &str, phase: ServicePhase, built: Option<BuiltImage>) -> ServiceResult {
    let image = built.as_ref().map(|b| b.image.clone());
    let git_ref = built.as_ref().map(|b| b.commit.clone());
    ServiceResult { service: service.into(), phase, built, image, git_ref, ..Default::default() }
}

fn commits(builds: &[BuiltImage]) -> Vec<&str> {
    builds.iter().map(|b| b.commit.as_str()).collect()
}

#[test]
fn the_status_says_the_source_type_and_whether_the_target_runs_the_container() {
    let service = web();
    let status = |workload: Option<&Workload>| desired_status(&service, workload, NONE, now());
    let missing = status(None);
    assert_eq!((missing.type_, missing.observed_generation), (Some(SourceType::Git), Some(3)));
    let reasons = |status: &ServiceStatus| {
        status.conditions.iter().map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone())).collect::<Vec<_>>()
    };
    let condition = |ok: &str, reason: &str| vec![(TARGET_READY.to_string(), ok.to_string(), reason.to_string())];
    assert_eq!(reasons(&missing), condition("False", "TargetNotFound"));
    assert_eq!(reasons(&status(Some(&deployment("main")))), condition("True", "TargetFound"));
    assert_eq!(reasons(&status(Some(&deployment("sidecar")))), condition("False", "ContainerNotFound"));
}

#[test]
fn builds_are_what_redeployments_built_newest_first_then_what_the_status_listed() {
    let mut service = web();
    service.status = Some(ServiceStatus { builds: vec![built("c2", "old"), built("c1", "1")], ..Default::default() });
    let redeployments = [
        redeployment("shop-3", "shop", 3, vec![result("web", ServicePhase::Deploying, Some(built("c3", "3")))]),
        // A rebuild of c2: the newer image replaces the one listed.
        redeployment("shop-2", "shop", 2, vec![result("web", ServicePhase::Succeeded, Some(built("c2", "new")))]),
        // Another Service's build, another App's: not this Service's.
        redeployment("shop-4", "shop", 4, vec![result("worker", ServicePhase::Succeeded, Some(built("w", "w")))]),
        redeployment("blog-5", "blog", 5, vec![result("web", ServicePhase::Succeeded, Some(built("b", "b")))]),
        // Failed after its build: the build is still one.
        redeployment("shop-1", "shop", 1, vec![result("web", ServicePhase::Failed, Some(built("c0", "0")))]),
    ];
    let builds = recorded_builds(&service, &redeployments);
    assert_eq!(commits(&builds), ["c3", "c2", "c0", "c1"]);
    assert_eq!(builds[1].digest.as_deref(), Some("sha256:new"));
    assert_eq!(desired_status(&service, None, &redeployments, now()).builds, builds);

    // Bounded: the oldest go first, whether listed or recorded.
    let many: Vec<Redeployment> = (0..12)
        .map(|i| {
            redeployment(
                &format!("shop-r{i}"),
                "shop",
                10 + i,
                vec![result("web", ServicePhase::Succeeded, Some(built(&format!("n{i}"), "x")))],
            )
        })
        .collect();
    let builds = recorded_builds(&service, &many);
    assert_eq!(builds.len(), KEPT_BUILDS);
    assert_eq!(commits(&builds)[..2], ["n11", "n10"]);
    assert_eq!(commits(&builds)[KEPT_BUILDS - 1], "n2");
}

#[test]
fn the_deployment_is_the_newest_succeeded_rollout_else_what_the_status_said() {
    let mut service = web();
    service.status = Some(ServiceStatus {
        deployed_ref: Some("c0".into()),
        deployed_image: Some("registry.example.com/web:c0".into()),
        last_redeployment: Some("shop-0".into()),
        ..Default::default()
    });
    let deployed = |redeployments: &[Redeployment]| {
        let status = desired_status(&service, None, redeployments, now());
        (status.deployed_ref, status.deployed_image, status.last_redeployment)
    };
    let kept = (Some("c0".to_string()), Some("registry.example.com/web:c0".to_string()), Some("shop-0".to_string()));
    assert_eq!(deployed(&[]), kept, "no Redeployment in the cache: the status is kept");
    let failed = redeployment("shop-9", "shop", 9, vec![result("web", ServicePhase::Failed, Some(built("c9", "9")))]);
    let skipped = redeployment("shop-8", "shop", 8, vec![result("web", ServicePhase::Skipped, None)]);
    let other_app =
        redeployment("blog-7", "blog", 7, vec![result("web", ServicePhase::Succeeded, Some(built("b", "b")))]);
    assert_eq!(deployed(&[failed.clone(), skipped.clone(), other_app.clone()]), kept, "none of them rolled it out");
    let older = redeployment("shop-1", "shop", 1, vec![result("web", ServicePhase::Succeeded, Some(built("c1", "1")))]);
    let newer = redeployment("shop-2", "shop", 2, vec![result("web", ServicePhase::Succeeded, Some(built("c2", "2")))]);
    assert_eq!(
        deployed(&[older, newer, failed, skipped, other_app]),
        (Some("c2".to_string()), Some("registry.example.com/web:c2".to_string()), Some("shop-2".to_string()))
    );
    // A restart deploys no ref: the image it rolled out stands for it.
    let mut restart = result("web", ServicePhase::Succeeded, None);
    restart.image = Some("registry.example.com/web:c1".into());
    let restarted = redeployment("shop-3", "shop", 3, vec![restart]);
    assert_eq!(deployed(&[restarted]).0.as_deref(), Some("registry.example.com/web:c1"));
}

#[test]
fn a_status_already_written_is_what_the_next_pass_computes() {
    let mut service = web();
    let redeployments =
        [redeployment("shop-1", "shop", 1, vec![result("web", ServicePhase::Succeeded, Some(built("c1", "1")))])];
    let first = desired_status(&service, Some(&deployment("main")), &redeployments, now());
    service.status = Some(first.clone());
    let later = now() + k8s_openapi::jiff::SignedDuration::from_mins(5);
    assert_eq!(desired_status(&service, Some(&deployment("main")), &redeployments, later), first);
    // The Redeployment pruned from history: what it recorded stays.
    assert_eq!(desired_status(&service, Some(&deployment("main")), NONE, later), first);
}

#[test]
fn fields_of_the_legacy_records_manager_are_taken_over() {
    let mut service = web();
    assert!(!has_legacy_owner(&service));
    let entry = |manager: &str, subresource: Option<&str>| ManagedFieldsEntry {
        manager: Some(manager.into()),
        operation: Some("Apply".into()),
        subresource: subresource.map(Into::into),
        ..Default::default()
    };
    service.metadata.managed_fields = Some(vec![entry(FIELD_MANAGER, Some("status")), entry("kubectl", None)]);
    assert!(!has_legacy_owner(&service));
    service.metadata.managed_fields = Some(vec![entry(LEGACY_RECORD_FIELD_MANAGER, Some("status"))]);
    assert!(has_legacy_owner(&service));
}

#[test]
fn the_apply_carries_the_whole_status_and_the_version_it_was_computed_from() {
    let status = ServiceStatus {
        type_: Some(SourceType::Git),
        builds: vec![BuiltImage { commit: "c1".into(), image: "r/web:c1".into(), digest: None }],
        deployed_ref: Some("c1".into()),
        ..Default::default()
    };
    assert_eq!(
        status_patch(Some("42"), &status),
        json!({
            "apiVersion": "redeploy.dev/v1alpha1", "kind": "Service",
            "metadata": { "resourceVersion": "42" },
            "status": { "type": "git", "builds": [{ "commit": "c1", "image": "r/web:c1" }], "deployedRef": "c1" },
        })
    );
    assert!(status_patch(None, &status).get("metadata").is_none());
}

#[test]
fn a_status_is_current_once_it_records_what_the_redeployments_did() {
    let mut service = web();
    let first =
        [redeployment("shop-1", "shop", 1, vec![result("web", ServicePhase::Succeeded, Some(built("c1", "1")))])];
    assert!(!records_current(&service, &first), "the build is not in the Service's status yet");
    service.status = Some(desired_status(&service, None, &first, now()));
    assert!(records_current(&service, &first));
    assert!(records_current(&service, NONE), "pruned: what it did is recorded");
    let mut second = first.to_vec();
    second.push(redeployment(
        "shop-2",
        "shop",
        2,
        vec![result("web", ServicePhase::Deploying, Some(built("c2", "2")))],
    ));
    assert!(!records_current(&service, &second), "a new build");
}
