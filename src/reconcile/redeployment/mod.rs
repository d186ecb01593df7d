//! The Redeployment reconciler: executes a stored plan in passes of
//! [`observe`] (every read, into one value), [`decide`] (a pure function of
//! what was observed and the time: the next status and the effects) and
//! [`execute`] (carry the effects out, then write the status). Every step is
//! read back from the API server (the Redeployment's status, Jobs named after
//! it, the workloads' annotations), so an operator restarted at any point goes
//! on where it stood and never builds or rolls out the same thing twice.
//! That lets a status whose write may wait (progress, and a start the world
//! shows) be [`held`] in memory for the next pass instead of written: a
//! rollout over within [`decide::PROGRESS_EVERY`] is written once, finished.

mod decide;
mod execute;
mod held;
mod observe;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, ResourceExt,
    runtime::{
        controller::Action,
        finalizer::{Event as Finalizer, finalizer},
    },
};

pub use self::{
    decide::{is_done, overall_phase},
    held::HeldStatuses,
};
use super::Error;
use crate::{
    api::{CANCEL_FINALIZER, Redeployment},
    cache::{
        Guarded,
        known::{self, Freshness},
    },
    context::Context,
};

pub const CONTROLLER: &str = "redeployment";

pub async fn reconcile(guard: Arc<Guarded<Redeployment>>, context: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let redeployment = match &guard.0 {
        Ok(redeployment) => Arc::new(redeployment.clone()),
        Err(invalid) => {
            return Err(Error::Malformed {
                kind: "Redeployment",
                namespace: invalid.metadata.namespace.clone().unwrap_or_default(),
                name: invalid.metadata.name.clone().unwrap_or_default(),
                message: invalid.error.clone(),
            });
        }
    };
    let namespace = redeployment.namespace().ok_or_else(|| Error::NoNamespace(redeployment.name_any()))?;
    let api = Api::<Redeployment>::namespaced(context.client.clone(), &namespace);
    let action = finalizer(&api, CANCEL_FINALIZER, redeployment, |event| async {
        match event {
            Finalizer::Apply(redeployment) => apply(redeployment, &context).await,
            Finalizer::Cleanup(redeployment) => cancel(&redeployment, &context).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        kube::runtime::finalizer::Error::AddFinalizer(e) | kube::runtime::finalizer::Error::RemoveFinalizer(e) => {
            Error::Kube(e)
        }
        other => Error::Finalizer(other.to_string()),
    })?;
    context.metrics.reconciled(CONTROLLER, started.elapsed());
    Ok(action)
}

async fn apply(cached: Arc<Redeployment>, context: &Context) -> Result<Action, Error> {
    // A finished Redeployment never starts again: the cached copy tells,
    // without a read (a start reconciles every one kept in history).
    if decide::is_done(&cached) {
        // Cached finished (the echo of our last write wakes it): nothing is
        // left to wait for.
        context.known_versions.forget::<Redeployment>(&cached.namespace().unwrap_or_default(), &cached.name_any());
        return Ok(Action::await_change());
    }
    // The cache can lag behind our own last status write (a workload event
    // may wake us before the watch echoes it): trust it only at the version
    // this process last wrote or read. A finished one (left to tell GitHub)
    // is read whole: the cache keeps finished ones only as history.
    let freshness = if cached.is_finished() { Freshness::Unknown } else { context.known_versions.freshness(&*cached) };
    let mut redeployment = match freshness {
        // The pass's own copy (a 500-Service Redeployment is large): the one this call was given.
        Freshness::Current => Arc::unwrap_or_clone(cached),
        Freshness::Behind => return Ok(Action::requeue(known::ECHO_WAIT)),
        Freshness::Unknown => {
            let api = Api::<Redeployment>::namespaced(context.client.clone(), &cached.namespace().unwrap_or_default());
            let Some(read) = api.get_opt(&cached.name_any()).await? else {
                context.caches.own_redeployments.gone(&cached.namespace().unwrap_or_default(), &cached.name_any());
                return Ok(Action::await_change());
            };
            if !read.is_finished() {
                context.known_versions.saw(&read);
            }
            read
        }
    };
    // A pass goes on from the status an earlier one held back, if any;
    // `replaced` keeps what the API server has.
    let replaced = context.held_statuses.take(&redeployment).map(|held| redeployment.status.replace(held));
    let observed = observe::observe(redeployment, context).await?;
    let decision = decide::decide(&observed, Timestamp::now());
    let stored = replaced.as_ref().map_or(observed.redeployment.status.as_ref(), Option::as_ref);
    execute::execute(&observed, decision, stored, context).await
}

/// Deleting a Redeployment cancels what it still runs.
async fn cancel(redeployment: &Redeployment, context: &Context) -> Result<Action, Error> {
    let mut redeployment = redeployment.clone();
    let replaced = context.held_statuses.take_deleted(&redeployment).map(|held| redeployment.status.replace(held));
    let observed = observe::observe_deleted(redeployment, context);
    let decision = decide::decide_cancel(&observed, Timestamp::now());
    let stored = replaced.as_ref().map_or(observed.redeployment.status.as_ref(), Option::as_ref);
    execute::execute(&observed, decision, stored, context).await
}
