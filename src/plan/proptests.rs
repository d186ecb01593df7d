//! Properties of planning for arbitrary Apps, Services (Git-built and
//! image-based, of several repositories, branches and images, some of other
//! Apps or namespaces), DeploymentProfiles, events and modifiers: the rules of
//! README "The hook" and of [`plan`](super::plan), checked on every case
//! rather than on chosen examples (those are in `tests.rs`).

use std::collections::BTreeSet;

use kube::ResourceExt;
use proptest::prelude::*;
use proptest::sample::select;

use super::*;
use crate::api::{AppSpec, BuildSpec, DeploymentProfileSpec, Provider, ServiceSpec, WorkloadTarget};
use crate::hook::event::PushedImage;

const APP: &str = "shop";
const NAMESPACE: &str = "prod";
const NAMES: &[&str] = &["web", "api", "worker", "cache", "docs", "jobs"];
/// Spellings of three repositories, and one that is no repository.
const REPOSITORIES: &[&str] = &[
    "https://github.com/o/r",
    "git@github.com:O/R.git",
    "https://github.com/o/r/tree/main",
    "https://github.com/o/other",
    "https://gitlab.com/g/sub/r",
    "ssh://git@gitlab.com/g/sub/r.git",
    "not a url",
];
const BRANCHES: &[&str] = &["main", "develop", "refs/heads/main", "feature/x"];
const IMAGES: &[&str] =
    &["redis:7", "redis", "nginx", "docker.io/library/nginx:latest", "registry.example.com/team/app:1"];
const PUSHED_IMAGES: &[&str] = &["redis", "library/nginx", "nginx", "registry.example.com/team/app", "other/app"];
const SHAS: &[&str] = &["6113728f27ae82c7b1a177c8d03f9e96e0adf246", "0000000000000000000000000000000000000000"];
const GIT_REFS: &[&str] = &["v1.2.3", "main", "6113728f27ae82c7b1a177c8d03f9e96e0adf246", "bad..ref"];
const PROFILES: &[&str] = &["quick", "full", "hotfix"];
const DISPLAY_NAMES: &[&str] = &["Quick Fix", "quick fix", "Full"];

// ---- generators ----

#[derive(Clone, Debug)]
enum Source {
    Git { repository: &'static str, branch: Option<&'static str> },
    Image { reference: &'static str, resolve_digest: bool },
}

fn source() -> impl Strategy<Value = Source> {
    prop_oneof![
        (select(REPOSITORIES), proptest::option::of(select(BRANCHES)))
            .prop_map(|(repository, branch)| Source::Git { repository, branch }),
        (select(IMAGES), any::<bool>())
            .prop_map(|(reference, resolve_digest)| Source::Image { reference, resolve_digest }),
    ]
}

/// A Service, mostly of the App and its namespace.
fn service() -> impl Strategy<Value = Service> {
    (select(NAMES), prop::bool::weighted(0.85), prop::bool::weighted(0.85), source()).prop_map(
        |(name, of_app, same_namespace, source)| {
            let mut service = Service::new(
                name,
                ServiceSpec {
                    app: if of_app { APP } else { "blog" }.into(),
                    target: WorkloadTarget { name: name.into(), ..Default::default() },
                    ..Default::default()
                },
            );
            service.metadata.namespace = Some(if same_namespace { NAMESPACE } else { "dev" }.into());
            match source {
                Source::Git { repository, branch } => {
                    service.spec.git = Some(Box::new(GitSource {
                        repository: repository.into(),
                        branch: branch.map(Into::into),
                        dockerfile: "Dockerfile".into(),
                        context: ".".into(),
                        secret_ref: None,
                        ..Default::default()
                    }));
                    service.spec.build = Some(Box::new(BuildSpec {
                        image: format!("registry.example.com/{name}"),
                        ..Default::default()
                    }));
                }
                Source::Image { reference, resolve_digest } => {
                    service.spec.image = Some(Box::new(ImageSource {
                        reference: reference.into(),
                        resolve_digest,
                        pull_secret_ref: None,
                    }));
                }
            }
            service
        },
    )
}

/// Services as a namespace lists them: one per name and namespace.
fn services() -> impl Strategy<Value = Vec<Service>> {
    prop::collection::vec(service(), 0..8).prop_map(|mut services| {
        let mut seen = BTreeSet::new();
        services.retain(|s| seen.insert((s.namespace(), s.name_any())));
        services
    })
}

fn profiles() -> impl Strategy<Value = Vec<DeploymentProfile>> {
    let profile = (
        select(PROFILES),
        proptest::option::of(select(DISPLAY_NAMES)),
        prop::collection::vec(select(NAMES), 0..4),
        prop::bool::weighted(0.85),
    )
        .prop_map(|(name, display_name, services, of_app)| {
            let mut profile = DeploymentProfile::new(
                name,
                DeploymentProfileSpec {
                    app: if of_app { APP } else { "blog" }.into(),
                    display_name: display_name.map(Into::into),
                    services: services.into_iter().map(Into::into).collect(),
                    ..Default::default()
                },
            );
            profile.metadata.namespace = Some(NAMESPACE.into());
            profile
        });
    prop::collection::vec(profile, 0..4).prop_map(|mut profiles| {
        let mut seen = BTreeSet::new();
        profiles.retain(|p| seen.insert(p.name_any()));
        profiles
    })
}

fn event() -> impl Strategy<Value = HookEvent> {
    let kind = select(
        &[
            EventKind::Push,
            EventKind::Deployment,
            EventKind::ImagePush,
            EventKind::Ping,
            EventKind::Ignored,
            EventKind::NoGitInfo,
        ][..],
    );
    let git = (
        prop::collection::vec(select(REPOSITORIES), 0..3),
        proptest::option::of(select(BRANCHES)),
        proptest::option::weighted(0.2, Just("v1.2.3")),
        proptest::option::of(select(SHAS)),
        prop::bool::weighted(0.1),
    );
    let image = proptest::option::of((select(PUSHED_IMAGES), proptest::option::of(select(&["7", "latest", "1"][..]))));
    (kind, git, image).prop_map(|(kind, (repositories, branch, tag, sha, deleted), image)| HookEvent {
        provider: Provider::GitHub,
        event: "push".into(),
        kind,
        repository_urls: repositories.into_iter().map(Into::into).collect(),
        branch: branch.map(Into::into),
        tag: tag.map(Into::into),
        sha: sha.map(Into::into),
        deleted,
        image: image.map(|(repository, tag)| PushedImage { repository: repository.into(), tag: tag.map(Into::into) }),
        // A deployment event deploys only for the App's environment (see
        // `deployments_for_another_environment_plan_nothing`).
        environment: (kind == EventKind::Deployment).then(|| ENVIRONMENT.into()),
        ..HookEvent::default()
    })
}

fn modifiers() -> impl Strategy<Value = Modifiers> {
    let names: Vec<&str> = NAMES.iter().copied().chain(["ghost"]).collect();
    let profile_names: Vec<&str> = PROFILES.iter().chain(DISPLAY_NAMES).copied().chain(["nope"]).collect();
    (
        prop::collection::vec(select(names), 0..3),
        proptest::option::weighted(0.3, select(profile_names)),
        proptest::option::weighted(0.3, select(GIT_REFS)),
    )
        .prop_map(|(services, profile, git_ref)| {
            let mut unique: Vec<String> = Vec::new();
            for name in services {
                if !unique.iter().any(|n| n == name) {
                    unique.push(name.into());
                }
            }
            Modifiers {
                services: unique,
                profile: profile.map(Into::into),
                git_ref: git_ref.map(Into::into),
                ..Modifiers::default()
            }
        })
}

#[derive(Clone, Debug)]
struct Case {
    event: HookEvent,
    services: Vec<Service>,
    profiles: Vec<DeploymentProfile>,
    modifiers: Modifiers,
    /// A reordering of `services` and `profiles`, by sort key.
    order: Vec<u16>,
}

fn case() -> impl Strategy<Value = Case> {
    (event(), services(), profiles(), modifiers(), prop::collection::vec(any::<u16>(), 8))
        .prop_map(|(event, services, profiles, modifiers, order)| Case { event, services, profiles, modifiers, order })
}

/// A push or deployment with Git information that deletes nothing.
fn git_case() -> impl Strategy<Value = Case> {
    case().prop_map(|mut case| {
        let event = &mut case.event;
        if event.kind != EventKind::Deployment {
            event.kind = EventKind::Push;
        }
        event.deleted = false;
        if event.sha.as_deref().is_some_and(is_zero_sha) {
            event.sha = None;
        }
        if !event.has_git_info() {
            event.branch = Some("main".into());
        }
        case
    })
}

/// A call without Git information (an empty body, unknown JSON, a push that names nothing).
fn no_git_case() -> impl Strategy<Value = Case> {
    case().prop_map(|mut case| {
        let event = &mut case.event;
        if !matches!(event.kind, EventKind::Push | EventKind::Deployment) {
            event.kind = EventKind::NoGitInfo;
        }
        event.repository_urls.clear();
        (event.branch, event.tag, event.sha, event.deleted) = (None, None, None, false);
        case
    })
}

/// A call with `services=`.
fn services_case() -> impl Strategy<Value = Case> {
    case().prop_map(|mut case| {
        if case.modifiers.services.is_empty() {
            case.modifiers.services.push("web".into());
        }
        case
    })
}

fn image_push_case() -> impl Strategy<Value = Case> {
    case().prop_map(|mut case| {
        case.event.kind = EventKind::ImagePush;
        case
    })
}

// ---- helpers ----

/// The App's environment, as the API server defaults it.
const ENVIRONMENT: &str = "production";

fn app() -> App {
    let mut app = App::new(APP, AppSpec { environment: ENVIRONMENT.into(), ..AppSpec::default() });
    app.metadata.namespace = Some(NAMESPACE.into());
    app
}

impl Case {
    fn plan(&self) -> Result<Plan, PlanError> {
        self.plan_with(&self.services, &self.profiles, &self.modifiers)
    }

    fn plan_with(
        &self,
        services: &[Service],
        profiles: &[DeploymentProfile],
        modifiers: &Modifiers,
    ) -> Result<Plan, PlanError> {
        plan_with_profiles(&self.event, &app(), services, profiles, modifiers)
    }

    /// The App's own Services: of its name, in its namespace.
    fn own(&self) -> Vec<&Service> {
        self.services.iter().filter(|s| s.spec.app == APP && s.namespace().as_deref() == Some(NAMESPACE)).collect()
    }

    fn own_service(&self, name: &str) -> &Service {
        let own = self.own();
        match own.iter().find(|s| s.name_any() == name) {
            Some(service) => service,
            None => panic!("{name} is not a Service of App {APP}"),
        }
    }

    fn reordered<T: Clone>(&self, items: &[T]) -> Vec<T> {
        let mut keyed: Vec<(u16, T)> =
            items.iter().enumerate().map(|(i, item)| (self.order[i % self.order.len()], item.clone())).collect();
        keyed.sort_by_key(|(key, _)| *key);
        keyed.into_iter().rev().map(|(_, item)| item).collect()
    }

    /// Whether the event names a deletion (nothing is deployed).
    fn deletes(&self) -> bool {
        self.event.deleted || self.event.sha.as_deref().is_some_and(is_zero_sha)
    }
}

fn names(plan: &Plan) -> Vec<&str> {
    plan.services.iter().map(|p| p.service.as_str()).collect()
}

fn by_name(mut planned: Vec<PlannedService>) -> Vec<PlannedService> {
    planned.sort_by(|a, b| a.service.cmp(&b.service));
    planned
}

proptest! {
    // A failure found here becomes a unit test in `tests.rs`, not a regression file.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_plan_names_only_services_of_the_app_each_once(case in case()) {
        let Ok(plan) = case.plan() else { return Ok(()) };
        let own: Vec<String> = case.own().iter().map(|s| s.name_any()).collect();
        for (i, name) in names(&plan).into_iter().enumerate() {
            prop_assert!(own.iter().any(|n| n == name), "{name} is not a Service of the App: {plan:?}");
            prop_assert!(!names(&plan)[..i].contains(&name), "{name} planned twice: {plan:?}");
        }
        prop_assert_eq!(plan.is_empty(), plan.reason.is_some(), "an empty plan, and only an empty plan, says why");
    }

    #[test]
    fn planning_is_deterministic_and_independent_of_listing_order(case in case()) {
        let plan = case.plan();
        prop_assert_eq!(&plan, &case.plan());
        let services = case.reordered(&case.services);
        let profiles = case.reordered(&case.profiles);
        prop_assert_eq!(&plan, &case.plan_with(&services, &case.profiles, &case.modifiers), "Services reordered");
        prop_assert_eq!(&plan, &case.plan_with(&case.services, &profiles, &case.modifiers), "profiles reordered");
    }

    #[test]
    fn actions_follow_each_services_source(case in case()) {
        let Ok(plan) = case.plan() else { return Ok(()) };
        for planned in &plan.services {
            let service = case.own_service(&planned.service);
            let expected = match (&service.spec.git, &service.spec.image) {
                (Some(_), _) => PlanAction::Build,
                (None, Some(image)) if image.resolve_digest => PlanAction::PinDigest,
                (None, _) => PlanAction::Restart,
            };
            prop_assert_eq!(planned.action, expected, "{:?}", planned);
            if planned.action != PlanAction::Build {
                prop_assert!(planned.git_ref.is_none(), "{:?} builds nothing: it has no ref", planned);
            }
        }
    }

    #[test]
    fn unknown_services_are_refused(case in case()) {
        // A profile is looked up first: an unknown one is refused before the Services.
        let case = Case { modifiers: Modifiers { profile: None, ..case.modifiers.clone() }, ..case };
        let own: Vec<String> = case.own().iter().map(|s| s.name_any()).collect();
        let unknown: Vec<String> = case.modifiers.services.iter().filter(|n| !own.contains(n)).cloned().collect();
        if !unknown.is_empty() {
            match case.plan() {
                Err(PlanError::UnknownServices { names, .. }) => prop_assert_eq!(names, unknown),
                other => prop_assert!(false, "services={:?} names unknown Services, got {:?}", case.modifiers.services, other),
            }
        }
    }

    #[test]
    fn services_modifier_only_restricts_the_selection(case in services_case()) {
        let Ok(restricted) = case.plan() else { return Ok(()) };
        let wanted = &case.modifiers.services;
        for name in names(&restricted) {
            prop_assert!(wanted.iter().any(|w| w == name), "{name} is not in services={wanted:?}");
        }
        let unrestricted = Modifiers { services: Vec::new(), ..case.modifiers.clone() };
        let Ok(everything) = case.plan_with(&case.services, &case.profiles, &unrestricted) else { return Ok(()) };
        let expected: Vec<PlannedService> =
            everything.services.into_iter().filter(|p| wanted.contains(&p.service)).collect();
        prop_assert_eq!(by_name(restricted.services), by_name(expected));
    }

    #[test]
    fn a_profile_restricts_and_orders_the_plan(case in case()) {
        let Ok(plan) = case.plan() else { return Ok(()) };
        let Some(name) = &plan.profile else { return Ok(()) };
        let profile = case.profiles.iter().find(|p| &p.name_any() == name);
        prop_assert!(profile.is_some_and(|p| p.spec.app == APP), "profile {name} is not one of the App's");
        let wanted = profile.map(|p| p.spec.services.clone()).unwrap_or_default();
        if wanted.is_empty() {
            return Ok(());
        }
        let positions: Vec<Option<usize>> =
            names(&plan).iter().map(|n| wanted.iter().position(|w| w == n)).collect();
        prop_assert!(positions.iter().all(Option::is_some), "{plan:?} leaves profile {wanted:?}");
        prop_assert!(positions.is_sorted(), "{plan:?} is not in the order of profile {wanted:?}");
    }

    #[test]
    fn git_events_never_plan_image_based_services(case in git_case()) {
        let Ok(plan) = case.plan() else { return Ok(()) };
        for planned in &plan.services {
            prop_assert!(case.own_service(&planned.service).spec.git.is_some(), "{planned:?} is not Git-built");
        }
    }

    #[test]
    fn a_push_builds_exactly_the_services_of_its_repository_and_branch(case in git_case()) {
        let modifiers = Modifiers::default();
        let Ok(plan) = case.plan_with(&case.services, &case.profiles, &modifiers) else { return Ok(()) };
        let pushed: Vec<RepoId> = case.event.repository_urls.iter().filter_map(|u| RepoId::parse(u)).collect();
        let branch = case.event.branch.as_deref().map(short_branch);
        let mut expected: Vec<String> = case
            .own()
            .into_iter()
            .filter(|s| s.spec.git.as_deref().is_some_and(|git| {
                let same_branch = match (branch, git.branch.as_deref()) {
                    (Some(pushed), Some(wanted)) => pushed == short_branch(wanted),
                    _ => true,
                };
                let same_repository = case.event.repository_urls.is_empty()
                    || RepoId::parse(&git.repository).is_some_and(|id| pushed.contains(&id));
                same_branch && same_repository
            }))
            .map(|s| s.name_any())
            .collect();
        expected.sort();
        prop_assert_eq!(names(&plan), expected);
    }

    #[test]
    fn image_pushes_plan_only_image_based_services(case in image_push_case()) {
        let Ok(plan) = case.plan() else { return Ok(()) };
        for planned in &plan.services {
            let service = case.own_service(&planned.service);
            prop_assert!(service.spec.git.is_none() && service.spec.image.is_some(), "{planned:?} is not image-based");
        }
    }

    #[test]
    fn a_call_without_git_information_plans_every_service(case in no_git_case()) {
        let modifiers = Modifiers { git_ref: case.modifiers.git_ref.clone(), ..Modifiers::default() };
        let Ok(plan) = case.plan_with(&case.services, &case.profiles, &modifiers) else { return Ok(()) };
        let mut own: Vec<String> = case.own().iter().map(|s| s.name_any()).collect();
        own.sort();
        prop_assert_eq!(names(&plan), own);
    }

    #[test]
    fn pings_ignored_events_and_deletions_plan_nothing(case in case()) {
        let nothing = matches!(case.event.kind, EventKind::Ping | EventKind::Ignored) || case.deletes();
        if let (true, Ok(plan)) = (nothing, case.plan()) {
            prop_assert!(plan.is_empty() && plan.reason.is_some(), "{plan:?}");
        }
    }

    #[test]
    fn deployments_for_another_environment_plan_nothing(mut case in git_case()) {
        case.event.kind = EventKind::Deployment;
        case.event.environment = Some("staging".into());
        if let Ok(plan) = case.plan() {
            prop_assert!(plan.is_empty() && plan.reason.is_some(), "{plan:?}");
        }
    }

    #[test]
    fn a_git_ref_modifier_is_what_is_built(case in case()) {
        let Some(git_ref) = &case.modifiers.git_ref else { return Ok(()) };
        let Ok(plan) = case.plan() else { return Ok(()) };
        for planned in plan.services.iter().filter(|p| p.action == PlanAction::Build) {
            prop_assert_eq!(planned.git_ref.as_ref(), Some(git_ref));
        }
    }
}
