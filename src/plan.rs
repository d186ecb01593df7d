//! Pure planning: which Services a hook call redeploys, and how.
//!
//! [`plan`] implements "Which Services are redeployed" of DESIGN.md: from a
//! parsed hook call ([`HookEvent`]), the App, its Services, an optional
//! DeploymentProfile and the query modifiers ([`Modifiers`]) it resolves the
//! [`PlannedService`]s a Redeployment records, or says why there are none.
//! Nothing here talks to Kubernetes.

use kube::ResourceExt;
use percent_encoding::percent_decode_str;

use crate::api::{App, DeploymentProfile, GitSource, ImageSource, PlanAction, PlannedService, Service};
use crate::git::{GitRef, is_zero_sha};
use crate::hook::event::{EventKind, HookEvent};
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
}

/// Query keys that are modifiers; any other key is ignored.
const MODIFIER_KEYS: &[&str] = &["services", "deployment_profile", "git_ref"];

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
                        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                            if !modifiers.services.iter().any(|s| s == name) {
                                modifiers.services.push(name.to_owned());
                            }
                        }
                    }
                    "deployment_profile" => set_once(&mut modifiers.profile, "deployment_profile", &value)?,
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
}

impl Plan {
    fn nothing(reason: String) -> Plan {
        Plan { services: Vec::new(), reason: Some(reason), profile: None }
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

    // Rule 1: refuse before anything is decided.
    let known: Vec<String> = own.iter().map(|s| s.name_any()).collect();
    let unknown: Vec<String> = modifiers.services.iter().filter(|n| !known.contains(n)).cloned().collect();
    if !unknown.is_empty() {
        return Err(PlanError::UnknownServices { app: app_name, names: unknown, known });
    }
    if let Some(git_ref) = &modifiers.git_ref {
        validate_git_ref(git_ref)?;
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

    // Rules 2 to 5: what the call itself selects.
    let Selection { trigger, mut planned } = match select(event, &app_name, &own, modifiers) {
        Ok(selection) => selection,
        Err(reason) => return Ok(Plan::nothing(reason)),
    };

    // Rule 6: the modifiers restrict the selection.
    if !modifiers.services.is_empty() {
        let matched = names(&planned);
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
    Ok(Plan { services: planned, reason: None, profile: profile.map(|p| p.name_any()) })
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
fn select(event: &HookEvent, app: &str, own: &[&Service], modifiers: &Modifiers) -> Result<Selection, String> {
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
        return select_image(event, app, own);
    }
    if event.has_git_info() {
        return select_git(event, app, own, modifiers);
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
                git_ref: modifiers.git_ref.clone().or_else(|| git.branch.clone()),
            },
            None => image_action(s, s.spec.image.as_ref()),
        })
        .collect();
    Ok(Selection { trigger: "a call without Git information".into(), planned })
}

/// Rule 3: a registry push redeploys the image-based Services that deploy that image and tag.
fn select_image(event: &HookEvent, app: &str, own: &[&Service]) -> Result<Selection, String> {
    let Some(pushed) = &event.image else {
        return Err("the registry event names no image: nothing is deployed".into());
    };
    let Ok(image) = ImageReference::pushed(&pushed.repository, pushed.tag.as_deref()) else {
        return Err(format!("the registry event names no valid image (`{}`): nothing is deployed", pushed.repository));
    };
    let images: Vec<(&Service, &ImageSource)> =
        own.iter().filter(|s| s.spec.git.is_none()).filter_map(|s| Some((*s, s.spec.image.as_ref()?))).collect();
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

/// Rule 4: a call with Git information builds the Git-built Services of that repository and branch.
fn select_git(event: &HookEvent, app: &str, own: &[&Service], modifiers: &Modifiers) -> Result<Selection, String> {
    let gits: Vec<(&Service, &GitSource)> = own.iter().filter_map(|s| Some((*s, s.spec.git.as_ref()?))).collect();
    let event_branch = event.branch.as_deref().map(short_branch);
    // Parsed once per call, not once per Service: URL parsing dominates planning.
    let pushed: Vec<RepoId> = event.repository_urls.iter().filter_map(|url| RepoId::parse(url)).collect();
    let planned: Vec<PlannedService> = gits
        .iter()
        .filter(|(_, git)| match (event_branch, git.branch.as_deref()) {
            (Some(pushed), Some(wanted)) => pushed == short_branch(wanted),
            _ => true,
        })
        .filter(|(_, git)| {
            event.repository_urls.is_empty() || RepoId::parse(&git.repository).is_some_and(|id| pushed.contains(&id))
        })
        .map(|(s, git)| PlannedService {
            service: s.name_any(),
            action: PlanAction::Build,
            git_ref: modifiers
                .git_ref
                .clone()
                .or_else(|| event.sha.clone())
                .or_else(|| event.tag.clone())
                .or_else(|| event.branch.clone())
                .or_else(|| git.branch.clone()),
        })
        .collect();
    let what = describe_git(event);
    if planned.is_empty() {
        if gits.is_empty() {
            return Err(format!(
                "App `{app}` has no Git-built Service to build {what}: a call with Git information redeploys only \
                 Git-built Services (a call without Git information redeploys the image-based ones)"
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
mod tests;
