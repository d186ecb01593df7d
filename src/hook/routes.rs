//! The hook's routes and the admin routes (`/healthz`, `/readyz`, `/metrics`).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::{get, post},
};
use serde_json::json;

use super::handler::{HookState, Reply, redeploy};
use crate::metrics::Metrics;

pub fn hook_router(state: Arc<HookState>) -> Router {
    Router::new()
        .route("/stacks/redeploy/{id}/{token}", post(redeploy))
        .route("/stacks/redeploy/{id}/{token}/", post(redeploy))
        .fallback(|| async { Reply::not_found() })
        .with_state(state)
}

#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    /// True once every cache has synced.
    pub ready: Arc<AtomicBool>,
}

pub fn admin_router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { axum::Json(json!({ "message": "ok" })) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, axum::Json(json!({ "message": "ready" })))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({ "message": "caches are not synced yet" })))
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.render())
}
