//! One test per rule of DESIGN.md "Which Services are redeployed", and per edge case.

use super::*;
use crate::api::{AppSpec, DeploymentProfileSpec, Provider, ServiceSpec, WorkloadTarget};
use crate::hook::event::PushedImage;

const REPO: &str = "https://github.com/o/r";

// ---- builders ----

/// An App as the API server gives it: `spec.environment` defaults to `production`.
fn app(name: &str) -> App {
    App::new(name, AppSpec { environment: "production".into(), ..AppSpec::default() })
}

fn shop() -> App {
    app("shop")
}

fn service(name: &str, app: &str) -> Service {
    Service::new(
        name,
        ServiceSpec {
            app: app.into(),
            target: WorkloadTarget { name: name.into(), ..Default::default() },
            ..Default::default()
        },
    )
}

fn git_svc(name: &str, repository: &str, branch: Option<&str>) -> Service {
    let mut s = service(name, "shop");
    s.spec.git = Some(Box::new(GitSource {
        repository: repository.into(),
        branch: branch.map(Into::into),
        dockerfile: "Dockerfile".into(),
        context: ".".into(),
        secret_ref: None,
        ..Default::default()
    }));
    s.spec.build =
        Some(Box::new(crate::api::BuildSpec { image: format!("registry.example.com/{name}"), ..Default::default() }));
    s
}

fn img_svc(name: &str, reference: &str, resolve_digest: bool) -> Service {
    let mut s = service(name, "shop");
    s.spec.image = Some(Box::new(ImageSource { reference: reference.into(), resolve_digest, pull_secret_ref: None }));
    s
}

fn profile(name: &str, display: Option<&str>, services: &[&str]) -> DeploymentProfile {
    profile_of("shop", name, display, services)
}

fn profile_of(app: &str, name: &str, display: Option<&str>, services: &[&str]) -> DeploymentProfile {
    DeploymentProfile::new(
        name,
        DeploymentProfileSpec {
            app: app.into(),
            display_name: display.map(Into::into),
            services: services.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
    )
}

fn push(repos: &[&str], branch: Option<&str>, sha: Option<&str>) -> HookEvent {
    HookEvent {
        provider: Provider::GitHub,
        event: "push".into(),
        kind: EventKind::Push,
        repository_urls: repos.iter().map(|r| r.to_string()).collect(),
        branch: branch.map(Into::into),
        sha: sha.map(Into::into),
        ..Default::default()
    }
}

fn tag_push(repo: &str, tag: &str, sha: Option<&str>) -> HookEvent {
    HookEvent { tag: Some(tag.into()), branch: None, ..push(&[repo], None, sha) }
}

fn no_git_info() -> HookEvent {
    HookEvent { provider: Provider::Empty, kind: EventKind::NoGitInfo, ..Default::default() }
}

fn image_push(repository: &str, tag: Option<&str>) -> HookEvent {
    HookEvent {
        provider: Provider::DockerHub,
        event: "push".into(),
        kind: EventKind::ImagePush,
        image: Some(PushedImage { repository: repository.into(), tag: tag.map(Into::into) }),
        ..Default::default()
    }
}

fn mods(services: &[&str]) -> Modifiers {
    Modifiers { services: services.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

fn with_ref(git_ref: &str) -> Modifiers {
    Modifiers { git_ref: Some(git_ref.into()), ..Default::default() }
}

/// The plan rows the planning and the decide tests write: build `service` at `git_ref`, restart, pin.
pub(crate) fn build(service: &str, git_ref: Option<&str>) -> PlannedService {
    PlannedService { service: service.into(), action: PlanAction::Build, git_ref: git_ref.map(Into::into) }
}

pub(crate) fn restart(service: &str) -> PlannedService {
    PlannedService { service: service.into(), action: PlanAction::Restart, git_ref: None }
}

pub(crate) fn pin(service: &str) -> PlannedService {
    PlannedService { service: service.into(), action: PlanAction::PinDigest, git_ref: None }
}

/// A mixed App: two Git-built Services of one repository on two branches, one of another
/// repository, two image-based Services, and a Service of another App.
fn fleet() -> Vec<Service> {
    vec![
        git_svc("web", REPO, Some("main")),
        git_svc("api", "git@github.com:O/R.git", Some("main")),
        git_svc("staging", REPO, Some("develop")),
        git_svc("docs", "https://gitlab.com/o/docs", None),
        img_svc("cache", "redis:7", false),
        img_svc("proxy", "nginx", true),
        {
            let mut other = git_svc("other", REPO, Some("main"));
            other.spec.app = "blog".into();
            other
        },
    ]
}

fn run(event: &HookEvent, services: &[Service], modifiers: &Modifiers) -> Plan {
    plan(event, &shop(), services, None, modifiers).expect("a plan")
}

fn planned(plan: &Plan) -> Vec<&str> {
    plan.services.iter().map(|p| p.service.as_str()).collect()
}

fn reason(plan: &Plan) -> &str {
    assert!(plan.services.is_empty(), "expected an empty plan, got {:?}", plan.services);
    plan.reason.as_deref().expect("an empty plan says why")
}

// ---- Modifiers::parse ----

#[test]
fn modifiers_absent() {
    assert_eq!(Modifiers::parse(None, None), Ok(Modifiers::default()));
    assert_eq!(Modifiers::parse(Some(""), Some(b"")), Ok(Modifiers::default()));
}

#[test]
fn modifiers_services_comma_separated() {
    let m = Modifiers::parse(Some("services=web,api"), None).unwrap();
    assert_eq!(m.services, ["web", "api"]);
}

#[test]
fn modifiers_services_repeated_and_mixed() {
    let m = Modifiers::parse(Some("services=web&services=api,worker&services=web"), None).unwrap();
    assert_eq!(m.services, ["web", "api", "worker"]);
    let m = Modifiers::parse(Some("services=web,,+api+&services="), None).unwrap();
    assert_eq!(m.services, ["web", "api"], "empty names and spaces around names are dropped");
    let m = Modifiers::parse(Some("services=web%2Capi"), None).unwrap();
    assert_eq!(m.services, ["web", "api"], "an encoded comma separates too");
}

#[test]
fn modifiers_profile_plus_and_percent20() {
    for query in ["deployment_profile=Quick+Fix", "deployment_profile=Quick%20Fix", "?deployment_profile=Quick%20Fix"] {
        let m = Modifiers::parse(Some(query), None).unwrap();
        assert_eq!(m.profile.as_deref(), Some("Quick Fix"), "{query}");
    }
}

#[test]
fn modifiers_all_combined() {
    let m = Modifiers::parse(Some("services=web&deployment_profile=fast&git_ref=v1.2.3&utm_source=x"), None).unwrap();
    assert_eq!(
        m,
        Modifiers {
            services: vec!["web".into()],
            profile: Some("fast".into()),
            git_ref: Some("v1.2.3".into()),
            ..Modifiers::default()
        }
    );
}

#[test]
fn modifiers_git_ref_from_form_body() {
    let m = Modifiers::parse(None, Some(b"git_ref=feature%2Fx\n")).unwrap();
    assert_eq!(m.git_ref.as_deref(), Some("feature/x"));
    let m = Modifiers::parse(Some("services=web"), Some(b"a=1&git_ref=abc123")).unwrap();
    assert_eq!(m.git_ref.as_deref(), Some("abc123"));
    assert_eq!(m.services, ["web"]);
}

#[test]
fn modifiers_query_git_ref_wins_over_body() {
    let m = Modifiers::parse(Some("git_ref=from-query"), Some(b"git_ref=from-body")).unwrap();
    assert_eq!(m.git_ref.as_deref(), Some("from-query"));
}

#[test]
fn modifiers_body_gives_only_git_ref() {
    // A Git host's form body (GitHub sends `payload=<json>`) is not a source of services or profiles.
    let m = Modifiers::parse(None, Some(b"payload=%7B%22ref%22%3A1%7D&services=web&deployment_profile=x")).unwrap();
    assert_eq!(m, Modifiers::default());
}

#[test]
fn modifiers_empty_values_are_absent() {
    let m = Modifiers::parse(Some("git_ref=&deployment_profile=&services="), Some(b"git_ref=")).unwrap();
    assert_eq!(m, Modifiers::default());
}

#[test]
fn modifiers_bad_percent_encoding() {
    for query in ["git_ref=%zz", "git_ref=main%", "services=web%2", "deployment_profile=Quick%2GFix"] {
        let err = Modifiers::parse(Some(query), None).unwrap_err();
        assert!(
            matches!(&err, PlanError::InvalidModifier { name, reason } if name == "query string" && reason.contains("percent-escape")),
            "{query}: {err:?}"
        );
    }
    let err = Modifiers::parse(None, Some(b"git_ref=%")).unwrap_err();
    assert!(matches!(&err, PlanError::InvalidModifier { name, .. } if name == "form body"), "{err:?}");
    assert_eq!(
        Modifiers::parse(Some("git_ref=%zz"), None).unwrap_err().to_string(),
        "invalid query string: `git_ref` has a bad percent-escape `%zz` (write `%25` for a literal `%`)"
    );
}

#[test]
fn modifiers_bad_encoding_elsewhere_is_ignored() {
    let m = Modifiers::parse(Some("utm=%zz&services=web"), Some(b"payload=100%&git_ref=main")).unwrap();
    assert_eq!(m.services, ["web"]);
    assert_eq!(m.git_ref.as_deref(), Some("main"));
}

#[test]
fn modifiers_not_utf8() {
    let err = Modifiers::parse(Some("deployment_profile=%FF%FE"), None).unwrap_err();
    assert!(matches!(&err, PlanError::InvalidModifier { reason, .. } if reason.contains("UTF-8")), "{err:?}");
    let err = Modifiers::parse(None, Some(b"git_ref=\xff")).unwrap_err();
    assert!(matches!(&err, PlanError::InvalidModifier { reason, .. } if reason.contains("UTF-8")), "{err:?}");
}

#[test]
fn modifiers_given_twice() {
    let err = Modifiers::parse(Some("git_ref=a&git_ref=b"), None).unwrap_err();
    assert_eq!(err.to_string(), "invalid git_ref: given twice, as `a` and `b`: give it once");
    assert!(Modifiers::parse(Some("deployment_profile=x&deployment_profile=y"), None).is_err());
    let m = Modifiers::parse(Some("deployment_profile=x&deployment_profile=x"), None).unwrap();
    assert_eq!(m.profile.as_deref(), Some("x"));
}

// ---- find_profile ----

fn profiles() -> Vec<DeploymentProfile> {
    vec![
        profile("quick-fix", Some("Quick Fix"), &["web"]),
        profile("full", None, &[]),
        profile_of("blog", "blog-only", Some("Blog Only"), &[]),
    ]
}

#[test]
fn profile_by_name_and_display_name() {
    let all = profiles();
    for wanted in ["quick-fix", "Quick Fix", "quick fix", "QUICK-FIX", " Quick Fix "] {
        assert_eq!(find_profile("shop", &all, wanted).unwrap().name_any(), "quick-fix", "{wanted}");
    }
    assert_eq!(find_profile("shop", &all, "full").unwrap().name_any(), "full");
}

#[test]
fn profile_exact_match_beats_case_insensitive() {
    let all = vec![profile("a", Some("Quick Fix"), &[]), profile("b", Some("quick fix"), &[])];
    assert_eq!(find_profile("shop", &all, "quick fix").unwrap().name_any(), "b");
    assert_eq!(find_profile("shop", &all, "Quick Fix").unwrap().name_any(), "a");
    // A name beats another profile's display name.
    let all = vec![profile("fast", None, &[]), profile("x", Some("fast"), &[])];
    assert_eq!(find_profile("shop", &all, "fast").unwrap().name_any(), "fast");
}

#[test]
fn profile_ambiguous_ignoring_case() {
    let all = vec![profile("a", Some("Quick Fix"), &[]), profile("b", Some("quick fix"), &[])];
    let err = find_profile("shop", &all, "QUICK FIX").unwrap_err();
    assert!(
        matches!(&err, PlanError::InvalidModifier { name, reason } if name == "deployment_profile" && reason.contains("a, b")),
        "{err:?}"
    );
}

/// Found by `proptests`: the profile a shared display name chose, and the names the
/// refusal listed, followed the order the profiles were listed in.
#[test]
fn profile_choice_does_not_depend_on_listing_order() {
    let a = profile("a", Some("Full"), &["web"]);
    let b = profile("b", Some("Full"), &["api"]);
    for all in [vec![a.clone(), b.clone()], vec![b.clone(), a.clone()]] {
        let err = find_profile("shop", &all, "Full").unwrap_err();
        assert!(
            matches!(&err, PlanError::InvalidModifier { name, reason } if name == "deployment_profile"
                && reason.contains("by display name (a, b)")),
            "{err:?}"
        );
        let err = find_profile("shop", &all, "FULL").unwrap_err();
        assert!(err.to_string().contains("when case is ignored (a, b)"), "{err}");
        // A name is unique: it still chooses.
        assert_eq!(find_profile("shop", &all, "b").unwrap().name_any(), "b");
    }
}

#[test]
fn profile_unknown() {
    let err = find_profile("shop", &profiles(), "slow").unwrap_err();
    assert_eq!(
        err,
        PlanError::UnknownProfile {
            app: "shop".into(),
            name: "slow".into(),
            known: vec!["full".into(), "quick-fix (Quick Fix)".into()]
        }
    );
    assert_eq!(
        err.to_string(),
        "no DeploymentProfile named `slow` for App `shop`, by name or display name (its profiles: full, quick-fix (Quick Fix))"
    );
}

#[test]
fn profile_of_another_app_is_unknown() {
    let err = find_profile("shop", &profiles(), "Blog Only").unwrap_err();
    assert!(matches!(err, PlanError::UnknownProfile { .. }));
    assert!(find_profile("blog", &profiles(), "Blog Only").is_ok());
    let err = find_profile("empty", &profiles(), "x").unwrap_err();
    assert!(err.to_string().ends_with("(it has none)"), "{err}");
}

// ---- git_ref validation ----

// The table of accepted and refused refs is the Git ref validator's (src/git.rs);
// here, that the modifier uses it and says so.
#[test]
fn git_ref_modifier_uses_the_git_ref_validator() {
    for r in ["main", "refs/heads/main", "refs/tags/v1.0.0", "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"] {
        assert_eq!(validate_git_ref(r), Ok(()), "{r}");
    }
    for r in ["refs/pull/1/head", "fix#1", "HEAD~1", "HEAD", "a\u{7}b"] {
        assert!(matches!(validate_git_ref(r), Err(PlanError::InvalidGitRef { .. })), "{r}");
    }
    assert_eq!(
        validate_git_ref("a..b").unwrap_err().to_string(),
        "invalid git_ref `a..b`: it contains `..`; give a branch, tag or commit SHA"
    );
}

// ---- rule 1 (validation first): unknown services and invalid git_ref are refused ----

#[test]
fn unknown_service_is_refused_naming_it() {
    let services = vec![git_svc("web", REPO, None), git_svc("api", REPO, None)];
    let err = plan(&no_git_info(), &shop(), &services, None, &mods(&["wbe"])).unwrap_err();
    assert_eq!(err.to_string(), "no Service named `wbe` in App `shop` (its Services: api, web)");
}

#[test]
fn all_unknown_services_are_listed() {
    let err = plan(&no_git_info(), &shop(), &fleet(), None, &mods(&["web", "wbe", "other", "ghost"])).unwrap_err();
    assert_eq!(
        err,
        PlanError::UnknownServices {
            app: "shop".into(),
            names: vec!["wbe".into(), "other".into(), "ghost".into()],
            known: ["api", "cache", "docs", "proxy", "staging", "web"].map(String::from).to_vec(),
        },
        "a Service of another App is not a Service of this one"
    );
    assert!(err.to_string().starts_with("no Services named `wbe`, `other`, `ghost` in App `shop`"), "{err}");
}

#[test]
fn unknown_service_of_app_without_services() {
    let err = plan(&no_git_info(), &shop(), &[], None, &mods(&["web"])).unwrap_err();
    assert_eq!(err.to_string(), "no Service named `web` in App `shop` (it has no Services)");
}

#[test]
fn validation_comes_before_everything() {
    // Even a ping, a deleted branch or a call that would match nothing is refused.
    let ping = HookEvent { kind: EventKind::Ping, event: "ping".into(), ..Default::default() };
    assert!(matches!(plan(&ping, &shop(), &fleet(), None, &mods(&["nope"])), Err(PlanError::UnknownServices { .. })));
    let deleted = HookEvent { deleted: true, ..push(&[REPO], Some("main"), None) };
    assert!(matches!(plan(&deleted, &shop(), &fleet(), None, &with_ref("a..b")), Err(PlanError::InvalidGitRef { .. })));
}

#[test]
fn invalid_git_ref_is_refused() {
    let err = plan(&push(&[REPO], Some("main"), None), &shop(), &fleet(), None, &with_ref("HEAD~1")).unwrap_err();
    assert!(matches!(err, PlanError::InvalidGitRef { .. }));
}

#[test]
fn profile_of_another_app_is_refused() {
    let blog = profile_of("blog", "blog-only", None, &[]);
    let err = plan(&no_git_info(), &shop(), &fleet(), Some(&blog), &Modifiers::default()).unwrap_err();
    assert!(matches!(&err, PlanError::InvalidModifier { name, .. } if name == "deployment_profile"), "{err:?}");
}

// ---- rule 2: ping, ignored events and deletions deploy nothing ----

#[test]
fn ping_deploys_nothing() {
    let ping = HookEvent { kind: EventKind::Ping, event: "ping".into(), ..push(&[REPO], Some("main"), None) };
    let p = run(&ping, &fleet(), &Modifiers::default());
    assert_eq!(reason(&p), "`ping` only checks that the hook works: nothing is deployed");
}

#[test]
fn ignored_event_deploys_nothing() {
    let ev = HookEvent { kind: EventKind::Ignored, event: "deployment_status".into(), ..Default::default() };
    let p = run(&ev, &fleet(), &Modifiers::default());
    assert_eq!(reason(&p), "`deployment_status` events are acknowledged and ignored: nothing is deployed");
}

#[test]
fn deleted_branch_deploys_nothing() {
    let ev = HookEvent { deleted: true, ..push(&[REPO], Some("main"), None) };
    let p = run(&ev, &fleet(), &Modifiers::default());
    assert_eq!(reason(&p), "the push deleted branch `main`: nothing is deployed");
}

#[test]
fn deleted_tag_deploys_nothing() {
    let ev = HookEvent { deleted: true, ..tag_push(REPO, "simple-tag", Some(&"0".repeat(40))) };
    let p = run(&ev, &fleet(), &Modifiers::default());
    assert_eq!(reason(&p), "the push deleted tag `simple-tag`: nothing is deployed");
}

#[test]
fn all_zero_sha_is_a_deletion() {
    let ev = push(&[REPO], Some("main"), Some(&"0".repeat(40)));
    let p = run(&ev, &fleet(), &Modifiers::default());
    assert!(reason(&p).contains("deleted branch `main`"));
}

#[test]
fn deletion_with_git_ref_still_deploys_nothing() {
    let ev = HookEvent { deleted: true, ..push(&[REPO], Some("main"), None) };
    assert!(run(&ev, &fleet(), &with_ref("main")).is_empty());
}

// ---- rule 3: registry pushes redeploy image-based Services of that image ----

#[test]
fn image_push_redeploys_services_of_that_image() {
    let services = vec![
        img_svc("a", "svendowideit/testhook", false),
        img_svc("b", "docker.io/svendowideit/testhook:latest", false),
        img_svc("c", "index.docker.io/svendowideit/testhook", true),
        img_svc(
            "d",
            "registry.hub.docker.com/svendowideit/testhook:latest@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            false,
        ),
        img_svc(
            "e",
            "svendowideit/testhook@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            false,
        ),
        img_svc("f", "svendowideit/testhook:1.0", false),
        img_svc("g", "ghcr.io/svendowideit/testhook", false),
        img_svc("h", "svendowideit/other", false),
        git_svc("i", "https://github.com/svendowideit/testhook", None),
        // Not a reference a node could pull (the digest is cut short): nothing to redeploy.
        img_svc("j", "svendowideit/testhook@sha256:abcd", false),
        img_svc("k", "SvenDowideit/testhook", false),
    ];
    let p = run(&image_push("svendowideit/testhook", Some("latest")), &services, &Modifiers::default());
    assert_eq!(p.services, vec![restart("a"), restart("b"), pin("c"), restart("d"), restart("e")]);
    assert_eq!(p.reason, None);
}

#[test]
fn image_push_official_images() {
    let services = vec![
        img_svc("a", "nginx", false),
        img_svc("b", "library/nginx:latest", false),
        img_svc("c", "docker.io/library/nginx", false),
        img_svc("d", "nginx:1.25", false),
        // Not a reference: repositories are lower-case, and no node could pull it.
        img_svc("e", "NGINX", false),
    ];
    let p = run(&image_push("nginx", Some("latest")), &services, &Modifiers::default());
    assert_eq!(planned(&p), ["a", "b", "c"]);
    let p = run(&image_push("library/nginx", Some("1.25")), &services, &Modifiers::default());
    assert_eq!(planned(&p), ["d"]);
}

#[test]
fn image_push_without_tag_is_latest() {
    let services = vec![img_svc("a", "acme/web", false), img_svc("b", "acme/web:stable", false)];
    let p = run(&image_push("acme/web", None), &services, &Modifiers::default());
    assert_eq!(planned(&p), ["a"]);
}

#[test]
fn image_push_other_registry() {
    let services =
        vec![img_svc("a", "registry.example.com:5000/team/web:v2", false), img_svc("b", "team/web:v2", false)];
    let p = run(&image_push("registry.example.com:5000/team/web", Some("v2")), &services, &Modifiers::default());
    assert_eq!(planned(&p), ["a"]);
}

#[test]
fn image_push_leaves_git_services_alone_and_ignores_git_ref() {
    let p = run(&image_push("library/redis", Some("7")), &fleet(), &with_ref("main"));
    assert_eq!(p.services, vec![restart("cache")]);
}

#[test]
fn image_push_matching_nothing_says_why() {
    let p = run(&image_push("svendowideit/testhook", Some("latest")), &fleet(), &Modifiers::default());
    assert_eq!(
        reason(&p),
        "no image-based Service of App `shop` deploys docker.io/svendowideit/testhook:latest \
         (its image-based Services: cache deploys redis:7, proxy deploys nginx)"
    );
    let p = run(&image_push("svendowideit/testhook", None), &[git_svc("web", REPO, None)], &Modifiers::default());
    assert!(reason(&p).ends_with("(it has no image-based Services)"), "{p:?}");
}

#[test]
fn image_push_without_image() {
    let ev = HookEvent { image: None, ..image_push("x", None) };
    assert!(reason(&run(&ev, &fleet(), &Modifiers::default())).contains("names no image"));
}

// ---- rule 4: Git information builds the matching Git-built Services ----

#[test]
fn branch_push_builds_matching_repository_and_branch() {
    let sha = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c";
    let p = run(&push(&[REPO], Some("main"), Some(sha)), &fleet(), &Modifiers::default());
    // `api` names the repository as git@github.com:O/R.git; `staging` deploys `develop`;
    // `docs` is another repository; image-based and other Apps' Services are not touched.
    assert_eq!(p.services, vec![build("api", Some(sha)), build("web", Some(sha))]);
}

#[test]
fn push_to_another_branch_builds_that_branch_only() {
    let p = run(&push(&[REPO], Some("develop"), Some("abc123")), &fleet(), &Modifiers::default());
    assert_eq!(p.services, vec![build("staging", Some("abc123"))]);
}

#[test]
fn push_to_unknown_branch_says_why() {
    let p = run(&push(&[REPO], Some("feature"), Some("abc123")), &fleet(), &Modifiers::default());
    let why = reason(&p);
    assert!(
        why.starts_with("no Git-built Service of App `shop` builds https://github.com/o/r on branch `feature`"),
        "{why}"
    );
    assert!(why.contains("web builds https://github.com/o/r on branch `main`"), "{why}");
    assert!(why.contains("docs builds https://gitlab.com/o/docs"), "{why}");
}

#[test]
fn credentials_in_repository_urls_never_reach_the_answer() {
    let services = vec![git_svc("web", "https://deploy:s3cr3t@github.com/o/r", Some("main"))];
    let ev = push(&["https://pusher:hunter2@github.com/o/other"], Some("main"), None);
    let planned = run(&ev, &services, &Modifiers::default());
    let why = reason(&planned);
    assert!(!why.contains("s3cr3t") && !why.contains("hunter2"), "{why}");
    assert!(
        why.contains("https://***@github.com/o/other") && why.contains("web builds https://***@github.com/o/r"),
        "{why}"
    );
}

#[test]
fn push_to_another_repository_builds_nothing() {
    let p = run(&push(&["https://github.com/o/elsewhere"], Some("main"), None), &fleet(), &Modifiers::default());
    assert!(
        reason(&p)
            .starts_with("no Git-built Service of App `shop` builds https://github.com/o/elsewhere on branch `main`")
    );
}

#[test]
fn any_of_the_payload_urls_may_match() {
    let ev = push(&["https://gitlab.com/o/docs-mirror", "git@gitlab.com:O/Docs.git"], Some("main"), None);
    let p = run(&ev, &fleet(), &Modifiers::default());
    assert_eq!(p.services, vec![build("docs", Some("main"))]);
}

#[test]
fn service_without_branch_matches_every_branch() {
    let ev = push(&["https://gitlab.com/o/docs.git"], Some("anything"), Some("f00"));
    assert_eq!(run(&ev, &fleet(), &Modifiers::default()).services, vec![build("docs", Some("f00"))]);
}

#[test]
fn branch_given_as_full_ref_matches() {
    let services = vec![git_svc("web", REPO, Some("refs/heads/main"))];
    let p = run(&push(&[REPO], Some("main"), None), &services, &Modifiers::default());
    assert_eq!(planned(&p), ["web"]);
    let p = run(&push(&[REPO], Some("refs/heads/main"), None), &fleet(), &Modifiers::default());
    assert_eq!(planned(&p), ["api", "web"]);
}

#[test]
fn branches_are_case_sensitive() {
    let p = run(&push(&[REPO], Some("Main"), None), &fleet(), &Modifiers::default());
    assert!(p.is_empty());
}

#[test]
fn tag_push_matches_without_branch_matching() {
    let p = run(&tag_push(REPO, "v1.0.0", Some("abc")), &fleet(), &Modifiers::default());
    assert_eq!(p.services, vec![build("api", Some("abc")), build("staging", Some("abc")), build("web", Some("abc"))]);
    let p = run(&tag_push(REPO, "v1.0.0", None), &fleet(), &Modifiers::default());
    assert_eq!(p.services[0], build("api", Some("v1.0.0")), "without a SHA the tag is built");
}

#[test]
fn repository_only_payload_matches_without_branch_matching() {
    let p = run(&push(&[REPO], None, None), &fleet(), &Modifiers::default());
    // Nothing names a ref: each Service builds its own branch.
    assert_eq!(
        p.services,
        vec![build("api", Some("main")), build("staging", Some("develop")), build("web", Some("main"))]
    );
}

#[test]
fn payload_without_repository_does_not_filter_by_repository() {
    let p = run(&push(&[], Some("main"), Some("abc")), &fleet(), &Modifiers::default());
    assert_eq!(p.services, vec![build("api", Some("abc")), build("docs", Some("abc")), build("web", Some("abc"))]);
    let p = run(&push(&[], Some("feature"), None), &fleet(), &Modifiers::default());
    assert_eq!(planned(&p), ["docs"], "only the Service without a branch");
    let p = run(&push(&[], Some("feature"), None), &[git_svc("web", REPO, Some("main"))], &Modifiers::default());
    assert!(reason(&p).starts_with("no Git-built Service of App `shop` builds branch `feature`"), "{p:?}");
}

#[test]
fn ref_precedence_git_ref_then_sha_then_tag_then_branch() {
    let services = vec![git_svc("web", REPO, None)];
    let full = HookEvent { tag: Some("v1".into()), ..push(&[REPO], Some("main"), Some("abc")) };
    assert_eq!(run(&full, &services, &with_ref("pinned")).services, vec![build("web", Some("pinned"))]);
    assert_eq!(run(&full, &services, &Modifiers::default()).services, vec![build("web", Some("abc"))]);
    let no_sha = HookEvent { sha: None, ..full.clone() };
    assert_eq!(run(&no_sha, &services, &Modifiers::default()).services, vec![build("web", Some("v1"))]);
    let branch_only = HookEvent { tag: None, ..no_sha };
    assert_eq!(run(&branch_only, &services, &Modifiers::default()).services, vec![build("web", Some("main"))]);
    let repo_only = push(&[REPO], None, None);
    assert_eq!(run(&repo_only, &services, &Modifiers::default()).services, vec![build("web", None)]);
}

#[test]
fn git_ref_does_not_change_which_services_match() {
    let p = run(&push(&[REPO], Some("develop"), Some("abc")), &fleet(), &with_ref("main"));
    assert_eq!(p.services, vec![build("staging", Some("main"))]);
}

fn deployment(environment: Option<&str>) -> HookEvent {
    HookEvent {
        kind: EventKind::Deployment,
        event: "deployment".into(),
        environment: environment.map(Into::into),
        ..push(&[REPO], Some("main"), Some("abc"))
    }
}

#[test]
fn deployment_event_is_git_information() {
    let p = run(&deployment(Some("production")), &fleet(), &Modifiers::default());
    assert_eq!(planned(&p), ["api", "web"]);
}

#[test]
fn deployment_for_another_environment_deploys_nothing() {
    let p = run(&deployment(Some("staging")), &fleet(), &Modifiers::default());
    assert!(p.is_empty());
    assert_eq!(
        reason(&p),
        "the deployment is for environment `staging`, and App `shop` deploys only `production`: nothing is deployed"
    );
    let p = run(&deployment(None), &fleet(), &Modifiers::default());
    assert!(reason(&p).starts_with("the deployment names no environment"), "{}", reason(&p));
    // GitHub's environment names ignore case.
    assert_eq!(planned(&run(&deployment(Some("Production")), &fleet(), &Modifiers::default())), ["api", "web"]);
    // A push is not bound to an environment.
    let staging_app = App::new("shop", AppSpec { environment: "staging".into(), ..Default::default() });
    let push = push(&[REPO], Some("main"), Some("abc"));
    assert_eq!(
        planned(&plan(&push, &staging_app, &fleet(), None, &Modifiers::default()).expect("plan")),
        ["api", "web"]
    );
}

#[test]
fn deployment_environment_is_the_apps_github_environment_first() {
    let mut app = App::new("shop", AppSpec { environment: "staging".into(), ..Default::default() });
    let deploys = |app: &App, environment: &str| {
        !plan(&deployment(Some(environment)), app, &fleet(), None, &Modifiers::default()).expect("plan").is_empty()
    };
    assert!(deploys(&app, "staging") && !deploys(&app, "production"));
    app.spec.github = Some(crate::api::GitHubSpec {
        repository: REPO.into(),
        environment: Some("production".into()),
        ..Default::default()
    });
    assert!(deploys(&app, "production") && !deploys(&app, "staging"));
}

#[test]
fn refs_the_build_cannot_take_are_refused_whatever_their_source() {
    // From the payload: a branch name the build cannot fetch, a SHA-256 commit id.
    let services = vec![git_svc("web", REPO, None)];
    let err = plan(&push(&[REPO], Some("fix#1"), None), &shop(), &services, None, &Modifiers::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Service `web` would build `fix#1`, which is not a branch, tag or full commit SHA the build can take: it \
         contains `#`"
    );
    let sha256 = "a".repeat(64);
    let err =
        plan(&push(&[REPO], Some("main"), Some(&sha256)), &shop(), &services, None, &Modifiers::default()).unwrap_err();
    assert!(matches!(err, PlanError::UnbuildableRef { .. }), "{err}");
    // From the Service's own branch, on a call without Git information.
    let odd = vec![git_svc("web", REPO, Some("a..b"))];
    let err = plan(&no_git_info(), &shop(), &odd, None, &Modifiers::default()).unwrap_err();
    assert!(matches!(&err, PlanError::UnbuildableRef { service, .. } if service == "web"), "{err}");
    // A PR head is not a branch or tag, whichever way it comes.
    let err = plan(&no_git_info(), &shop(), &services, None, &with_ref("refs/pull/1/head")).unwrap_err();
    assert!(matches!(err, PlanError::InvalidGitRef { .. }), "{err}");
}

#[test]
fn git_information_leaves_image_services_alone() {
    let services = vec![img_svc("cache", "redis", false)];
    let p = run(&push(&[REPO], Some("main"), None), &services, &Modifiers::default());
    assert!(
        reason(&p).starts_with("App `shop` has no Git-built Service to build https://github.com/o/r on branch `main`")
    );
}

#[test]
fn fixture_urls_match_services() {
    // Repository URLs as the providers' sample payloads give them.
    let cases = [
        ("git@github.com:Codertocat/Hello-World.git", "https://github.com/Codertocat/Hello-World.git"),
        (
            "https://server.bitbucket.local/scm/~gopher/webhook-test.git",
            "ssh://git@server.bitbucket.local:7999/~gopher/webhook-test.git",
        ),
        ("git@example.com:mike/diaspora.git", "http://example.com/mike/diaspora.git"),
        (
            "https://fabrikam-fiber-inc.visualstudio.com/DefaultCollection/_git/Fabrikam-Fiber-Git",
            "https://dev.azure.com/fabrikam-fiber-inc/DefaultCollection/_git/Fabrikam-Fiber-Git",
        ),
    ];
    for (configured, sent) in cases {
        let services = vec![git_svc("web", configured, None)];
        let p = run(&push(&[sent], Some("main"), None), &services, &Modifiers::default());
        assert_eq!(planned(&p), ["web"], "{configured} vs {sent}");
    }
}

// ---- rule 5: no Git information redeploys every Service ----

#[test]
fn no_git_info_redeploys_all_services() {
    let p = run(&no_git_info(), &fleet(), &Modifiers::default());
    assert_eq!(
        p.services,
        vec![
            build("api", Some("main")),
            restart("cache"),
            build("docs", None),
            pin("proxy"),
            build("staging", Some("develop")),
            build("web", Some("main")),
        ]
    );
}

#[test]
fn no_git_info_with_git_ref() {
    let p = run(&no_git_info(), &fleet(), &with_ref("v2"));
    for s in &p.services {
        let want = if s.service == "cache" || s.service == "proxy" { None } else { Some("v2") };
        assert_eq!(s.git_ref.as_deref(), want, "{s:?}");
    }
}

#[test]
fn push_kind_without_any_git_information_redeploys_all() {
    let ev = push(&[], None, None);
    assert_eq!(run(&ev, &fleet(), &Modifiers::default()).services.len(), 6);
}

#[test]
fn app_without_services() {
    let p = run(&no_git_info(), &[], &Modifiers::default());
    assert!(reason(&p).starts_with("App `shop` has no Services"));
}

#[test]
fn services_of_other_namespaces_are_not_the_apps() {
    let mut app = shop();
    app.metadata.namespace = Some("prod".into());
    let mut here = img_svc("here", "redis", false);
    here.metadata.namespace = Some("prod".into());
    let mut there = img_svc("there", "redis", false);
    there.metadata.namespace = Some("dev".into());
    let p = plan(&no_git_info(), &app, &[here, there], None, &Modifiers::default()).unwrap();
    assert_eq!(planned(&p), ["here"]);
}

// ---- rule 6: services= and the profile restrict ----

#[test]
fn services_restricts_no_git_info() {
    let p = run(&no_git_info(), &fleet(), &mods(&["web", "cache"]));
    assert_eq!(p.services, vec![build("web", Some("main")), restart("cache")]);
}

#[test]
fn services_restricts_git_push() {
    let p = run(&push(&[REPO], Some("main"), Some("abc")), &fleet(), &mods(&["web"]));
    assert_eq!(p.services, vec![build("web", Some("abc"))]);
}

#[test]
fn services_does_not_widen_the_selection() {
    // `docs` and `cache` are Services of the App, but the push does not select them.
    let p = run(&push(&[REPO], Some("main"), Some("abc")), &fleet(), &mods(&["docs", "cache"]));
    assert_eq!(
        reason(&p),
        "the push of https://github.com/o/r on branch `main` matches api, web of App `shop`, \
         and services=docs,cache names none of them"
    );
}

#[test]
fn services_restricts_image_push() {
    let services = vec![img_svc("a", "acme/web", false), img_svc("b", "acme/web", true)];
    let p = run(&image_push("acme/web", None), &services, &mods(&["b"]));
    assert_eq!(p.services, vec![pin("b")]);
}

#[test]
fn profile_restricts() {
    let fast = profile("fast", Some("Quick Fix"), &["web", "proxy"]);
    let p = plan(&no_git_info(), &shop(), &fleet(), Some(&fast), &Modifiers::default()).unwrap();
    assert_eq!(p.services, vec![build("web", Some("main")), pin("proxy")]);
}

#[test]
fn profile_without_services_deploys_all() {
    let full = profile("full", None, &[]);
    let p = plan(&no_git_info(), &shop(), &fleet(), Some(&full), &Modifiers::default()).unwrap();
    assert_eq!(p.services, run(&no_git_info(), &fleet(), &Modifiers::default()).services);
    assert_eq!(p.profile.as_deref(), Some("full"), "the plan names the profile it applied");
}

#[test]
fn profile_and_services_intersect() {
    let fast = profile("fast", None, &["web", "api", "cache"]);
    let p = plan(&no_git_info(), &shop(), &fleet(), Some(&fast), &mods(&["cache", "staging", "web"])).unwrap();
    assert_eq!(planned(&p), ["web", "cache"]);
}

#[test]
fn profile_listing_a_missing_service_is_not_an_error() {
    let fast = profile("fast", None, &["gone", "web"]);
    let p = plan(&no_git_info(), &shop(), &fleet(), Some(&fast), &Modifiers::default()).unwrap();
    assert_eq!(planned(&p), ["web"]);
}

#[test]
fn profile_excluding_everything_says_why() {
    let fast = profile("fast", None, &["cache"]);
    let p = plan(&push(&[REPO], Some("main"), None), &shop(), &fleet(), Some(&fast), &Modifiers::default()).unwrap();
    assert_eq!(
        reason(&p),
        "the push of https://github.com/o/r on branch `main` matches api, web of App `shop`, \
         and DeploymentProfile `fast` deploys none of them (only cache)"
    );
    let p = plan(&push(&[REPO], Some("main"), None), &shop(), &fleet(), Some(&fast), &mods(&["web"])).unwrap();
    assert!(reason(&p).contains("matches web of App `shop` (restricted by services=), and DeploymentProfile"), "{p:?}");
}

// ---- rule 7: order ----

#[test]
fn order_is_by_name_without_modifiers() {
    let p = run(&no_git_info(), &fleet(), &Modifiers::default());
    assert_eq!(planned(&p), ["api", "cache", "docs", "proxy", "staging", "web"]);
}

#[test]
fn order_follows_services_modifier() {
    let p = run(&no_git_info(), &fleet(), &mods(&["web", "cache", "api"]));
    assert_eq!(planned(&p), ["web", "cache", "api"]);
}

#[test]
fn order_follows_profile_over_services_modifier() {
    let serial = profile("serial", None, &["proxy", "cache", "web", "api"]);
    let p = plan(&no_git_info(), &shop(), &fleet(), Some(&serial), &mods(&["web", "cache", "proxy"])).unwrap();
    assert_eq!(planned(&p), ["proxy", "cache", "web"]);
    let p = plan(&no_git_info(), &shop(), &fleet(), Some(&serial), &Modifiers::default()).unwrap();
    assert_eq!(planned(&p), ["proxy", "cache", "web", "api"]);
}

// ---- rule 8: an empty plan always says why ----

#[test]
fn every_empty_plan_has_a_reason_and_every_plan_with_services_none() {
    let events = [
        no_git_info(),
        push(&[REPO], Some("main"), None),
        push(&[REPO], Some("nope"), None),
        image_push("nginx", None),
        image_push("nope", None),
        HookEvent { kind: EventKind::Ping, ..Default::default() },
        HookEvent { kind: EventKind::Ignored, ..Default::default() },
    ];
    for ev in &events {
        for m in [Modifiers::default(), mods(&["web"]), mods(&["proxy"])] {
            let p = run(ev, &fleet(), &m);
            assert_eq!(p.services.is_empty(), p.reason.is_some(), "{ev:?} {m:?}: {p:?}");
        }
    }
}

#[test]
fn event_without_name_is_named_by_kind() {
    let p = run(&HookEvent { kind: EventKind::Ping, ..Default::default() }, &fleet(), &Modifiers::default());
    assert!(reason(&p).starts_with("`ping`"));
}

// ---- path filters, skip markers, per-Service refs, per-Service decisions ----

fn filtered(name: &str, paths: &[&str], ignore: &[&str]) -> Service {
    let mut s = git_svc(name, REPO, Some("main"));
    if let Some(git) = s.spec.git.as_mut() {
        git.paths = paths.iter().map(|p| p.to_string()).collect();
        git.ignore_paths = ignore.iter().map(|p| p.to_string()).collect();
    }
    s
}

fn push_changing(files: &[&str]) -> HookEvent {
    HookEvent {
        changed_files: ChangedFiles::Listed(files.iter().map(|f| f.to_string()).collect()),
        ..push(&[REPO], Some("main"), Some(SHA))
    }
}

const SHA: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";

fn decision_of<'a>(plan: &'a Plan, service: &str) -> &'a ServiceDecision {
    plan.decisions
        .iter()
        .find(|d| d.service == service)
        .unwrap_or_else(|| panic!("no decision for {service}: {plan:?}"))
}

fn decisions(plan: &Plan) -> Vec<(&str, Decision)> {
    plan.decisions.iter().map(|d| (d.service.as_str(), d.decision)).collect()
}

#[test]
fn path_filters_each_rule() {
    // (paths, ignorePaths, changed files, decision)
    type Case<'a> = (&'a [&'a str], &'a [&'a str], &'a [&'a str], Decision);
    let cases: &[Case] = &[
        (&[], &[], &["anything"], Decision::Deployed),
        (&["services/api/**"], &[], &["services/api/src/main.rs"], Decision::Deployed),
        (&["services/api/**"], &[], &["services/web/index.html", "README.md"], Decision::PathsNotMatched),
        (&["services/api/"], &[], &["services/api/Dockerfile"], Decision::Deployed),
        (&["/services/api/**"], &[], &["services/api/Dockerfile"], Decision::Deployed),
        // `*` stays within one directory, `**` crosses them.
        (&["services/*/Dockerfile"], &[], &["services/api/Dockerfile"], Decision::Deployed),
        (&["services/*"], &[], &["services/api/Dockerfile"], Decision::PathsNotMatched),
        (&["**/*.go"], &[], &["a/b/c/main.go"], Decision::Deployed),
        (&["services/api/**"], &["**/*.md"], &["services/api/README.md"], Decision::OnlyIgnoredPaths),
        (&["services/api/**"], &["**/*.md"], &["services/api/README.md", "services/api/x.rs"], Decision::Deployed),
        (&[], &["docs/**"], &["docs/index.md"], Decision::OnlyIgnoredPaths),
        (&[], &["docs/**"], &["docs/index.md", "main.rs"], Decision::Deployed),
        // A push that changed no file (an empty commit) touches nothing a filter watches.
        (&["services/api/**"], &[], &[], Decision::PathsNotMatched),
        (&[], &[], &[], Decision::Deployed),
    ];
    for (paths, ignore, files, expected) in cases {
        let plan = run(&push_changing(files), &[filtered("api", paths, ignore)], &Modifiers::default());
        let decided = decision_of(&plan, "api");
        assert_eq!(decided.decision, *expected, "paths {paths:?} ignore {ignore:?} files {files:?}: {decided:?}");
        assert_eq!(planned(&plan) == ["api"], *expected == Decision::Deployed, "{plan:?}");
        if *expected != Decision::Deployed {
            assert!(reason(&plan).contains("changed no file"), "{plan:?}");
            assert!(!decided.reason.is_empty());
        }
    }
}

#[test]
fn path_filters_in_a_monorepo_deploy_only_what_the_push_touched() {
    let services = [filtered("api", &["services/api/**"], &[]), filtered("web", &["services/web/**"], &["**/*.md"]), {
        let mut docs = filtered("site", &[], &[]);
        docs.spec.app = "shop".into();
        docs
    }];
    let plan = run(&push_changing(&["services/api/main.go", "services/web/README.md"]), &services, &mods(&[]));
    assert_eq!(planned(&plan), ["api", "site"]);
    assert_eq!(
        decisions(&plan),
        [("api", Decision::Deployed), ("site", Decision::Deployed), ("web", Decision::OnlyIgnoredPaths)]
    );
    assert_eq!(decision_of(&plan, "api").reason, "`services/api/main.go` changed");
}

#[test]
fn unknown_or_truncated_files_deploy_and_say_so() {
    for (files, why) in [
        (ChangedFiles::Unknown, "the payload lists no changed files"),
        (ChangedFiles::Truncated, "only some of the pushed commits"),
    ] {
        let event = HookEvent { changed_files: files, ..push(&[REPO], Some("main"), Some(SHA)) };
        let plan = run(&event, &[filtered("api", &["services/api/**"], &[])], &mods(&[]));
        assert_eq!(planned(&plan), ["api"]);
        let decided = decision_of(&plan, "api");
        assert_eq!(decided.decision, Decision::Deployed);
        assert!(decided.reason.contains(why) && decided.reason.contains("could not be checked"), "{decided:?}");
    }
}

#[test]
fn an_invalid_pattern_is_named_and_never_panics() {
    let plan = run(&push_changing(&["a.rs"]), &[filtered("api", &["src/[a-"], &[])], &mods(&[]));
    let decided = decision_of(&plan, "api");
    assert_eq!(decided.decision, Decision::InvalidPaths);
    assert!(decided.reason.contains("spec.git.paths pattern `src/[a-`"), "{decided:?}");
    let plan = run(&push_changing(&["a.rs"]), &[filtered("api", &[], &["{a,b"])], &mods(&[]));
    assert!(decision_of(&plan, "api").reason.contains("spec.git.ignorePaths pattern `{a,b`"), "{plan:?}");
    // Patterns are not compiled when nothing is pushed with Git information.
    assert_eq!(planned(&run(&no_git_info(), &[filtered("api", &["src/[a-"], &[])], &mods(&[]))), ["api"]);
}

/// Each host's real payload, parsed as the hook parses it, planned against a Service of its
/// repository and branch whose `paths` match none of the files the payload lists.
#[test]
fn path_filters_with_every_hosts_payload_shape() {
    use crate::hook::providers;
    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/webhooks/");
    // (fixture, header, event, how the files read, what a `paths` matching none of them gives)
    let cases: &[(&str, &str, &str, &str, Decision)] = &[
        ("github/push-new-branch.json", "X-GitHub-Event", "push", "listed", Decision::PathsNotMatched),
        ("gitea/push-event.json", "X-Gitea-Event", "push", "listed", Decision::PathsNotMatched),
        // Four commits pushed, two sent.
        ("gitlab/push-event.json", "X-Gitlab-Event", "Push Hook", "truncated", Decision::Deployed),
        // A tag push lists no commits.
        ("gitlab/tag-event.json", "X-Gitlab-Event", "Tag Push Hook", "unknown", Decision::Deployed),
        // Gogs lists commits without their files.
        ("gogs/push-event.json", "X-Gogs-Event", "push", "unknown", Decision::Deployed),
        ("bitbucket-cloud/repo-push.json", "X-Event-Key", "repo:push", "unknown", Decision::Deployed),
        ("azure-devops/git-push.json", "X-Unused", "", "unknown", Decision::Deployed),
    ];
    for (fixture, header, event_name, files, expected) in cases {
        let body = std::fs::read(format!("{FIXTURES}{fixture}")).expect("fixture");
        let mut headers = http::HeaderMap::new();
        headers.insert("content-type", http::HeaderValue::from_static("application/json"));
        if !event_name.is_empty() {
            headers.insert(*header, http::HeaderValue::from_str(event_name).expect("header"));
        }
        let event = providers::parse(&headers, &body).unwrap_or_else(|e| panic!("{fixture}: {e}"));
        let read = match &event.changed_files {
            ChangedFiles::Listed(_) => "listed",
            ChangedFiles::Truncated => "truncated",
            ChangedFiles::Unknown => "unknown",
        };
        assert_eq!(read, *files, "{fixture}: {:?}", event.changed_files);
        let mut service = git_svc("api", &event.repository_urls[0], event.branch.as_deref());
        if let Some(git) = service.spec.git.as_mut() {
            git.paths = vec!["services/api/**".into()];
        }
        let plan = run(&event, &[service], &mods(&[]));
        assert_eq!(decision_of(&plan, "api").decision, *expected, "{fixture}: {plan:?}");
        // The same Service without filters is deployed by every one of them.
        let plain = git_svc("api", &event.repository_urls[0], event.branch.as_deref());
        assert_eq!(planned(&run(&event, &[plain], &mods(&[]))), ["api"], "{fixture}");
    }
}

#[test]
fn listed_files_are_read_from_every_commit() {
    use crate::hook::providers;
    let headers = |name: &str, value: &str| {
        let mut h = http::HeaderMap::new();
        h.insert(http::HeaderName::from_bytes(name.as_bytes()).expect("name"), value.parse().expect("value"));
        h
    };
    let commit = |id: &str, message: &str, added: &str| {
        format!(r#"{{"id":"{id}","message":"{message}","added":["{added}"],"modified":[],"removed":["old/{added}"]}}"#)
    };
    let body = format!(
        r#"{{"ref":"refs/heads/main","after":"{SHA}","repository":{{"clone_url":"{REPO}"}},"commits":[{},{}],"head_commit":{}}}"#,
        commit("a", "first", "a.txt"),
        commit(SHA, "second", "b/c.txt"),
        commit(SHA, "second", "b/c.txt"),
    );
    let expected: ChangedFiles =
        ChangedFiles::Listed(["a.txt", "b/c.txt", "old/a.txt", "old/b/c.txt"].map(String::from).into());
    let github = providers::parse(&headers("X-GitHub-Event", "push"), body.as_bytes()).expect("GitHub push");
    assert_eq!(github.changed_files, expected);
    assert_eq!(github.head_commit_message.as_deref(), Some("second"));
    let gitea = providers::parse(&headers("X-Gitea-Event", "push"), body.as_bytes()).expect("Gitea push");
    assert_eq!(gitea.changed_files, expected);
    // Gitea's `total_commits` above the commits sent, and GitHub's 20-commit cap, mean truncated.
    let more = body.replacen('{', r#"{"total_commits":3,"#, 1);
    let gitea = providers::parse(&headers("X-Gitea-Event", "push"), more.as_bytes()).expect("Gitea push");
    assert_eq!(gitea.changed_files, ChangedFiles::Truncated);
    let twenty: Vec<String> = (0..20).map(|i| commit(&i.to_string(), "m", "f")).collect();
    let capped = format!(r#"{{"ref":"refs/heads/main","after":"{SHA}","commits":[{}]}}"#, twenty.join(","));
    let github = providers::parse(&headers("X-GitHub-Event", "push"), capped.as_bytes()).expect("GitHub push");
    assert_eq!(github.changed_files, ChangedFiles::Truncated);
    let gitlab_body = format!(
        r#"{{"object_kind":"push","ref":"refs/heads/main","checkout_sha":"{SHA}","total_commits_count":2,"commits":[{},{}]}}"#,
        commit(SHA, "head [skip deploy]", "b/c.txt"),
        commit("a", "older", "a.txt"),
    );
    let gitlab = providers::parse(&headers("X-Gitlab-Event", "Push Hook"), gitlab_body.as_bytes()).expect("GitLab");
    assert_eq!(gitlab.changed_files, expected);
    assert_eq!(
        gitlab.head_commit_message.as_deref(),
        Some("head [skip deploy]"),
        "the commit checked out, not the last listed"
    );
}

#[test]
fn skip_markers() {
    let mut honouring = shop();
    honouring.spec.hook.honor_skip_ci = true;
    let cases = [
        ("fix typo [skip deploy]", false, true),
        ("Fix [Deploy Skip] please", false, true),
        ("bump [skip ci]", false, false),
        ("bump [skip ci]", true, true),
        ("bump [ci skip]", true, true),
        ("skip deploy, without brackets", true, false),
    ];
    let services = [git_svc("web", REPO, Some("main")), img_svc("cache", "redis:7", false)];
    for (message, honour_ci, skipped) in cases {
        let event = HookEvent { head_commit_message: Some(message.into()), ..push(&[REPO], Some("main"), Some(SHA)) };
        let app = if honour_ci { honouring.clone() } else { shop() };
        let plan = plan(&event, &app, &services, None, &mods(&[])).expect("a plan");
        if skipped {
            assert!(reason(&plan).contains("the head commit's message says `["), "{message}: {plan:?}");
            assert_eq!(decisions(&plan), [("cache", Decision::SkipMarker), ("web", Decision::SkipMarker)]);
        } else {
            assert_eq!(planned(&plan), ["web"], "{message}");
        }
    }
    // Only a push carries a head commit: a call without Git information is not skipped.
    let call = HookEvent { head_commit_message: Some("[skip deploy]".into()), ..no_git_info() };
    assert_eq!(planned(&run(&call, &services, &mods(&[]))), ["cache", "web"]);
}

#[test]
fn per_service_refs() {
    let m = Modifiers::parse(Some("services=web:v1.2.3,worker&services=api:feature/x"), None).unwrap();
    assert_eq!(m.services, ["web", "worker", "api"]);
    assert_eq!(m.service_refs, BTreeMap::from([("web".into(), "v1.2.3".into()), ("api".into(), "feature/x".into())]));
    let services = [
        git_svc("web", REPO, Some("main")),
        git_svc("worker", REPO, Some("main")),
        git_svc("api", REPO, Some("main")),
        img_svc("cache", "redis:7", false),
    ];
    let plan = run(&no_git_info(), &services, &m);
    assert_eq!(
        plan.services,
        [build("web", Some("v1.2.3")), build("worker", Some("main")), build("api", Some("feature/x"))]
    );
    assert_eq!(decision_of(&plan, "cache").decision, Decision::NotInServices);
    // On an (unsigned) push, the per-Service ref wins over the pushed commit for that Service only.
    let on_push = Modifiers::parse(Some("services=web:v1.2.3,worker"), None).unwrap();
    let plan = run(&push(&[REPO], Some("main"), Some(SHA)), &services, &on_push);
    assert_eq!(plan.services, [build("web", Some("v1.2.3")), build("worker", Some(SHA))]);
    // The same validation as git_ref.
    let bad = Modifiers::parse(Some("services=web:bad..ref"), None).unwrap();
    match plan_error(&services, &bad) {
        PlanError::InvalidServiceRef { service, git_ref, .. } => {
            assert_eq!((service.as_str(), git_ref.as_str()), ("web", "bad..ref"))
        }
        other => panic!("{other:?}"),
    }
    assert!(validate_git_ref("bad..ref").is_err(), "git_ref= refuses it too");
    let image = Modifiers::parse(Some("services=cache:v1"), None).unwrap();
    assert!(plan_error(&services, &image).to_string().contains("applies only to Git-built Services"));
    for query in ["services=web:", "services=:v1", "services=web:v1,web:v2"] {
        assert!(matches!(Modifiers::parse(Some(query), None), Err(PlanError::InvalidModifier { .. })), "{query}");
    }
    assert!(Modifiers::parse(Some("services=web:v1,web:v1,web"), None).is_ok(), "the same ref twice is one ref");
}

fn plan_error(services: &[Service], modifiers: &Modifiers) -> PlanError {
    match plan(&no_git_info(), &shop(), services, None, modifiers) {
        Err(error) => error,
        Ok(plan) => panic!("expected a refusal, got {plan:?}"),
    }
}

#[test]
fn every_service_of_the_app_gets_a_decision() {
    // The fleet: web, api (same repository, main), staging (develop), docs (other repository),
    // cache and proxy (image-based), and `other` of another App.
    let git_push = run(&push(&[REPO], Some("main"), Some(SHA)), &fleet(), &mods(&[]));
    assert_eq!(
        decisions(&git_push),
        [
            ("api", Decision::Deployed),
            ("cache", Decision::ImageBasedOnGitPush),
            ("docs", Decision::OtherRepository),
            ("proxy", Decision::ImageBasedOnGitPush),
            ("staging", Decision::OtherBranch),
            ("web", Decision::Deployed),
        ]
    );
    assert_eq!(decision_of(&git_push, "staging").reason, "it deploys branch `develop`");
    let narrowed = run(&push(&[REPO], Some("main"), Some(SHA)), &fleet(), &mods(&["web"]));
    assert_eq!(decision_of(&narrowed, "api").decision, Decision::NotInServices);
    assert_eq!(decision_of(&narrowed, "web").decision, Decision::Deployed);
    let fast = profile("fast", None, &["api"]);
    let profiled = plan(&push(&[REPO], Some("main"), Some(SHA)), &shop(), &fleet(), Some(&fast), &mods(&[])).unwrap();
    assert_eq!(decision_of(&profiled, "web").decision, Decision::NotInProfile);
    assert_eq!(decision_of(&profiled, "api").decision, Decision::Deployed);
    let registry = run(&image_push("redis", Some("7")), &fleet(), &mods(&[]));
    assert_eq!(decision_of(&registry, "cache").decision, Decision::Deployed);
    assert_eq!(decision_of(&registry, "proxy").decision, Decision::OtherImage);
    assert_eq!(decision_of(&registry, "web").decision, Decision::GitBuiltOnImagePush);
    // When the call deploys nothing at all, every Service says why.
    let deleted = HookEvent { deleted: true, ..push(&[REPO], Some("main"), None) };
    let nothing = run(&deleted, &fleet(), &mods(&[]));
    assert!(nothing.decisions.iter().all(|d| d.decision == Decision::NothingDeployed && d.reason.contains("deleted")));
    assert_eq!(nothing.decisions.len(), 6, "Services of other Apps are not listed");
    // A branch no Service deploys: each says which branch it deploys, or that it is image-based.
    let elsewhere = run(&push(&[REPO], Some("feature"), Some(SHA)), &fleet(), &mods(&[]));
    assert_eq!(decision_of(&elsewhere, "web").decision, Decision::OtherBranch);
    assert!(elsewhere.services.is_empty());
}
