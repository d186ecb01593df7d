//! The Redeployment reconciler: executes a stored plan in passes of
//! [`observe`] (every read, into one value), [`decide`] (a pure function of
//! what was observed and the time: the next status and the effects) and
//! [`execute`] (carry the effects out, then write the status). Every step is
//! read back from the API server (the Redeployment's status, Jobs named after
//! it, the workloads' annotations), so an operator restarted at any point goes
//! on where it stood and never builds or rolls out the same thing twice.

mod decide;
mod execute;
mod observe;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, ResourceExt,
    core::error_boundary::DeserializeGuard,
    runtime::{
        controller::Action,
        finalizer::{Event as Finalizer, finalizer},
    },
};

pub use self::decide::overall_phase;
use super::Error;
use crate::{
    api::{CANCEL_FINALIZER, Redeployment},
    context::Context,
};

pub const CONTROLLER: &str = "redeployment";

pub async fn reconcile(guard: Arc<DeserializeGuard<Redeployment>>, context: Arc<Context>) -> Result<Action, Error> {
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
            Finalizer::Apply(redeployment) => apply(&redeployment, &context).await,
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

async fn apply(cached: &Redeployment, context: &Context) -> Result<Action, Error> {
    // A finished Redeployment never starts again: the cached copy tells,
    // without a read (a start reconciles every one kept in history).
    if decide::is_done(cached) {
        return Ok(Action::await_change());
    }
    // The cache can lag behind our own last status write (a workload event
    // may wake us first): unless it holds what we wrote last, read the
    // Redeployment itself.
    let redeployment = if context.own_writes.is_current(cached) {
        cached.clone()
    } else {
        let api = Api::<Redeployment>::namespaced(context.client.clone(), &cached.namespace().unwrap_or_default());
        let Some(redeployment) = api.get_opt(&cached.name_any()).await? else { return Ok(Action::await_change()) };
        redeployment
    };
    let observed = observe::observe(redeployment, context).await?;
    let decision = decide::decide(&observed, Timestamp::now());
    execute::execute(&observed, decision, context).await
}

/// Deleting a Redeployment cancels what it still runs.
async fn cancel(redeployment: &Redeployment, context: &Context) -> Result<Action, Error> {
    let observed = observe::observe_deleted(redeployment.clone(), context);
    let decision = decide::decide_cancel(&observed, Timestamp::now());
    execute::execute(&observed, decision, context).await
}

/// The resourceVersion of this process's last status write of each
/// unfinished Redeployment. A cached copy at that version holds everything
/// this process did to it, so a pass can trust it without a read: most
/// passes are woken by the watch echoing that very write.
#[derive(Default)]
pub struct OwnWrites(Mutex<HashMap<(String, String), String>>);

impl OwnWrites {
    /// Whether `cached` is at the version of our last write of it.
    fn is_current(&self, cached: &Redeployment) -> bool {
        let Some(version) = cached.resource_version() else { return false };
        let writes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        writes.get(&key(cached)).is_some_and(|written| *written == version)
    }

    /// Notes the Redeployment as our status write returned it; a finished
    /// one is forgotten (a pass that finds it unfinished in the cache reads it).
    pub(super) fn wrote(&self, written: &Redeployment) {
        let mut writes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let finished = written.status.as_ref().and_then(|s| s.phase).is_some_and(crate::api::Phase::is_finished);
        match written.resource_version() {
            Some(version) if !finished => writes.insert(key(written), version),
            _ => writes.remove(&key(written)),
        };
    }
}

fn key(redeployment: &Redeployment) -> (String, String) {
    (redeployment.namespace().unwrap_or_default(), redeployment.name_any())
}

#[cfg(test)]
mod own_writes_tests {
    use serde_json::json;

    use super::*;

    fn at(version: &str, phase: Option<&str>) -> Redeployment {
        let mut object = json!({
            "apiVersion": "redeploy.dev/v1alpha1", "kind": "Redeployment",
            "metadata": { "name": "shop-1", "namespace": "ns", "resourceVersion": version },
            "spec": { "app": "shop", "trigger": { "provider": "generic", "event": "call" } },
        });
        if let Some(phase) = phase {
            object["status"] = json!({ "phase": phase });
        }
        serde_json::from_value(object).unwrap_or_else(|e| panic!("a valid Redeployment: {e}"))
    }

    #[test]
    fn a_cached_copy_is_trusted_only_at_the_version_of_our_last_write() {
        let writes = OwnWrites::default();
        assert!(!writes.is_current(&at("5", None)), "never written here: read it");
        writes.wrote(&at("7", Some("Deploying")));
        assert!(!writes.is_current(&at("5", None)), "the cache has not seen our write yet");
        assert!(writes.is_current(&at("7", Some("Deploying"))));
        assert!(!writes.is_current(&at("8", Some("Deploying"))), "someone wrote after us");
        writes.wrote(&at("9", Some("Succeeded")));
        assert!(!writes.is_current(&at("9", Some("Succeeded"))), "a finished one is forgotten");
        assert!(writes.0.lock().unwrap_or_else(|e| e.into_inner()).is_empty());
    }
}
