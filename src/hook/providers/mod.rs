//! One parser per Git host or registry, each producing a [`HookEvent`].
//!
//! [`parse`] recognises the sender by its headers first (`X-GitHub-Event`,
//! `X-Event-Key`, `X-Gitlab-Event`, `X-Forgejo-Event`, ...), then by the shape
//! of the JSON body (Azure DevOps, Docker Hub and the generic
//! `{"repository","ref"|"branch","sha"}` carry no distinctive header). It never
//! panics on payload data: a body it cannot read is a [`ParseError`], which the
//! hook answers with `400`.

// Adding a provider: a file here with its parser and its `Definition`, its
// `mod` line below, and one entry in `providers!` (its CRD enum value).
mod azure_devops;
mod bitbucket_cloud;
mod bitbucket_server;
mod dockerhub;
mod generic;
mod gitea;
mod github;
mod gitlab;
mod shape;
#[cfg(test)]
mod tests;

use std::borrow::Cow;

use http::HeaderMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use self::shape::{Json, Shape};
use super::event::{EventKind, HookEvent};
use super::signature::SignatureCheck;
// The parsers share the operator's one commit-id checks.
use crate::git::{is_commit_sha, is_zero_sha};

/// Why a hook body could not be read. Every message says what is wrong with
/// the payload, so the sender can fix it; the hook answers `400`.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The body is neither empty, nor JSON, nor a form.
    #[error("the body is not valid JSON: {0}")]
    NotJson(serde_json::Error),
    /// A form-encoded body's `payload` field (GitHub's and Gitea's form content type) is not JSON.
    #[error("the `payload` form field is not valid JSON: {0}")]
    FormPayloadNotJson(serde_json::Error),
    /// The payload is JSON, but a field has the wrong type.
    #[error("{} {event} payload does not have the expected shape: {error}", provider.display_name())]
    Shape { provider: Provider, event: String, error: serde_json::Error },
    /// The payload lacks a field this event needs.
    #[error("{} {event} payload has no `{field}`", provider.display_name())]
    Missing { provider: Provider, event: String, field: &'static str },
}

/// Reads a hook call: which provider sent it, what happened, and the Git
/// information it carries.
///
/// - an empty or whitespace-only body, or a form-encoded body (it carries
///   modifiers such as `git_ref=`), is provider `Empty`, kind `NoGitInfo`;
///   except that a form's `payload` field (GitHub's and Gitea's
///   `application/x-www-form-urlencoded` content type) is read as the JSON body;
/// - a JSON body of no known shape is provider `Generic`, kind `NoGitInfo`;
/// - an event a provider sends that this operator does not act on (GitHub
///   `deployment_status`, GitLab `Merge Request Hook`, ...) is kind `Ignored`
///   and its body is not read at all;
/// - any other body that cannot be read is a [`ParseError`].
///
/// Parsers read the fields they use straight from the body into small typed
/// structs and skip the rest: no tree of the whole body is built, so a
/// payload costs little more heap than the strings kept from it.
pub fn parse(headers: &HeaderMap, body: &[u8]) -> Result<HookEvent, ParseError> {
    let detected = detect_by_headers(headers);
    let handling = detected.as_ref().map(Detected::handling);
    if let (Some(detected), Some(Handling::Ignore)) = (&detected, handling) {
        return Ok(bounded(detected.ignored()));
    }
    let payload = read_body(headers, body)?;
    let payload = payload.as_deref().map(Json::new).transpose().map_err(|error| match &payload {
        Some(Cow::Owned(_)) => ParseError::FormPayloadNotJson(error),
        _ => ParseError::NotJson(error),
    })?;
    let event = match (detected, payload) {
        (Some(detected), Some(payload)) => detected.parse(payload)?,
        (Some(detected), None) if handling == Some(Handling::Ping) => detected.ping(),
        (_, None) => HookEvent::default(),
        (None, Some(payload)) => by_shape(payload)?,
    };
    Ok(bounded(event))
}

/// Everything about one provider: declared once, next to its parser
/// (`DEFINITION`), and listed once in [`providers!`], which makes its
/// [`Provider`] value (the CRD enum) and [`DEFINITIONS`]. Messages, metrics
/// labels, signature schemes, header detection and parsing all read it.
pub struct Definition {
    pub provider: Provider,
    /// The provider's name as people write it, for messages.
    pub display_name: &'static str,
    /// The `provider` label value of the hook metrics.
    pub metrics_label: &'static str,
    /// The provider's own signature, for the providers that sign their calls.
    pub signature: Option<SignatureCheck>,
    /// What to do with an event its headers name.
    handling: fn(&str) -> Handling,
    /// Reads the payload of an event its headers name.
    parse: fn(Provider, &str, Json<'_>) -> Result<HookEvent, ParseError>,
    /// The event and delivery id, when the headers say this provider sent the
    /// call. At most one provider's `detect` answers for any headers (see
    /// [`named_by`]), so the order of [`DEFINITIONS`] does not matter.
    detect: fn(&HeaderMap) -> Option<Named>,
}

/// The one list of providers: `Variant = "crd value" => its Definition`.
/// It makes the [`Provider`] enum (the CRD's `spec.trigger.provider`, in this
/// order) and [`DEFINITIONS`], the definitions in the same order.
macro_rules! providers {
    ($($(#[$attribute:meta])* $variant:ident = $value:literal => $definition:expr),* $(,)?) => {
        /// Where a redeployment request came from.
        #[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
        pub enum Provider {
            $($(#[$attribute])* #[serde(rename = $value)] $variant,)*
        }

        impl Provider {
            /// Every provider, in the order of [`DEFINITIONS`].
            pub const ALL: &[Provider] = &[$(Provider::$variant),*];
        }

        /// Every provider's definition, once, in the order of [`Provider::ALL`].
        pub const DEFINITIONS: &[Definition] = &[$($definition),*];
    };
}

providers! {
    GitHub = "github" => github::DEFINITION,
    BitbucketCloud = "bitbucketCloud" => bitbucket_cloud::DEFINITION,
    BitbucketServer = "bitbucketServer" => bitbucket_server::DEFINITION,
    GitLab = "gitlab" => gitlab::DEFINITION,
    Gitea = "gitea" => gitea::GITEA,
    Forgejo = "forgejo" => gitea::FORGEJO,
    Gogs = "gogs" => gitea::GOGS,
    AzureDevOps = "azureDevOps" => azure_devops::DEFINITION,
    DockerHub = "dockerHub" => dockerhub::DEFINITION,
    /// A JSON body of no known provider (`{"repository","ref"|"branch","sha"}`).
    Generic = "generic" => generic::GENERIC,
    /// No body at all, e.g. `curl -X POST`.
    #[default]
    Empty = "empty" => generic::EMPTY,
    /// Created by a person, e.g. with `kubectl redeploy`.
    Manual = "manual" => MANUAL,
}

impl Provider {
    /// The provider's name as people write it, for messages.
    pub fn display_name(self) -> &'static str {
        definition(self).display_name
    }
}

/// Redeployments a person created (`kubectl redeploy`): no hook call at all.
const MANUAL: Definition = Definition {
    provider: Provider::Manual,
    display_name: "manual",
    metrics_label: "manual",
    signature: None,
    handling: never_by_headers,
    parse: ignored,
    detect: by_shape_only,
};

/// The definition of `provider` (every provider has one: see the tests).
pub fn definition(provider: Provider) -> &'static Definition {
    DEFINITIONS.iter().find(|definition| definition.provider == provider).unwrap_or(&MANUAL)
}

/// The `detect` of a provider no header names.
fn by_shape_only(_headers: &HeaderMap) -> Option<Named> {
    None
}

/// The `handling` of a provider no header names.
fn never_by_headers(_event: &str) -> Handling {
    Handling::Ignore
}

/// The `parse` of a provider whose events are not read when headers name them.
fn ignored(provider: Provider, event_name: &str, _payload: Json<'_>) -> Result<HookEvent, ParseError> {
    Ok(event(provider, event_name, EventKind::Ignored))
}

/// What a parser does with an event its provider names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Handling {
    /// Read the payload.
    Parse,
    /// A check that the hook works: deploys nothing.
    Ping,
    /// Acknowledged and ignored; the body is not read.
    Ignore,
}

/// What a provider's headers name: the event, and the delivery id.
#[derive(Debug)]
struct Named {
    event: String,
    delivery_id: Option<String>,
}

/// Event headers, most specific first: Forgejo also sends `X-Gitea-*`, Gitea
/// also sends `X-Gogs-*` and `X-GitHub-*`. A provider's event header names
/// it only when no header before its own is there.
const EVENT_HEADERS: [&str; 6] =
    ["x-forgejo-event", "x-gitea-event", "x-gogs-event", "x-github-event", "x-gitlab-event", "x-event-key"];

/// The `detect` of a provider named by `event_header` (one of
/// [`EVENT_HEADERS`]), its delivery id in the first of `delivery_headers` sent.
fn named_by(headers: &HeaderMap, event_header: &str, delivery_headers: &[&str]) -> Option<Named> {
    let before = EVENT_HEADERS.iter().take_while(|name| **name != event_header);
    if before.into_iter().any(|name| header(headers, name).is_some()) {
        return None;
    }
    let event = header(headers, event_header)?;
    Some(Named { event, delivery_id: delivery_headers.iter().find_map(|name| header(headers, name)) })
}

/// A Bitbucket call (`X-Event-Key`), and whether it is from Bitbucket Cloud
/// (else Server): Cloud's push is `repo:push`, Server's `repo:refs_changed`;
/// other events tell by Cloud's request headers.
fn bitbucket(headers: &HeaderMap) -> Option<(Named, bool)> {
    let named = named_by(headers, "x-event-key", &[])?;
    let cloud = match named.event.as_str() {
        "repo:push" => true,
        "repo:refs_changed" => false,
        _ => header(headers, "x-request-uuid").is_some() || header(headers, "x-hook-uuid").is_some(),
    };
    let delivery = if cloud { "x-request-uuid" } else { "x-request-id" };
    Some((Named { delivery_id: header(headers, delivery), ..named }, cloud))
}

/// A provider recognised by its headers.
#[derive(Debug)]
struct Detected {
    provider: Provider,
    event: String,
    delivery_id: Option<String>,
}

impl Detected {
    fn handling(&self) -> Handling {
        (definition(self.provider).handling)(&self.event)
    }

    fn parse(&self, payload: Json<'_>) -> Result<HookEvent, ParseError> {
        let event = &self.event;
        let mut parsed = (definition(self.provider).parse)(self.provider, event, payload)?;
        if parsed.delivery_id.is_none() {
            parsed.delivery_id.clone_from(&self.delivery_id);
        }
        Ok(parsed)
    }

    fn ping(&self) -> HookEvent {
        HookEvent { delivery_id: self.delivery_id.clone(), ..event(self.provider, &self.event, EventKind::Ping) }
    }

    fn ignored(&self) -> HookEvent {
        HookEvent { delivery_id: self.delivery_id.clone(), ..event(self.provider, &self.event, EventKind::Ignored) }
    }
}

/// The provider named by the headers, if any: the one whose `detect` answers.
fn detect_by_headers(headers: &HeaderMap) -> Option<Detected> {
    DEFINITIONS.iter().find_map(|definition| {
        let Named { event, delivery_id } = (definition.detect)(headers)?;
        Some(Detected { provider: definition.provider, event, delivery_id })
    })
}

/// Recognises a payload that came without a provider header by its shape.
fn by_shape(payload: Json<'_>) -> Result<HookEvent, ParseError> {
    // Only a payload that is not JSON fails to give its shape: it was checked.
    let shape = Shape::of(payload).map_err(ParseError::NotJson)?;
    if !shape.object {
        return Ok(generic::unknown());
    }
    if azure_devops::matches(&shape) {
        return azure_devops::parse(shape.event_type.as_deref().unwrap_or_default(), payload);
    }
    if dockerhub::matches(&shape) {
        return dockerhub::parse(payload);
    }
    if let Some(event) = bitbucket_server::event_from_shape(&shape) {
        return bitbucket_server::parse(&event, payload);
    }
    if bitbucket_cloud::matches(&shape) {
        return bitbucket_cloud::parse(bitbucket_cloud::PUSH, payload);
    }
    if let Some(event) = gitlab::event_from_shape(&shape) {
        return gitlab::parse(&event, payload);
    }
    generic::parse(&shape, payload)
}

/// The JSON in the body, or `None` when it carries no payload (empty,
/// whitespace, or a form without a `payload` field). A body that is not JSON
/// is returned as it is, unless it is a form: then its `payload` field.
fn read_body<'a>(headers: &HeaderMap, body: &'a [u8]) -> Result<Option<Cow<'a, [u8]>>, ParseError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    if !is_form(headers) || Json::new(body).is_ok() {
        return Ok(Some(Cow::Borrowed(body)));
    }
    let payload = url::form_urlencoded::parse(body).find(|(key, _)| key == "payload").map(|(_, value)| value);
    Ok(payload
        .filter(|payload| !payload.trim().is_empty())
        .map(|payload| Cow::Owned(payload.into_owned().into_bytes())))
}

/// Whether the body is `application/x-www-form-urlencoded` (parameters
/// ignored): the one test of it, for parsing and for the form's modifiers.
pub fn is_form(headers: &HeaderMap) -> bool {
    header(headers, "content-type").is_some_and(|value| {
        value
            .split(';')
            .next()
            .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
    })
}

/// A header's value, trimmed; `None` when absent or blank.
fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    let value = headers.get(name)?;
    let value = String::from_utf8_lossy(value.as_bytes());
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_owned())
}

/// Keeps the strings a Redeployment records within the lengths its schema allows.
fn bounded(mut event: HookEvent) -> HookEvent {
    use crate::text::truncate;
    truncate(&mut event.event, 128);
    if let Some(sender) = &mut event.sender {
        truncate(sender, 256);
    }
    // A cut delivery id would no longer identify the delivery.
    if event.delivery_id.as_ref().is_some_and(|id| id.chars().count() > 256) {
        event.delivery_id = None;
    }
    event
}

// ---- helpers shared by the parsers ----

/// An event with nothing but its provider, name and kind.
fn event(provider: Provider, event: &str, kind: EventKind) -> HookEvent {
    HookEvent { provider, event: event.to_owned(), kind, ..HookEvent::default() }
}

/// Reads a payload into a parser's lenient serde struct, which names only the
/// fields the parser uses: the others are skipped without being kept.
fn deserialize<T: DeserializeOwned>(provider: Provider, event: &str, payload: Json<'_>) -> Result<T, ParseError> {
    serde_json::from_slice(payload.bytes()).map_err(|error| ParseError::Shape {
        provider,
        event: event.to_owned(),
        error,
    })
}

fn missing(provider: Provider, event: &str, field: &'static str) -> ParseError {
    ParseError::Missing { provider, event: event.to_owned(), field }
}

/// A Git ref as a push names it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum RefName {
    Branch(String),
    Tag(String),
    /// `refs/notes/...`, `refs/pull/...`, or empty: neither a branch nor a tag.
    Other,
}

impl RefName {
    /// `refs/heads/x` is branch `x`, `refs/tags/v1` tag `v1`; a name without
    /// a `refs/` prefix is taken as a branch.
    fn parse(git_ref: &str) -> RefName {
        let git_ref = git_ref.trim();
        // A name that is blank or starts with white space is no branch or tag
        // (Git refuses white space in ref names).
        let named = |name: &str| !name.is_empty() && name.trim_start() == name;
        if let Some(branch) = git_ref.strip_prefix("refs/heads/") {
            return if named(branch) { RefName::Branch(branch.to_owned()) } else { RefName::Other };
        }
        if let Some(tag) = git_ref.strip_prefix("refs/tags/") {
            return if named(tag) { RefName::Tag(tag.to_owned()) } else { RefName::Other };
        }
        if git_ref.is_empty() || git_ref.starts_with("refs/") {
            return RefName::Other;
        }
        RefName::Branch(git_ref.to_owned())
    }
}

/// What a push says, in the terms every provider shares.
struct Push<'a> {
    provider: Provider,
    event: &'a str,
    ref_name: RefName,
    /// The commit the ref points to after the push; all zeros for a deletion.
    sha: Option<&'a str>,
    /// The provider says the push deleted the ref.
    deleted: bool,
    repository_urls: Vec<String>,
    sender: Option<String>,
}

impl Push<'_> {
    /// A push to a branch or tag is kind `Push`; a push to any other ref
    /// (`refs/notes/...`) deploys nothing and is `Ignored`.
    fn into_event(self) -> HookEvent {
        let deleted = self.deleted || self.sha.is_some_and(is_zero_sha);
        let (branch, tag, kind) = match self.ref_name {
            RefName::Branch(branch) => (Some(branch), None, EventKind::Push),
            RefName::Tag(tag) => (None, Some(tag), EventKind::Push),
            RefName::Other => (None, None, EventKind::Ignored),
        };
        HookEvent {
            repository_urls: self.repository_urls,
            branch,
            tag,
            sha: commit_sha(self.sha),
            deleted,
            sender: self.sender,
            ..event(self.provider, self.event, kind)
        }
    }
}

/// A commit id, unless blank or all zeros.
fn commit_sha(sha: Option<&str>) -> Option<String> {
    let sha = sha?.trim();
    (!sha.is_empty() && !is_zero_sha(sha)).then(|| sha.to_owned())
}

/// The first non-blank value.
fn first<'a>(values: impl IntoIterator<Item = Option<&'a str>>) -> Option<String> {
    values.into_iter().flatten().map(str::trim).find(|value| !value.is_empty()).map(str::to_owned)
}

/// The non-blank values, without repeats, in order.
fn urls<'a>(values: impl IntoIterator<Item = Option<&'a str>>) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    for url in values.into_iter().flatten().map(str::trim) {
        if !url.is_empty() && !urls.iter().any(|known| known == url) {
            urls.push(url.to_owned());
        }
    }
    urls
}
