//! `POST /stacks/redeploy/{id}/{token}`: authenticate, read, plan, store.
//!
//! The handler's only side effect is creating one Redeployment. Everything
//! it reads comes from watched caches, except an App's signature secret.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use http_body_util::BodyExt;
use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::{
    Api, Resource, ResourceExt,
    api::PostParams,
    runtime::events::{Event, EventType},
};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{
    deliveries::{self, DeliveryLog},
    event::{EventKind, HookEvent},
    providers,
    record::{self, planned_services, same_delivery},
    signature::{self, Requirement, SignatureCheck, SignatureError},
};
use crate::{
    api::{App, Decision, Delivery, Provider, Redeployment, SecretKeyRef, Service, ServiceDecision},
    context::Context,
    github::Deployments,
    install::FIELD_MANAGER,
    metrics::{EventLabel, Outcome, ProviderLabel},
    plan::{self, Modifiers},
};

/// Limits on what one hook call, and all of them together, may cost.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest body accepted (`413` beyond).
    pub body_bytes: usize,
    /// Time allowed to receive the whole body (`408` beyond).
    pub body_timeout: Duration,
    /// Calls of one App handled at once (`429` beyond).
    pub concurrent_per_app: usize,
    /// Bytes of bodies all calls together may hold at once, counted before a
    /// body is read (its length, or `body_bytes` for a chunked body); `503`
    /// beyond. It bounds the hook's memory whatever the number
    /// of Apps and callers.
    pub bodies_in_flight_bytes: usize,
}

/// Default of [`Limits::bodies_in_flight_bytes`]: 48 MiB, nine bodies of the
/// largest size or hundreds of usual pushes. Under a burst of large bodies
/// the operator then holds 45 to 55 MiB more than at rest (tests/hook_memory.rs),
/// which leaves the caches of a thousand Apps (95 MiB) well within the chart's
/// 256 MiB memory limit.
pub const DEFAULT_BODIES_IN_FLIGHT_BYTES: usize = 48 * 1024 * 1024;

/// Longest wait for one API-server request within a hook call. An API
/// server that cannot reach etcd still accepts requests and holds them for up
/// to a minute; Git hosts give up on a webhook after about 10 s (GitHub). So a
/// call gets its `503` in time instead of hanging (tests/faults.rs).
pub const API_TIMEOUT: Duration = Duration::from_secs(5);

/// `call`, failed with a timeout error once [`API_TIMEOUT`] has passed.
async fn within_api_timeout<T>(call: impl Future<Output = kube::Result<T>>) -> kube::Result<T> {
    tokio::time::timeout(API_TIMEOUT, call).await.unwrap_or_else(|elapsed| Err(kube::Error::Service(Box::new(elapsed))))
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_bytes: 5 * 1024 * 1024,
            body_timeout: Duration::from_secs(10),
            concurrent_per_app: 32,
            bodies_in_flight_bytes: DEFAULT_BODIES_IN_FLIGHT_BYTES,
        }
    }
}

/// Limits that cannot work together.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error(
        "the budget for bodies in flight ({budget} bytes) is smaller than the body limit ({body} bytes): a body of unknown length could never be read"
    )]
    BudgetBelowBodyLimit { budget: usize, body: usize },
    #[error("the body limit ({0} bytes) is above 4 GiB")]
    BodyLimitTooLarge(usize),
}

impl Limits {
    pub fn validate(&self) -> Result<(), LimitsError> {
        if u32::try_from(self.body_bytes).is_err() {
            return Err(LimitsError::BodyLimitTooLarge(self.body_bytes));
        }
        if self.bodies_in_flight_bytes < self.body_bytes {
            return Err(LimitsError::BudgetBelowBodyLimit {
                budget: self.bodies_in_flight_bytes,
                body: self.body_bytes,
            });
        }
        Ok(())
    }
}

pub struct HookState {
    pub context: Arc<Context>,
    pub limits: Limits,
    in_flight: Mutex<HashMap<(String, String), Arc<Semaphore>>>,
    /// One permit per byte of [`Limits::bodies_in_flight_bytes`].
    body_budget: Arc<Semaphore>,
    /// Where answered calls go, for `status.recentDeliveries`.
    deliveries: DeliveryLog,
}

impl HookState {
    pub fn new(context: Arc<Context>, limits: Limits) -> Self {
        let body_budget = Arc::new(Semaphore::new(limits.bodies_in_flight_bytes.min(Semaphore::MAX_PERMITS)));
        Self { context, limits, in_flight: Mutex::default(), body_budget, deliveries: DeliveryLog::default() }
    }

    /// Records every answered call of a known App in `log` ([`DeliveryLog::start`]).
    pub fn with_deliveries(self, log: DeliveryLog) -> Self {
        Self { deliveries: log, ..self }
    }

    fn permit(&self, namespace: &str, app: &str) -> Option<OwnedSemaphorePermit> {
        let semaphore = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            in_flight
                .entry((namespace.to_string(), app.to_string()))
                .or_insert_with(|| Arc::new(Semaphore::new(self.limits.concurrent_per_app)))
                .clone()
        };
        semaphore.try_acquire_owned().ok()
    }
}

/// A hook answer: status, JSON body, and what the metrics record of it.
#[derive(Debug)]
pub struct Reply {
    status: StatusCode,
    outcome: Outcome,
    body: serde_json::Value,
    retry_after: Option<u64>,
}

impl Reply {
    fn new(status: StatusCode, outcome: Outcome, message: impl Into<String>) -> Self {
        Self { status, outcome, body: json!({ "message": message.into() }), retry_after: None }
    }

    fn stored(status: StatusCode, outcome: Outcome, message: String, redeployment: &Redeployment) -> Self {
        let body = json!({
            "message": message,
            "redeployment": redeployment.name_any(),
            "services": planned_services(redeployment),
            "decisions": redeployment.spec.decisions,
        });
        Self { status, outcome, body, retry_after: None }
    }

    /// Adds, per Service of the App, whether it is deployed or why not.
    fn with_decisions(mut self, decisions: &[ServiceDecision]) -> Self {
        self.body["decisions"] = serde_json::to_value(decisions).unwrap_or_default();
        self
    }

    fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// Until the hook index has loaded every hook Secret, an unknown hook id
    /// may just not be loaded yet: the caller is told to retry, not that the
    /// hook does not exist.
    fn starting() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Outcome::starting,
            "the operator is starting: its caches are not loaded yet; retry shortly",
        )
        .retry_after(1)
    }

    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            Outcome::not_found,
            "no redeployment hook at this URL: copy the URL from the App's hook Secret (key `url`)",
        )
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// What was learnt about the call, for the metrics and the App's delivery history.
#[derive(Default)]
struct Seen {
    provider: Option<Provider>,
    kind: Option<EventKind>,
    /// Namespace and name of the App, once the URL's token named one.
    app: Option<(String, String)>,
    event: String,
    delivery_id: Option<String>,
    dry_run: bool,
}

impl Seen {
    /// The call as the App's `status.recentDeliveries` keeps it.
    fn delivery(&self, reply: &Reply) -> Delivery {
        let redeployment = reply.body["redeployment"].as_str().map(str::to_owned);
        let message = reply.body["message"].as_str().unwrap_or_default();
        Delivery {
            time: deliveries::now(),
            provider: self.provider,
            event: self.event.clone(),
            delivery_id: self.delivery_id.clone(),
            code: reply.status.as_u16(),
            reason: redeployment.is_none().then(|| message.chars().take(1024).collect()),
            redeployment,
            dry_run: self.dry_run,
        }
    }
}

pub async fn redeploy(
    State(state): State<Arc<HookState>>,
    Path((id, token)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    let started = Instant::now();
    let mut seen = Seen::default();
    let reply = match accept(&state, &id, &token, query.as_deref(), &headers, body, &mut seen).await {
        Ok(reply) | Err(reply) => reply,
    };
    state.context.metrics.hook_answered(
        ProviderLabel::from(seen.provider),
        EventLabel::from(seen.kind),
        reply.outcome,
        started.elapsed(),
    );
    if let Some((namespace, app)) = &seen.app {
        state.deliveries.record(namespace, app, seen.delivery(&reply));
    }
    if reply.status.is_server_error() {
        tracing::warn!(status = %reply.status, body = %reply.body, "hook call not accepted");
    } else {
        tracing::debug!(status = %reply.status, body = %reply.body, "hook call answered");
    }
    reply
}

async fn accept(
    state: &HookState,
    id: &str,
    token: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
    seen: &mut Seen,
) -> Result<Reply, Reply> {
    let context = &state.context;
    if !context.caches.is_synced() {
        return Err(Reply::starting());
    }
    let target = context.caches.hooks.authenticate(id, token).ok_or_else(Reply::not_found)?;
    let app = context.caches.app(&target.namespace, &target.app).ok_or_else(Reply::not_found)?;
    seen.app = Some((target.namespace.clone(), target.app.clone()));
    let _permit = state.permit(&target.namespace, &target.app).ok_or_else(|| {
        Reply::new(
            StatusCode::TOO_MANY_REQUESTS,
            Outcome::rate_limited,
            format!(
                "App `{}` is already handling {} hook calls: retry after the Retry-After seconds",
                target.app, state.limits.concurrent_per_app
            ),
        )
        .retry_after(1)
    })?;
    let (body, _reservation) = read_body(headers, body, state).await?;

    let event = match providers::parse(headers, &body) {
        Ok(event) => event,
        Err(error) => return Err(unreadable(state, &app, headers, &body, error).await),
    };
    seen.provider = Some(event.provider);
    seen.kind = Some(event.kind);
    seen.event.clone_from(&event.event);
    seen.delivery_id.clone_from(&event.delivery_id);
    // Authentication first: an unsigned call to an App that requires
    // signatures learns nothing more than that (401), whatever it claims to be.
    let signed = verify_signature(state, &app, &event, headers, &body).await?;
    check_provider_allowed(&app, event.provider)?;

    let form_body = providers::is_form(headers).then_some(body.as_ref());
    let modifiers = Modifiers::parse(query, form_body).map_err(unprocessable)?;
    seen.dry_run = modifiers.dry_run;
    if signed == Signed::Yes {
        check_signed_modifiers(&event, query, &modifiers)?;
    }
    let services = context.caches.services_of(&target.namespace, &target.app);
    if matches!(event.kind, EventKind::Ping | EventKind::Ignored) {
        let what = if event.kind == EventKind::Ping { "ping received" } else { "event acknowledged and ignored" };
        let message = format!("{what} ({} `{}`): nothing to deploy", event.provider.display_name(), event.event);
        let decisions = nothing_deployed(&services, &message);
        return Ok(Reply::new(StatusCode::OK, Outcome::ignored, message).with_decisions(&decisions));
    }
    let profiles = context.caches.profiles_of(&target.namespace, &target.app);
    let plan = plan::plan_with_profiles(&event, &app, &services, &profiles, &modifiers).map_err(unprocessable)?;
    if plan.is_empty() {
        let reason = plan.reason.clone().unwrap_or_else(|| "no Service matched".into());
        let dry = if modifiers.dry_run { "dry run: " } else { "" };
        let reply = Reply::new(StatusCode::OK, Outcome::no_match, format!("{dry}nothing to deploy: {reason}"));
        return Ok(reply.with_decisions(&plan.decisions));
    }

    let continuous = app.spec.github.as_ref().is_some_and(|g| g.continuous_deploy);
    let via_github = continuous && event.provider == Provider::GitHub && event.kind == EventKind::Push;
    if modifiers.dry_run {
        return Ok(dry_run(&plan, via_github));
    }
    if via_github {
        return Ok(create_github_deployment(state, &app, &event, &modifiers).await?.with_decisions(&plan.decisions));
    }

    let signed_body = (signed == Signed::Yes).then_some(body.as_ref());
    let redeployment = record::redeployment(&app, &event, signed_body, &modifiers, &plan, Timestamp::now());
    store(context, redeployment, signed).await
}

/// The answer to `dry_run=1`: what a real call would deploy, and nothing stored.
fn dry_run(plan: &plan::Plan, via_github: bool) -> Reply {
    let services: Vec<&str> = plan.services.iter().map(|p| p.service.as_str()).collect();
    let what = if via_github {
        "a real call would create a GitHub Deployment (continuous deploy), whose event would deploy"
    } else {
        "a real call would store a Redeployment deploying"
    };
    let mut reply = Reply::new(
        StatusCode::OK,
        Outcome::dry_run,
        format!("dry run: {what} {}; nothing was stored or deployed", services.join(", ")),
    );
    reply.body["dryRun"] = true.into();
    reply.body["services"] = services.into();
    reply.body["plan"] = serde_json::to_value(&plan.services).unwrap_or_default();
    reply.with_decisions(&plan.decisions)
}

/// Every Service of the App, deploying nothing, for `reason`.
fn nothing_deployed(services: &[Service], reason: &str) -> Vec<ServiceDecision> {
    let mut decisions: Vec<ServiceDecision> = services
        .iter()
        .map(|s| ServiceDecision {
            service: s.name_any(),
            decision: Decision::NothingDeployed,
            reason: reason.chars().take(1024).collect(),
        })
        .collect();
    decisions.sort_by(|a, b| a.service.cmp(&b.service));
    decisions
}

/// Whether the call's signature was verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signed {
    Yes,
    /// The App configures no signature: the URL token is the credential.
    No,
}

/// Signed calls: the signature covers the body only, never the query.
/// A call whose signed payload names the commit (a push, a deployment) cannot
/// have it replaced by `git_ref=`, from the query or a form field;
/// `services=` and `deployment_profile=` may still narrow the selection. A
/// signed call without Git information may name its ref only in the signed
/// form body, so a captured call cannot be replayed with another ref.
fn check_signed_modifiers(event: &HookEvent, query: Option<&str>, modifiers: &Modifiers) -> Result<(), Reply> {
    if modifiers.git_ref.is_none() && modifiers.service_refs.is_empty() {
        return Ok(());
    }
    let refuse = |message: &str| Err(Reply::new(StatusCode::UNPROCESSABLE_ENTITY, Outcome::unprocessable, message));
    if matches!(event.kind, EventKind::Push | EventKind::Deployment) {
        let what = if modifiers.git_ref.is_some() { "git_ref" } else { "a per-Service ref (services=name:ref)" };
        return refuse(&format!(
            "{what} cannot be used with this call: its signed payload names the commit to build, and unsigned \
             modifiers cannot override it (services= and deployment_profile= may still narrow what is deployed)"
        ));
    }
    if !modifiers.service_refs.is_empty() {
        return refuse(
            "a per-Service ref (services=name:ref) cannot be given in the query of a signed call: the signature \
             covers only the body; send git_ref in the signed form body instead",
        );
    }
    let from_query = Modifiers::parse(query, None).map_err(unprocessable)?.git_ref.is_some();
    if from_query {
        return refuse(
            "git_ref cannot be given in the query of a signed call: the signature covers only the body; send it \
             in the signed form body (Content-Type: application/x-www-form-urlencoded, `git_ref=<ref>`)",
        );
    }
    Ok(())
}

/// Continuous deploy: the push becomes a GitHub Deployment of the App's
/// environment, and the `deployment` event GitHub then sends deploys it.
/// GitHub holds the durable record; nothing is stored here.
async fn create_github_deployment(
    state: &HookState,
    app: &App,
    event: &HookEvent,
    modifiers: &Modifiers,
) -> Result<Reply, Reply> {
    let context = &state.context;
    let git_ref = [&modifiers.git_ref, &event.sha, &event.branch, &event.tag].into_iter().find_map(|r| r.clone());
    let git_ref = git_ref.ok_or_else(|| {
        Reply::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            Outcome::unprocessable,
            "continuous deploy: the push names no commit, branch or tag to deploy",
        )
    })?;
    let github_error = |error: crate::github::GitHubError| {
        tracing::warn!(app = %app.name_any(), namespace = ?app.namespace(), %error, "creating a GitHub Deployment failed");
        publish_app_event(
            state,
            app,
            "GitHubDeploymentFailed",
            format!("continuous deploy: creating the GitHub Deployment of a push failed: {error}"),
        );
        Reply::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Outcome::unavailable,
            "continuous deploy: creating the GitHub Deployment failed; nothing was deployed: retry later (the App's \
             owner can see why in the App's Events)",
        )
        .retry_after(10)
    };
    let deployments = Deployments::for_app(&context.client, &context.http, app, &context.settings.github_api_url)
        .await
        .map_err(github_error)?;
    let environment = crate::github::environment(app);
    let description = match &event.sender {
        Some(sender) => format!("redeploy-operator: push by {sender}"),
        None => "redeploy-operator: push".to_string(),
    };
    let id = deployments.create(&git_ref, &environment, &description).await.map_err(github_error)?;
    let mut reply = Reply::new(
        StatusCode::ACCEPTED,
        Outcome::accepted,
        format!(
            "continuous deploy: GitHub Deployment {id} of {git_ref} to {environment} created; GitHub's deployment event deploys it"
        ),
    );
    reply.body["githubDeployment"] = id.into();
    Ok(reply)
}

/// Creates the Redeployment; a redelivery gets the original one back.
async fn store(context: &Context, redeployment: Redeployment, signed: Signed) -> Result<Reply, Reply> {
    let namespace = redeployment.namespace().unwrap_or_default();
    let api = Api::<Redeployment>::namespaced(context.client.clone(), &namespace);
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    match within_api_timeout(api.create(&params, &redeployment)).await {
        Ok(created) => {
            // The version the reconciler's first pass will find in its cache: no need to read it again.
            context.known_versions.wrote(&created, None);
            context.caches.own_redeployments.created(&created);
            Ok(Reply::stored(
                StatusCode::ACCEPTED,
                Outcome::accepted,
                format!(
                    "accepted: Redeployment {} will deploy {}",
                    created.name_any(),
                    planned_services(&created).join(", ")
                ),
                &created,
            ))
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let existing = within_api_timeout(api.get(&redeployment.name_any())).await.map_err(unavailable)?;
            if !same_delivery(&existing, &redeployment) {
                return Err(unavailable(kube::Error::Api(status)));
            }
            let message = match signed {
                Signed::Yes => format!(
                    "already accepted: this signed body was delivered before, as Redeployment {}; it is not deployed \
                     twice (a signed call is executed once per body: send a new body to deploy again)",
                    existing.name_any()
                ),
                Signed::No => format!(
                    "already accepted: this delivery is Redeployment {}; it is not deployed twice",
                    existing.name_any()
                ),
            };
            Ok(Reply::stored(StatusCode::OK, Outcome::redelivery, message, &existing))
        }
        Err(error) => Err(unavailable(error)),
    }
}

/// Reads the body within the limits, once its bytes fit in the budget for
/// bodies in flight. The permit returned holds them until it is dropped. A
/// body that does not fit is dropped as it arrives, and the call told to retry.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    state: &HookState,
) -> Result<(axum::body::Bytes, OwnedSemaphorePermit), Reply> {
    let limits = &state.limits;
    let too_large = || {
        Reply::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Outcome::too_large,
            format!("the body is larger than the hook accepts ({} bytes)", limits.body_bytes),
        )
    };
    // The server knows the exact length from `Content-Length`, and knows an
    // HTTP/1 request with neither it nor chunked encoding has no body.
    let exact = axum::body::HttpBody::size_hint(&body).exact().and_then(|length| usize::try_from(length).ok());
    let declared = exact.or_else(|| headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limits.body_bytes) {
        return Err(too_large());
    }
    let reserved = declared.unwrap_or(limits.body_bytes);
    // `validate` keeps the body limit within u32.
    let permits = u32::try_from(reserved).unwrap_or(u32::MAX);
    let Ok(reservation) = state.body_budget.clone().try_acquire_many_owned(permits) else {
        discard(body, limits).await;
        return Err(Reply::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Outcome::overloaded,
            format!(
                "the operator is already reading as many hook bodies as its memory allows ({} MiB in flight): \
                 nothing was done; retry after the Retry-After seconds",
                limits.bodies_in_flight_bytes / (1024 * 1024)
            ),
        )
        .retry_after(1));
    };
    let read = async {
        // The declared length is allocated once; a body of unknown length grows.
        let mut bytes = Vec::with_capacity(declared.unwrap_or(0));
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else { continue };
            if bytes.len() + data.len() > limits.body_bytes {
                return Ok(None);
            }
            bytes.extend_from_slice(&data);
        }
        Ok::<_, axum::Error>(Some(bytes))
    };
    match tokio::time::timeout(limits.body_timeout, read).await {
        Ok(Ok(Some(bytes))) => Ok((bytes.into(), reservation)),
        Ok(Ok(None)) => Err(too_large()),
        Ok(Err(error)) => Err(Reply::new(
            StatusCode::BAD_REQUEST,
            Outcome::bad_request,
            format!("the body could not be read: {error}"),
        )),
        Err(_) => Err(Reply::new(
            StatusCode::REQUEST_TIMEOUT,
            Outcome::timeout,
            format!("the body was not received within {:?}", limits.body_timeout),
        )),
    }
}

/// Reads a body the call will not use and drops each chunk as it comes, up to
/// the body limit and timeout: a client still sending it then hears the
/// answer, where closing the connection under it would reset it first.
async fn discard(mut body: Body, limits: &Limits) {
    let drain = async {
        let mut seen = 0;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |data| data.len());
            if seen > limits.body_bytes {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(limits.body_timeout, drain).await;
}

fn check_provider_allowed(app: &App, provider: Provider) -> Result<(), Reply> {
    let allowed = &app.spec.hook.allowed_providers;
    if allowed.is_empty() || allowed.contains(&provider) {
        return Ok(());
    }
    Err(Reply::new(
        StatusCode::FORBIDDEN,
        Outcome::forbidden,
        format!(
            "App `{}` does not accept calls from {} (spec.hook.allowedProviders)",
            app.name_any(),
            provider.display_name()
        ),
    ))
}

/// Checks the signature the call must carry ([`signature::requirement`]:
/// fail closed once the App configures any signature secret).
async fn verify_signature(
    state: &HookState,
    app: &App,
    event: &HookEvent,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Signed, Reply> {
    let secrets = &app.spec.hook.signature_secrets;
    let unauthorized = |message: String| {
        Reply::new(
            StatusCode::UNAUTHORIZED,
            Outcome::unauthorized,
            format!("{message}; this App accepts only signed calls: {}", signature::accepted(secrets)),
        )
    };
    let (check, reference) = match signature::requirement(secrets, event.provider) {
        Requirement::TokenOnly => return Ok(Signed::No),
        Requirement::Refuse => {
            return Err(unauthorized(format!(
                "this call (read as {}) carries no signature this App can check",
                event.provider.display_name()
            )));
        }
        Requirement::Verify(check, reference) => (check, reference),
    };
    let key = signature_key(state, app, check, reference).await?;
    signature::verify(check, &key, headers, body).map_err(|error| match error {
        SignatureError::Malformed { .. } => {
            Reply::new(StatusCode::BAD_REQUEST, Outcome::bad_request, error.to_string())
        }
        SignatureError::Missing { .. } | SignatureError::Mismatch { .. } => unauthorized(error.to_string()),
    })?;
    Ok(Signed::Yes)
}

/// The answer to a body the parsers cannot read. An App that requires
/// signatures tells a caller without a valid one only that (401): the parser's
/// messages, and what they reveal of how a body is read, reach only callers
/// holding one of its keys.
async fn unreadable(
    state: &HookState,
    app: &App,
    headers: &HeaderMap,
    body: &[u8],
    error: providers::ParseError,
) -> Reply {
    let bad_request = || Reply::new(StatusCode::BAD_REQUEST, Outcome::bad_request, error.to_string());
    let secrets = &app.spec.hook.signature_secrets;
    if secrets.is_empty() {
        return bad_request();
    }
    for check in SignatureCheck::ALL {
        let Some(reference) = check.secret(secrets) else { continue };
        if !check.headers().iter().any(|header| headers.contains_key(*header)) {
            continue;
        }
        let Ok(key) = signature_key(state, app, check, reference).await else { continue };
        if signature::verify(check, &key, headers, body).is_ok() {
            return bad_request();
        }
    }
    Reply::new(
        StatusCode::UNAUTHORIZED,
        Outcome::unauthorized,
        format!(
            "this call carries no valid signature; this App accepts only signed calls: {}",
            signature::accepted(secrets)
        ),
    )
}

/// The key of `check` from the App's Secret. What is wrong with the App's
/// configuration goes to its owner (an Event on the App, and the log), never
/// to the caller, who gets the class of the problem only.
async fn signature_key(
    state: &HookState,
    app: &App,
    check: SignatureCheck,
    reference: &SecretKeyRef,
) -> Result<Vec<u8>, Reply> {
    let namespace = app.namespace().unwrap_or_default();
    let keys = &state.context.caches.signature_keys;
    if let Some(key) = keys.get(&namespace, &reference.name, &reference.key) {
        return Ok(key);
    }
    let secrets = Api::<Secret>::namespaced(state.context.client.clone(), &namespace);
    let secret = within_api_timeout(secrets.get_opt(&reference.name)).await.map_err(|error| {
        tracing::warn!(app = %app.name_any(), %namespace, %error, "reading a signature key failed");
        Reply::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Outcome::unavailable,
            "the operator could not read this App's signature configuration from the Kubernetes API server; \
                 nothing was deployed: retry",
        )
        .retry_after(5)
    })?;
    let problem = match secret {
        None => "does not exist",
        Some(secret) => match secret.data.as_ref().and_then(|data| data.get(&reference.key)) {
            None => "has no such key",
            Some(value) if value.0.is_empty() => "holds an empty value under that key",
            Some(value) => {
                keys.remember(&secret, &reference.key, &value.0);
                return Ok(value.0.clone());
            }
        },
    };
    let note = format!(
        "spec.hook.signatureSecrets.{} names Secret {namespace}/{} key `{}`, which {problem}: hook calls that must \
         carry this signature are refused until it is fixed",
        check.field(),
        reference.name,
        reference.key
    );
    tracing::warn!(app = %app.name_any(), %namespace, "{note}");
    publish_app_event(state, app, "SignatureKeyMissing", note);
    Err(Reply::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        Outcome::unavailable,
        "this App requires signed calls, but its hook configuration is incomplete: nothing was deployed; its owner \
         can see why in the App's Events",
    ))
}

/// A Warning Event on the App about its configuration, published in the
/// background: only calls that are refused publish one, and they are not
/// held up by it (the recorder folds repeats into one Event series).
fn publish_app_event(state: &HookState, app: &App, reason: &'static str, note: String) {
    let context = state.context.clone();
    let reference = app.object_ref(&());
    tokio::spawn(async move {
        let event = Event {
            type_: EventType::Warning,
            reason: reason.to_string(),
            note: Some(crate::text::bounded(&note, 1000).to_owned()),
            action: "HandleHook".into(),
            secondary: None,
        };
        if let Err(error) = context.recorder.publish(&event, &reference).await {
            tracing::debug!(%error, "publishing an Event failed");
        }
    });
}

fn unprocessable(error: plan::PlanError) -> Reply {
    Reply::new(StatusCode::UNPROCESSABLE_ENTITY, Outcome::unprocessable, error.to_string())
}

/// The API server did not store the Redeployment: the caller learns that
/// and that it may retry; the error itself goes to the log.
fn unavailable(error: kube::Error) -> Reply {
    tracing::warn!(%error, "the API server did not store a Redeployment");
    if matches!(&error, kube::Error::Service(e) if e.is::<tokio::time::error::Elapsed>()) {
        // The API server may still store it: a redelivery (same delivery id,
        // or same signed body) then finds it instead of deploying twice.
        return Reply::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Outcome::unavailable,
            format!(
                "the Kubernetes API server did not answer within {} s: retry (a redelivery of this call is \
                 deployed at most once)",
                API_TIMEOUT.as_secs()
            ),
        )
        .retry_after(5);
    }
    Reply::new(
        StatusCode::SERVICE_UNAVAILABLE,
        Outcome::unavailable,
        "the Kubernetes API server did not store the Redeployment; nothing was deployed: retry",
    )
    .retry_after(5)
}

#[cfg(test)]
mod tests {
    use axum::http::Request;
    use kube::runtime::{events::Recorder, reflector};
    use tower::ServiceExt;

    use super::*;
    use crate::{context::Caches, hook::index::HookIndex, metrics::Metrics};

    /// The hook's state on caches that are never filled, with a client that
    /// points at no API server (nothing here may call one).
    fn state(synced: bool, limits: Limits) -> anyhow::Result<(Arc<HookState>, Arc<Metrics>)> {
        let client = kube::Client::try_from(kube::Config::new("http://127.0.0.1:1".parse()?))?;
        let caches = Caches {
            apps: reflector::store().0,
            services: reflector::store().0,
            profiles: reflector::store().0,
            redeployments: reflector::store().0,
            own_redeployments: crate::cache::OwnRedeployments {
                writer: crate::cache::SharedWriter::new(reflector::store().1),
                trigger: crate::cache::Trigger::new().0,
            },
            jobs: reflector::store().0,
            service_index: Default::default(),
            workloads: Default::default(),
            hooks: HookIndex::default(),
            signature_keys: Default::default(),
            listed: Vec::new(),
            synced: Arc::new(synced.into()),
        };
        let metrics = Arc::new(Metrics::default());
        let context = Arc::new(Context {
            recorder: Recorder::new(client.clone(), "redeploy-operator".into()),
            client,
            http: crate::http::build_client()?,
            settings: crate::context::Settings {
                public_url: "http://hooks.example.com".into(),
                github_api_url: crate::github::DEFAULT_API_URL.into(),
                builder_image: crate::build::BUILDKIT_IMAGE.into(),
                insecure_registries: Vec::new(),
            },
            caches,
            metrics: metrics.clone(),
            known_versions: Default::default(),
            held_statuses: Default::default(),
        });
        Ok((Arc::new(HookState::new(context, limits)), metrics))
    }

    fn router(synced: bool) -> anyhow::Result<(axum::Router, Arc<Metrics>)> {
        let (state, metrics) = state(synced, Limits::default())?;
        Ok((crate::hook::routes::hook_router(state), metrics))
    }

    fn declaring(length: usize) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        headers
    }

    /// A body that sends `chunks` and then never ends.
    fn endless(chunks: Vec<&'static [u8]>) -> Body {
        let chunks = futures::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
        Body::from_stream(futures::StreamExt::chain(chunks, futures::stream::pending()))
    }

    async fn post(router: axum::Router) -> anyhow::Result<(StatusCode, HeaderMap, serde_json::Value)> {
        let request = Request::post("/stacks/redeploy/some-id/some-token").body(Body::empty())?;
        let response = router.oneshot(request).await?;
        let (status, headers) = (response.status(), response.headers().clone());
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
        Ok((status, headers, serde_json::from_slice(&body)?))
    }

    async fn read(headers: &HeaderMap, body: Body, state: &HookState) -> anyhow::Result<(usize, OwnedSemaphorePermit)> {
        let (bytes, reservation) = read_body(headers, body, state).await.map_err(|r| anyhow::anyhow!("{r:?}"))?;
        Ok((bytes.len(), reservation))
    }

    #[tokio::test]
    async fn bodies_beyond_the_global_budget_are_told_to_retry_and_not_kept() -> anyhow::Result<()> {
        let limits = Limits { body_bytes: 100, bodies_in_flight_bytes: 250, ..Limits::default() };
        let (state, _) = state(true, limits)?;
        let (length, held) = read(&declaring(100), Body::from(vec![b'a'; 100]), &state).await?;
        assert_eq!(length, 100);
        // A body of unknown length counts as the body limit: 200 of 250 bytes taken.
        let reading = tokio::spawn({
            let state = state.clone();
            async move { read_body(&HeaderMap::new(), endless(vec![b"{"]), &state).await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        let refused = read_body(&declaring(51), Body::from(vec![b'x'; 51]), &state).await.err();
        let refused = refused.ok_or_else(|| anyhow::anyhow!("a body beyond the budget was read"))?;
        assert_eq!(
            (refused.status, refused.outcome, refused.retry_after),
            (StatusCode::SERVICE_UNAVAILABLE, Outcome::overloaded, Some(1))
        );
        let message = refused.body["message"].as_str().unwrap_or_default();
        assert!(message.contains("retry"), "{message}");
        let (length, _) = read(&declaring(50), Body::from(vec![b'b'; 50]), &state).await?;
        assert_eq!(length, 50, "what is left fits");
        // Bytes come back once a call is done with its body.
        reading.abort();
        drop(held);
        let (length, _) = read(&HeaderMap::new(), Body::from(vec![b'c'; 100]), &state).await?;
        assert_eq!(length, 100);
        let beyond = read_body(&HeaderMap::new(), Body::from(vec![b'd'; 101]), &state).await.err();
        assert_eq!(beyond.map(|r| r.status), Some(StatusCode::PAYLOAD_TOO_LARGE), "undeclared length beyond the limit");
        Ok(())
    }

    #[tokio::test]
    async fn a_call_without_a_body_needs_no_budget() -> anyhow::Result<()> {
        let limits = Limits { body_bytes: 100, bodies_in_flight_bytes: 100, ..Limits::default() };
        let (state, _) = state(true, limits)?;
        let (_, _held) = read(&declaring(100), Body::from(vec![b'a'; 100]), &state).await?;
        // As hyper gives a POST that declares neither a length nor chunks.
        let (length, _) = read(&HeaderMap::new(), Body::empty(), &state).await?;
        assert_eq!(length, 0);
        Ok(())
    }

    #[test]
    fn a_budget_below_the_body_limit_is_refused() {
        let limits = Limits { body_bytes: 100, bodies_in_flight_bytes: 99, ..Limits::default() };
        assert!(matches!(limits.validate(), Err(LimitsError::BudgetBelowBodyLimit { .. })));
        assert!(Limits::default().validate().is_ok());
    }

    #[tokio::test]
    async fn before_the_caches_are_loaded_a_call_is_told_to_retry() -> anyhow::Result<()> {
        let (router, metrics) = router(false)?;
        let (status, headers, body) = post(router).await?;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(headers.get(header::RETRY_AFTER).map(|v| v.as_bytes()), Some(&b"1"[..]));
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains("starting") && message.contains("retry"), "{message}");
        let rendered = metrics.render();
        assert!(
            rendered
                .contains(r#"redeploy_hook_requests_total{provider="unknown",event="unknown",outcome="starting"} 1"#),
            "{rendered}"
        );
        Ok(())
    }

    #[test]
    fn signed_git_calls_refuse_per_service_refs_as_they_refuse_git_ref() {
        let push = HookEvent { kind: EventKind::Push, ..HookEvent::default() };
        let refusal = |query: &str, event: &HookEvent| {
            let modifiers = Modifiers::parse(Some(query), None).map_err(|e| e.to_string())?;
            check_signed_modifiers(event, Some(query), &modifiers)
                .map_err(|reply| format!("{} {}", reply.status, reply.body["message"]))
        };
        let by_git_ref = refusal("git_ref=v1", &push).err().unwrap_or_default();
        let by_service_ref = refusal("services=web:v1,worker", &push).err().unwrap_or_default();
        assert!(by_git_ref.starts_with("422") && by_service_ref.starts_with("422"), "{by_git_ref} / {by_service_ref}");
        let reason = |message: &str| message.split_once(" cannot be used").map(|(_, r)| r.to_owned());
        assert_eq!(reason(&by_git_ref), reason(&by_service_ref), "the same reason");
        assert!(reason(&by_service_ref).is_some(), "{by_service_ref}");
        assert!(refusal("services=web,worker", &push).is_ok(), "plain services= may still narrow");
        // A signed call without Git information cannot take one from the unsigned query either.
        let bare = HookEvent::default();
        assert!(refusal("services=web:v1", &bare).err().unwrap_or_default().contains("signature covers only the body"));
    }

    #[tokio::test]
    async fn once_the_caches_are_loaded_an_unknown_hook_is_404() -> anyhow::Result<()> {
        let (router, _) = router(true)?;
        let (status, headers, body) = post(router).await?;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert!(!headers.contains_key(header::RETRY_AFTER));
        Ok(())
    }
}
