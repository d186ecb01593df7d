//! The reconcilers, one module each, and what they share: the error type
//! and the retry policy.

pub mod app;
mod digest;
pub mod first_pass;
pub mod redeployment;
pub mod service;

use std::{sync::Arc, time::Duration};

use kube::runtime::controller::Action;

use crate::context::Context;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("{kind} {namespace}/{name} is malformed and is skipped: {message}")]
    Malformed { kind: &'static str, namespace: String, name: String, message: String },
    #[error("{0} has no namespace")]
    NoNamespace(String),
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    /// A bounded label for the `reconcile_errors` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Malformed { .. } => "malformed",
            Error::NoNamespace(_) => "no_namespace",
            Error::Finalizer(_) => "finalizer",
        }
    }
}

/// Retries failed reconciliations after a pause; malformed objects are not
/// retried until they change.
pub fn error_policy<K>(controller: &'static str) -> impl Fn(Arc<K>, &Error, Arc<Context>) -> Action {
    move |_, error, context| {
        context.metrics.reconcile_failed(controller, error.metric_label());
        match error {
            Error::Malformed { .. } => {
                tracing::warn!(%error, controller);
                Action::await_change()
            }
            _ => {
                tracing::warn!(%error, controller, "reconciliation failed; retrying");
                Action::requeue(Duration::from_secs(5))
            }
        }
    }
}
