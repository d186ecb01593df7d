//! Pure planning: which Services a hook call redeploys, and how.
//!
//! [`plan`] implements "Which Services are redeployed" of DESIGN.md: from a
//! parsed hook call ([`HookEvent`]), the App, its Services, an optional
//! DeploymentProfile and the query modifiers ([`Modifiers`]) it resolves the
//! [`PlannedService`]s a Redeployment records, or says why there are none.
//! Nothing here talks to Kubernetes.

use std::collections::BTreeMap;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use kube::ResourceExt;
use percent_encoding::percent_decode_str;

use crate::api::{
    App, Decision, DeploymentProfile, GitSource, ImageSource, PlanAction, PlannedService, Service, ServiceDecision,
};
use crate::git::{GitRef, is_zero_sha};
use crate::hook::event::{ChangedFiles, EventKind, HookEvent};
use crate::image::ImageReference;
use crate::repo::{RepoId, redact_credentials};

/// The hook's modifiers: `services=`, `deployment_profile=`, `git_ref=`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Modifiers {
    /// `services=`: only these Services (no duplicates, in the order given).
    pub services: Vec<String>,
    /// `deployment_profile=`: a DeploymentProfile's name or display name, decoded.
    pub profile: Option<String>,
    /// `git_ref=`: deploy this ref instead of the payload's.
    pub git_ref: Option<String>,
    /// `services=web:v1.2.3`: build this Service at this ref (it is also in `services`).
    pub service_refs: BTreeMap<String, String>,
    /// `dry_run=1`: plan exactly as a real call, store and deploy nothing.
    pub dry_run: bool,
}

impl Modifiers {
    /// One item of `services=`: `name`, or `name:ref` (a Git ref has no `:`).
    fn add_service(&mut self, item: &str) -> Result<(), PlanError> {
        let (name, git_ref) = match item.split_once(':') {
            Some((name, git_ref)) => (name.trim(), Some(git_ref.trim())),
            None => (item, None),
        };
        if name.is_empty() || git_ref.is_some_and(str::is_empty) {
            return Err(PlanError::InvalidModifier {
                name: "services".into(),
                reason: format!("`{}` is not `name` or `name:ref`", shown(item)),
            });
        }
        if let Some(git_ref) = git_ref {
            set_once_in(&mut self.service_refs, name, git_ref)?;
        }
        if !self.services.iter().any(|s| s == name) {
            self.services.push(name.to_owned());
        }
        Ok(())
    }
}

/// `dry_run=1` (or `true`, `yes`, or no value) asks for a dry run; `0`, `false`, `no` do not.
fn dry_run(value: &str) -> Result<bool, PlanError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => Err(PlanError::InvalidModifier {
            name: "dry_run".into(),
            reason: format!("`{}` is not 1/true/yes or 0/false/no", shown(value)),
        }),
    }
}

fn set_once_in(refs: &mut BTreeMap<String, String>, name: &str, git_ref: &str) -> Result<(), PlanError> {
    match refs.get(name) {
        Some(previous) if previous != git_ref => Err(PlanError::InvalidModifier {
            name: "services".into(),
            reason: format!(
                "Service `{}` is given two refs, `{}` and `{}`: give it one",
                shown(name),
                shown(previous),
                shown(git_ref)
            ),
        }),
        _ => {
            refs.insert(name.to_owned(), git_ref.to_owned());
            Ok(())
        }
    }
}

/// Query keys that are modifiers; any other key is ignored.
const MODIFIER_KEYS: &[&str] = &["services", "deployment_profile", "git_ref", "dry_run"];

impl Modifiers {
    /// From a query string and/or an application/x-www-form-urlencoded body (git_ref may come from either; query wins).
    ///
    /// `services` may be comma-separated, repeated, or both; spaces arrive as `+` or `%20`.
    /// Empty values count as absent, values are trimmed, unknown keys are ignored. Only
    /// `git_ref` is read from the body (a Git host's form body carries its own fields).
    pub fn parse(query: Option<&str>, form_body: Option<&[u8]>) -> Result<Modifiers, PlanError> {
        let mut modifiers = Modifiers::default();
        if let Some(query) = query {
            let query = query.strip_prefix('?').unwrap_or(query);
            for (key, value) in modifier_pairs(query, "query string")? {
                match key.as_str() {
                    "services" => {
                        for item in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                            modifiers.add_service(item)?;
                        }
                    }
                    "deployment_profile" => set_once(&mut modifiers.profile, "deployment_profile", &value)?,
                    "dry_run" => modifiers.dry_run |= dry_run(&value)?,
                    _ => set_once(&mut modifiers.git_ref, "git_ref", &value)?,
                }
            }
        }
        if let Some(body) = form_body {
            let body = std::str::from_utf8(body).map_err(|_| PlanError::InvalidModifier {
                name: "form body".into(),
                reason: "it is not valid UTF-8".into(),
            })?;
            let mut body_ref = None;
            for (key, value) in modifier_pairs(body, "form body")? {
                if key == "git_ref" {
                    set_once(&mut body_ref, "git_ref", &value)?;
                }
            }
            if modifiers.git_ref.is_none() {
                modifiers.git_ref = body_ref;
            }
        }
        Ok(modifiers)
    }
}

/// The decoded `key=value` pairs of `raw` whose key is a modifier. Their values must be
/// well-formed: every `%` starts an escape of two hex digits, and the bytes are UTF-8.
fn modifier_pairs(raw: &str, source: &str) -> Result<Vec<(String, String)>, PlanError> {
    let mut pairs = Vec::new();
    for piece in raw.split('&').filter(|p| !p.is_empty()) {
        let Some((key, value)) = url::form_urlencoded::parse(piece.as_bytes()).next() else {
            continue;
        };
        if !MODIFIER_KEYS.contains(&key.as_ref()) {
            continue;
        }
        let raw_value = piece.split_once('=').map_or("", |(_, v)| v);
        if let Some(bad) = bad_escape(raw_value) {
            return Err(PlanError::InvalidModifier {
                name: source.into(),
                reason: format!("`{key}` has a bad percent-escape `{}` (write `%25` for a literal `%`)", shown(bad)),
            });
        }
        if percent_decode_str(raw_value).decode_utf8().is_err() {
            return Err(PlanError::InvalidModifier {
                name: source.into(),
                reason: format!("`{key}` does not decode to UTF-8 text"),
            });
        }
        pairs.push((key.into_owned(), value.into_owned()));
    }
    Ok(pairs)
}

/// The first `%` not followed by two hex digits, with what follows it.
fn bad_escape(raw: &str) -> Option<&str> {
    let bytes = raw.as_bytes();
    let i = (0..bytes.len()).find(|&i| {
        bytes[i] == b'%'
            && !(bytes.len() > i + 2 && bytes[i + 1].is_ascii_hexdigit() && bytes[i + 2].is_ascii_hexdigit())
    })?;
    let end = raw.char_indices().map(|(j, _)| j).find(|&j| j >= i + 3).unwrap_or(raw.len());
    Some(&raw[i..end])
}

fn set_once(slot: &mut Option<String>, name: &str, value: &str) -> Result<(), PlanError> {
    let value = value.trim();
    match slot {
        _ if value.is_empty() => Ok(()),
        Some(previous) if previous != value => Err(PlanError::InvalidModifier {
            name: name.into(),
            reason: format!("given twice, as `{}` and `{}`: give it once", shown(previous), shown(value)),
        }),
        _ => {
            *slot = Some(value.to_owned());
            Ok(())
        }
    }
}

/// What a hook call redeploys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// In rollout order.
    pub services: Vec<PlannedService>,
    /// Why nothing was planned, for a 200 answer.
    pub reason: Option<String>,
    /// The DeploymentProfile applied, by name.
    pub profile: Option<String>,
    /// Every Service of the App, in name order: deployed, or why not.
    pub decisions: Vec<ServiceDecision>,
}

impl Plan {
    fn nothing(reason: String) -> Plan {
        Plan { services: Vec::new(), reason: Some(reason), profile: None, decisions: Vec::new() }
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

/// A call the hook refuses (`422`): nothing is deployed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// `services=` names Services the App does not have.
    #[error("{}", unknown_services(.app, .names, .known))]
    UnknownServices {
        app: String,
        /// The unknown names, in the order given.
        names: Vec<String>,
        /// The App's Services, by name.
        known: Vec<String>,
    },
    /// `deployment_profile=` names no DeploymentProfile of the App.
    #[error("{}", unknown_profile(.app, .name, .known))]
    UnknownProfile {
        app: String,
        name: String,
        /// The App's profiles, as `name` or `name (Display Name)`.
        known: Vec<String>,
    },
    #[error("invalid git_ref `{}`: {reason}; give a branch, tag or commit SHA", shown(.git_ref))]
    InvalidGitRef { git_ref: String, reason: String },
    /// A per-Service ref of `services=name:ref` the build cannot take.
    #[error(
        "invalid ref `{}` for Service `{service}` in services=: {reason}; give a branch, tag or commit SHA",
        shown(.git_ref)
    )]
    InvalidServiceRef { service: String, git_ref: String, reason: String },
    /// The ref a Service would build (from the payload or its `spec.git.branch`)
    /// is not one the build can take: refused now rather than failing later.
    #[error(
        "Service `{service}` would build `{}`, which is not a branch, tag or full commit SHA the build can take: {reason}",
        shown(.git_ref)
    )]
    UnbuildableRef { service: String, git_ref: String, reason: String },
    /// A malformed modifier (bad encoding, given twice with different values, ambiguous).
    #[error("invalid {name}: {reason}")]
    InvalidModifier { name: String, reason: String },
}

fn unknown_services(app: &str, names: &[String], known: &[String]) -> String {
    let noun = if names.len() == 1 { "Service" } else { "Services" };
    let names = names.iter().map(|n| format!("`{}`", shown(n))).collect::<Vec<_>>().join(", ");
    let known =
        if known.is_empty() { "it has no Services".to_owned() } else { format!("its Services: {}", known.join(", ")) };
    format!("no {noun} named {names} in App `{app}` ({known})")
}

fn unknown_profile(app: &str, name: &str, known: &[String]) -> String {
    let known = if known.is_empty() { "it has none".to_owned() } else { format!("its profiles: {}", known.join(", ")) };
    format!("no DeploymentProfile named `{}` for App `{app}`, by name or display name ({known})", shown(name))
}

/// A user-supplied value as shown in a message: control characters escaped, at most 100 characters.
fn shown(value: &str) -> String {
    let mut out: String = value.chars().take(100).flat_map(char::escape_debug).collect();
    if value.chars().count() > 100 {
        out.push('…');
    }
    out
}

/// [`plan`], with the profile the modifiers name looked up among `profiles`
/// (an unknown one is an error).
pub fn plan_with_profiles(
    event: &HookEvent,
    app: &App,
    services: &[Service],
    profiles: &[DeploymentProfile],
    modifiers: &Modifiers,
) -> Result<Plan, PlanError> {
    let profile = match &modifiers.profile {
        Some(wanted) => Some(find_profile(&app.name_any(), profiles, wanted)?),
        None => None,
    };
    plan(event, app, services, profile, modifiers)
}

/// Finds a DeploymentProfile of `app` by metadata.name or by spec.displayName (exact, then case-insensitive; display names have spaces).
pub fn find_profile<'a>(
    app: &str,
    profiles: &'a [DeploymentProfile],
    wanted: &str,
) -> Result<&'a DeploymentProfile, PlanError> {
    let wanted = wanted.trim();
    let own: Vec<&DeploymentProfile> = profiles.iter().filter(|p| p.spec.app == app).collect();
    let display = |p: &DeploymentProfile| p.spec.display_name.as_deref().map(str::trim).unwrap_or_default().to_owned();
    if let Some(p) = own.iter().find(|p| p.name_any() == wanted) {
        return Ok(p);
    }
    // Names are unique, display names need not be: several matches are refused, never
    // settled by the order the profiles happen to be listed in.
    let exact: Vec<&&DeploymentProfile> = own.iter().filter(|p| !wanted.is_empty() && display(p) == wanted).collect();
    let ambiguous = |several: &[&&DeploymentProfile], how: &str| {
        let mut names: Vec<String> = several.iter().map(|p| p.name_any()).collect();
        names.sort();
        PlanError::InvalidModifier {
            name: "deployment_profile".into(),
            reason: format!(
                "`{}` matches several DeploymentProfiles of App `{app}`{how} ({}): give its exact name",
                shown(wanted),
                names.join(", ")
            ),
        }
    };
    match exact.as_slice() {
        [p] => return Ok(p),
        [] => {}
        several => return Err(ambiguous(several, " by display name")),
    }
    let folded = wanted.to_lowercase();
    let loose: Vec<&&DeploymentProfile> = own
        .iter()
        .filter(|p| {
            !folded.is_empty() && (p.name_any().to_lowercase() == folded || display(p).to_lowercase() == folded)
        })
        .collect();
    match loose.as_slice() {
        [p] => Ok(p),
        [] => {
            let mut known: Vec<String> = own
                .iter()
                .map(|p| match p.spec.display_name.as_deref() {
                    Some(d) => format!("{} ({d})", p.name_any()),
                    None => p.name_any(),
                })
                .collect();
            known.sort();
            Err(PlanError::UnknownProfile { app: app.into(), name: wanted.into(), known })
        }
        several => Err(ambiguous(several, " when case is ignored")),
    }
}

/// Checks a `git_ref=` modifier with the operator's one Git ref validator
/// ([`GitRef::parse`]): a branch, a tag or a full commit SHA.
pub fn validate_git_ref(git_ref: &str) -> Result<(), PlanError> {
    GitRef::parse(git_ref)
        .map(drop)
        .map_err(|error| PlanError::InvalidGitRef { git_ref: git_ref.into(), reason: error.reason })
}

/// Which Services of `app` the call redeploys, and how (DESIGN.md, "Which Services are redeployed").
///
/// `services` may hold every Service of the namespace: only those whose `spec.app` is the App's
/// name are considered. `profile` is the DeploymentProfile chosen by `deployment_profile=`
/// (see [`find_profile`]). Errors are refusals (`422`); an empty plan carries the reason.
pub fn plan(
    event: &HookEvent,
    app: &App,
    services: &[Service],
    profile: Option<&DeploymentProfile>,
    modifiers: &Modifiers,
) -> Result<Plan, PlanError> {
    let app_name = app.name_any();
    let mut own: Vec<&Service> = services
        .iter()
        .filter(|s| s.spec.app == app_name)
        .filter(|s| match (s.namespace(), app.namespace()) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        })
        .collect();
    own.sort_by_key(|s| s.name_any());
    let mut decisions = BTreeMap::new();
    let mut plan = plan_own(event, app, &own, profile, modifiers, &mut decisions)?;
    plan.decisions = own
        .iter()
        .map(|s| {
            let service = s.name_any();
            let deployed = plan.services.iter().any(|p| p.service == service);
            match decisions.remove(&service) {
                Some(decided) if deployed == (decided.decision == Decision::Deployed) => decided,
                _ if deployed => ServiceDecision { service, decision: Decision::Deployed, reason: String::new() },
                _ => ServiceDecision {
                    service,
                    decision: Decision::NothingDeployed,
                    reason: bounded_reason(plan.reason.as_deref().unwrap_or("nothing is deployed")),
                },
            }
        })
        .collect();
    Ok(plan)
}

/// What [`plan`] decided about each Service, by name, where a rule says more than the call's reason.
type Decided = BTreeMap<String, ServiceDecision>;

fn decide(decided: &mut Decided, service: &Service, decision: Decision, reason: impl Into<String>) {
    let service = service.name_any();
    let reason = bounded_reason(&reason.into());
    decided.insert(service.clone(), ServiceDecision { service, decision, reason });
}

/// A reason as a Redeployment's schema bounds it (1024 characters).
fn bounded_reason(reason: &str) -> String {
    reason.chars().take(1024).collect()
}

fn plan_own(
    event: &HookEvent,
    app: &App,
    own: &[&Service],
    profile: Option<&DeploymentProfile>,
    modifiers: &Modifiers,
    decided: &mut Decided,
) -> Result<Plan, PlanError> {
    let app_name = app.name_any();

    // Rule 1: refuse before anything is decided.
    let known: Vec<String> = own.iter().map(|s| s.name_any()).collect();
    let unknown: Vec<String> = modifiers.services.iter().filter(|n| !known.contains(n)).cloned().collect();
    if !unknown.is_empty() {
        return Err(PlanError::UnknownServices { app: app_name, names: unknown, known });
    }
    if let Some(git_ref) = &modifiers.git_ref {
        validate_git_ref(git_ref)?;
    }
    for (service, git_ref) in &modifiers.service_refs {
        GitRef::parse(git_ref).map_err(|error| PlanError::InvalidServiceRef {
            service: service.clone(),
            git_ref: git_ref.clone(),
            reason: error.reason,
        })?;
        if own.iter().any(|s| s.name_any() == *service && s.spec.git.is_none()) {
            return Err(PlanError::InvalidModifier {
                name: "services".into(),
                reason: format!(
                    "Service `{service}` deploys a registry image: a ref (`{service}:{}`) applies only to Git-built \
                     Services",
                    shown(git_ref)
                ),
            });
        }
    }
    if let Some(p) = profile
        && p.spec.app != app_name
    {
        return Err(PlanError::InvalidModifier {
            name: "deployment_profile".into(),
            reason: format!("DeploymentProfile `{}` belongs to App `{}`, not `{app_name}`", p.name_any(), p.spec.app),
        });
    }

    // A GitHub Deployment is for one environment: only the App's deploys it.
    if let Some(reason) = environment_mismatch(event, app) {
        return Ok(Plan::nothing(reason));
    }
    if let Some(marker) = skip_marker(event, app) {
        let reason = format!("the head commit's message says `{marker}`: nothing is deployed");
        for service in own {
            decide(decided, service, Decision::SkipMarker, &reason);
        }
        return Ok(Plan::nothing(reason));
    }

    // Rules 2 to 5: what the call itself selects.
    let Selection { trigger, mut planned } = match select(event, &app_name, own, modifiers, decided) {
        Ok(selection) => selection,
        Err(reason) => return Ok(Plan::nothing(reason)),
    };

    // Rule 6: the modifiers restrict the selection.
    if !modifiers.services.is_empty() {
        let matched = names(&planned);
        for left_out in planned.iter().filter(|p| !modifiers.services.contains(&p.service)) {
            let reason = format!("services={} does not name it", modifiers.services.join(","));
            if let Some(service) = own.iter().find(|s| s.name_any() == left_out.service) {
                decide(decided, service, Decision::NotInServices, reason);
            }
        }
        planned.retain(|p| modifiers.services.contains(&p.service));
        if planned.is_empty() {
            return Ok(Plan::nothing(format!(
                "{trigger} matches {matched} of App `{app_name}`, and services={} names none of them",
                modifiers.services.join(",")
            )));
        }
    }
    let profile_services = profile.map(|p| p.spec.services.as_slice()).unwrap_or_default();
    if let Some(p) = profile
        && !profile_services.is_empty()
    {
        let matched = names(&planned);
        for left_out in planned.iter().filter(|s| !profile_services.contains(&s.service)) {
            let reason = format!("DeploymentProfile `{}` does not deploy it", p.name_any());
            if let Some(service) = own.iter().find(|s| s.name_any() == left_out.service) {
                decide(decided, service, Decision::NotInProfile, reason);
            }
        }
        planned.retain(|s| profile_services.contains(&s.service));
        if planned.is_empty() {
            let restricted = if modifiers.services.is_empty() { "" } else { " (restricted by services=)" };
            return Ok(Plan::nothing(format!(
                "{trigger} matches {matched} of App `{app_name}`{restricted}, and DeploymentProfile `{}` deploys none of them (only {})",
                p.name_any(),
                profile_services.join(", ")
            )));
        }
    }

    // Every ref planned must be one the build Job can render (the one Git ref validator).
    for planned in planned.iter().filter(|p| p.action == PlanAction::Build) {
        if let Some(git_ref) = &planned.git_ref
            && let Err(error) = GitRef::parse(git_ref)
        {
            return Err(PlanError::UnbuildableRef {
                service: planned.service.clone(),
                git_ref: git_ref.clone(),
                reason: error.reason,
            });
        }
    }

    // Rule 7: order.
    let order = if !profile_services.is_empty() { profile_services } else { modifiers.services.as_slice() };
    if !order.is_empty() {
        planned.sort_by_key(|p| order.iter().position(|n| *n == p.service));
    }
    Ok(Plan { services: planned, reason: None, profile: profile.map(|p| p.name_any()), decisions: Vec::new() })
}

/// The skip marker in the pushed head commit's message, if any: `[skip deploy]` and
/// `[deploy skip]` always, `[skip ci]` and `[ci skip]` when the App honours them.
fn skip_marker(event: &HookEvent, app: &App) -> Option<&'static str> {
    if event.kind != EventKind::Push {
        return None;
    }
    let message = event.head_commit_message.as_deref()?.to_lowercase();
    let ci = app.spec.hook.honor_skip_ci;
    [("[skip deploy]", true), ("[deploy skip]", true), ("[skip ci]", ci), ("[ci skip]", ci)]
        .into_iter()
        .find(|(marker, honoured)| *honoured && message.contains(marker))
        .map(|(marker, _)| marker)
}

/// Why a GitHub `deployment` event is not for `app`: its environment is not
/// the App's (`spec.github.environment`, else `spec.environment`). GitHub
/// treats environment names case-insensitively, and so does this.
fn environment_mismatch(event: &HookEvent, app: &App) -> Option<String> {
    if event.kind != EventKind::Deployment {
        return None;
    }
    let wanted = crate::github::environment(app);
    let found = event.environment.as_deref().map(str::trim).filter(|e| !e.is_empty());
    match found {
        Some(found) if found.to_lowercase() == wanted.trim().to_lowercase() => None,
        Some(found) => Some(format!(
            "the deployment is for environment `{}`, and App `{}` deploys only `{}`: nothing is deployed",
            shown(found),
            app.name_any(),
            shown(&wanted)
        )),
        None => Some(format!(
            "the deployment names no environment, and App `{}` deploys only `{}`: nothing is deployed",
            app.name_any(),
            shown(&wanted)
        )),
    }
}

/// The Services a call selects before the modifiers restrict them, and how to name the call.
struct Selection {
    /// E.g. "the push of https://github.com/o/r on branch `main`".
    trigger: String,
    /// In Service name order.
    planned: Vec<PlannedService>,
}

/// Rules 2 to 5; `Err` is the reason nothing is selected.
fn select(
    event: &HookEvent,
    app: &str,
    own: &[&Service],
    modifiers: &Modifiers,
    decided: &mut Decided,
) -> Result<Selection, String> {
    let event_name =
        if event.event.is_empty() { format!("{:?}", event.kind).to_lowercase() } else { event.event.clone() };
    match event.kind {
        EventKind::Ping => {
            return Err(format!("`{event_name}` only checks that the hook works: nothing is deployed"));
        }
        EventKind::Ignored => {
            return Err(format!("`{event_name}` events are acknowledged and ignored: nothing is deployed"));
        }
        _ => {}
    }
    if event.deleted || event.sha.as_deref().is_some_and(is_zero_sha) {
        let what = match (&event.branch, &event.tag) {
            (Some(branch), _) => format!("branch `{branch}`"),
            (None, Some(tag)) => format!("tag `{tag}`"),
            (None, None) => "a branch or tag".to_owned(),
        };
        return Err(format!("the push deleted {what}: nothing is deployed"));
    }
    if event.kind == EventKind::ImagePush {
        return select_image(event, app, own, decided);
    }
    if event.has_git_info() {
        return select_git(event, app, own, modifiers, decided);
    }
    if own.is_empty() {
        return Err(format!(
            "App `{app}` has no Services: nothing is deployed (a Service joins it with spec.app: {app})"
        ));
    }
    let planned = own
        .iter()
        .map(|s| match &s.spec.git {
            Some(git) => PlannedService {
                service: s.name_any(),
                action: PlanAction::Build,
                git_ref: service_ref(modifiers, s).or_else(|| modifiers.git_ref.clone()).or_else(|| git.branch.clone()),
            },
            None => image_action(s, s.spec.image.as_deref()),
        })
        .collect();
    Ok(Selection { trigger: "a call without Git information".into(), planned })
}

/// Rule 3: a registry push redeploys the image-based Services that deploy that image and tag.
fn select_image(event: &HookEvent, app: &str, own: &[&Service], decided: &mut Decided) -> Result<Selection, String> {
    let Some(pushed) = &event.image else {
        return Err("the registry event names no image: nothing is deployed".into());
    };
    let Ok(image) = ImageReference::pushed(&pushed.repository, pushed.tag.as_deref()) else {
        return Err(format!("the registry event names no valid image (`{}`): nothing is deployed", pushed.repository));
    };
    let images: Vec<(&Service, &ImageSource)> =
        own.iter().filter(|s| s.spec.git.is_none()).filter_map(|s| Some((*s, s.spec.image.as_deref()?))).collect();
    for service in own.iter().filter(|s| s.spec.git.is_some()) {
        decide(decided, service, Decision::GitBuiltOnImagePush, "a registry push redeploys only image-based Services");
    }
    for (service, source) in &images {
        if !ImageReference::parse(&source.reference).is_ok_and(|deployed| image.same_tag_as(&deployed)) {
            let reason = format!("it deploys {}, not {}", source.reference, image.canonical());
            decide(decided, service, Decision::OtherImage, reason);
        }
    }
    let planned: Vec<PlannedService> = images
        .iter()
        .filter(|(_, source)| {
            ImageReference::parse(&source.reference).is_ok_and(|deployed| image.same_tag_as(&deployed))
        })
        .map(|(s, source)| image_action(s, Some(source)))
        .collect();
    if planned.is_empty() {
        let theirs = if images.is_empty() {
            "it has no image-based Services".to_owned()
        } else {
            let list: Vec<String> =
                images.iter().map(|(s, i)| format!("{} deploys {}", s.name_any(), i.reference)).collect();
            format!("its image-based Services: {}", list.join(", "))
        };
        return Err(format!("no image-based Service of App `{app}` deploys {} ({theirs})", image.canonical()));
    }
    Ok(Selection { trigger: format!("the push of image {}", image.canonical()), planned })
}

/// Rule 4: a call with Git information builds the Git-built Services of that repository and
/// branch that the push touched (`spec.git.paths`, `ignorePaths`).
fn select_git(
    event: &HookEvent,
    app: &str,
    own: &[&Service],
    modifiers: &Modifiers,
    decided: &mut Decided,
) -> Result<Selection, String> {
    let gits: Vec<(&Service, &GitSource)> = own.iter().filter_map(|s| Some((*s, s.spec.git.as_deref()?))).collect();
    let event_branch = event.branch.as_deref().map(short_branch);
    // Parsed once per call, not once per Service: URL parsing dominates planning.
    let pushed: Vec<RepoId> = event.repository_urls.iter().filter_map(|url| RepoId::parse(url)).collect();
    let what = describe_git(event);
    for service in own.iter().filter(|s| s.spec.git.is_none()) {
        decide(decided, service, Decision::ImageBasedOnGitPush, "a Git push redeploys only Git-built Services");
    }
    let mut watched = Vec::new();
    let mut planned = Vec::new();
    for (service, git) in &gits {
        let same_repository =
            event.repository_urls.is_empty() || RepoId::parse(&git.repository).is_some_and(|id| pushed.contains(&id));
        if !same_repository {
            let reason = format!("it builds {}", redact_credentials(&git.repository));
            decide(decided, service, Decision::OtherRepository, reason);
            continue;
        }
        if let (Some(pushed), Some(wanted)) = (event_branch, git.branch.as_deref())
            && pushed != short_branch(wanted)
        {
            decide(decided, service, Decision::OtherBranch, format!("it deploys branch `{wanted}`"));
            continue;
        }
        watched.push(service.name_any());
        let note = match PathFilter::of(git).map(|filter| filter.check(&event.changed_files)) {
            Err(error) => {
                decide(decided, service, Decision::InvalidPaths, error);
                continue;
            }
            Ok(PathCheck::Unfiltered) => String::new(),
            Ok(PathCheck::Unchecked(why)) => {
                format!("{why}, so spec.git.paths/ignorePaths could not be checked: deployed")
            }
            Ok(PathCheck::Matched(file)) => format!("`{}` changed", shown(&file)),
            Ok(PathCheck::NotMatched) => {
                decide(decided, service, Decision::PathsNotMatched, "no changed file matched spec.git.paths");
                continue;
            }
            Ok(PathCheck::OnlyIgnored) => {
                let reason = "every changed file it watches matched spec.git.ignorePaths";
                decide(decided, service, Decision::OnlyIgnoredPaths, reason);
                continue;
            }
        };
        decide(decided, service, Decision::Deployed, note);
        planned.push(PlannedService {
            service: service.name_any(),
            action: PlanAction::Build,
            git_ref: service_ref(modifiers, service)
                .or_else(|| modifiers.git_ref.clone())
                .or_else(|| event.sha.clone())
                .or_else(|| event.tag.clone())
                .or_else(|| event.branch.clone())
                .or_else(|| git.branch.clone()),
        });
    }
    if planned.is_empty() {
        if gits.is_empty() {
            return Err(format!(
                "App `{app}` has no Git-built Service to build {what}: a call with Git information redeploys only \
                 Git-built Services (a call without Git information redeploys the image-based ones)"
            ));
        }
        if !watched.is_empty() {
            let why: Vec<String> = watched
                .iter()
                .filter_map(|name| decided.get(name))
                .map(|d| format!("{}: {}", d.service, d.reason))
                .collect();
            return Err(format!(
                "the push of {what} changed no file that a Service of App `{app}` building it watches ({}): \
                 nothing is deployed",
                why.join("; ")
            ));
        }
        let list: Vec<String> = gits
            .iter()
            .map(|(s, git)| match &git.branch {
                Some(branch) => {
                    format!("{} builds {} on branch `{branch}`", s.name_any(), redact_credentials(&git.repository))
                }
                None => format!("{} builds {}", s.name_any(), redact_credentials(&git.repository)),
            })
            .collect();
        return Err(format!(
            "no Git-built Service of App `{app}` builds {what} (its Git-built Services: {})",
            list.join("; ")
        ));
    }
    let verb = if event.kind == EventKind::Deployment { "deployment" } else { "push" };
    Ok(Selection { trigger: format!("the {verb} of {what}"), planned })
}

/// The ref `services=name:ref` gives `service`.
fn service_ref(modifiers: &Modifiers, service: &Service) -> Option<String> {
    modifiers.service_refs.get(&service.name_any()).cloned()
}

/// A Git-built Service's `paths` and `ignorePaths`, compiled.
pub struct PathFilter {
    paths: Option<GlobSet>,
    ignore: Option<GlobSet>,
}

/// What a push's changed files mean for one Service.
#[derive(Debug, PartialEq, Eq)]
enum PathCheck {
    /// The Service sets no `paths` or `ignorePaths`.
    Unfiltered,
    /// Filters are set but the payload does not list every changed file: deployed anyway.
    Unchecked(&'static str),
    /// This file (the first in path order) is one it watches.
    Matched(String),
    NotMatched,
    OnlyIgnored,
}

impl PathFilter {
    /// Compiles the patterns; the error names the bad one and says why.
    pub fn of(git: &GitSource) -> Result<PathFilter, String> {
        Ok(PathFilter { paths: globs(&git.paths, "paths")?, ignore: globs(&git.ignore_paths, "ignorePaths")? })
    }

    fn check(&self, files: &ChangedFiles) -> PathCheck {
        if self.paths.is_none() && self.ignore.is_none() {
            return PathCheck::Unfiltered;
        }
        let files = match files {
            ChangedFiles::Listed(files) => files,
            ChangedFiles::Unknown => return PathCheck::Unchecked("the payload lists no changed files"),
            ChangedFiles::Truncated => {
                return PathCheck::Unchecked("the payload lists the changed files of only some of the pushed commits");
            }
        };
        let mut watched = files.iter().filter(|f| self.paths.as_ref().is_none_or(|paths| paths.is_match(f.as_str())));
        let Some(first) = watched.next() else { return PathCheck::NotMatched };
        let ignored = |f: &String| self.ignore.as_ref().is_some_and(|ignore| ignore.is_match(f.as_str()));
        match std::iter::once(first).chain(watched).find(|f| !ignored(f)) {
            Some(file) => PathCheck::Matched(file.clone()),
            None => PathCheck::OnlyIgnored,
        }
    }
}

/// `None` for no patterns. `*` stays within a directory, `**` crosses them; a leading `/`
/// is dropped (paths are relative to the repository's root) and a trailing `/` means
/// everything below.
fn globs(patterns: &[String], field: &str) -> Result<Option<GlobSet>, String> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut set = GlobSetBuilder::new();
    for pattern in patterns {
        let trimmed = pattern.trim().trim_start_matches('/');
        let expanded = if trimmed.ends_with('/') { format!("{trimmed}**") } else { trimmed.to_owned() };
        if expanded.is_empty() {
            return Err(format!("spec.git.{field} has an empty pattern"));
        }
        let glob = GlobBuilder::new(&expanded).literal_separator(true).build().map_err(|error| {
            format!("spec.git.{field} pattern `{}` is not a valid glob: {}", shown(pattern), error.kind())
        })?;
        set.add(glob);
    }
    set.build().map(Some).map_err(|error| format!("spec.git.{field} cannot be compiled: {error}"))
}

/// E.g. "https://github.com/o/r on branch `main`", "https://github.com/o/r at tag `v1`", "branch `main`".
fn describe_git(event: &HookEvent) -> String {
    let at = match (&event.branch, &event.tag, &event.sha) {
        (Some(branch), _, _) => Some(("on", format!("branch `{branch}`"))),
        (None, Some(tag), _) => Some(("at", format!("tag `{tag}`"))),
        (None, None, Some(sha)) => Some(("at", format!("commit `{sha}`"))),
        (None, None, None) => None,
    };
    let repository = event.repository_urls.first().map(|url| redact_credentials(url).into_owned());
    match (repository, at) {
        (Some(repository), Some((preposition, at))) => format!("{repository} {preposition} {at}"),
        (Some(repository), None) => repository,
        (None, Some((_, at))) => at,
        (None, None) => "the pushed code".into(),
    }
}

fn short_branch(branch: &str) -> &str {
    branch.strip_prefix("refs/heads/").unwrap_or(branch)
}

fn image_action(service: &Service, image: Option<&ImageSource>) -> PlannedService {
    let resolve = image.is_some_and(|i| i.resolve_digest);
    PlannedService {
        service: service.name_any(),
        action: if resolve { PlanAction::PinDigest } else { PlanAction::Restart },
        git_ref: None,
    }
}

fn names(planned: &[PlannedService]) -> String {
    planned.iter().map(|p| p.service.as_str()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
pub(crate) mod tests;
