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
    // may wake us before the watch echoes it): trust it only at the version
    // this process last wrote or read.
    let redeployment = match context.known_versions.freshness(cached) {
        Freshness::Current => cached.clone(),
        Freshness::Behind => return Ok(Action::requeue(ECHO_WAIT)),
        Freshness::Unknown => {
            let api = Api::<Redeployment>::namespaced(context.client.clone(), &cached.namespace().unwrap_or_default());
            let Some(read) = api.get_opt(&cached.name_any()).await? else { return Ok(Action::await_change()) };
            context.known_versions.saw(&read);
            read
        }
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

/// How long a pass that found the cache behind our own write waits for the
/// watch to echo it; the echo itself wakes the Redeployment sooner.
const ECHO_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// The version of each unfinished Redeployment this process last wrote or
/// read. A cached copy at that version holds everything this process did to
/// it, so a pass trusts it without a read: most passes are woken by the
/// watch echoing our own status write.
#[derive(Default)]
pub struct KnownVersions(Mutex<HashMap<(String, String), Known>>);

struct Known {
    version: String,
    /// The cached version a pass already waited on once.
    waited_at: Option<String>,
}

/// What a cached copy is worth to a pass.
#[derive(Debug, PartialEq)]
enum Freshness {
    /// At the version we know: use it.
    Current,
    /// Another version than ours, seen for the first time: most likely the
    /// watch has not echoed our last write yet, so wait for the echo.
    Behind,
    /// Nothing known, or still not our version after waiting once (someone
    /// else wrote it): read it.
    Unknown,
}

impl KnownVersions {
    fn freshness(&self, cached: &Redeployment) -> Freshness {
        let Some(version) = cached.resource_version() else { return Freshness::Unknown };
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(known) = known.get_mut(&key(cached)) else { return Freshness::Unknown };
        if known.version == version {
            Freshness::Current
        } else if known.waited_at.as_deref() != Some(version.as_str()) {
            known.waited_at = Some(version);
            Freshness::Behind
        } else {
            Freshness::Unknown
        }
    }

    /// Notes the Redeployment as the API server gave it (read, or returned by
    /// our status write); a finished one is forgotten (a pass that finds it
    /// unfinished in the cache reads it).
    pub(super) fn saw(&self, current: &Redeployment) {
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let finished = current.status.as_ref().and_then(|s| s.phase).is_some_and(crate::api::Phase::is_finished);
        match current.resource_version() {
            Some(version) if !finished => known.insert(key(current), Known { version, waited_at: None }),
            _ => known.remove(&key(current)),
        };
    }
}

fn key(redeployment: &Redeployment) -> (String, String) {
    (redeployment.namespace().unwrap_or_default(), redeployment.name_any())
}

#[cfg(test)]
mod known_versions_tests {
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
    fn a_cached_copy_is_trusted_at_our_version_waited_on_once_otherwise_read() {
        use Freshness::*;
        let writes = KnownVersions::default();
        assert_eq!(writes.freshness(&at("5", None)), Unknown, "never written or read here: read it");
        writes.saw(&at("5", None));
        assert_eq!(writes.freshness(&at("5", None)), Current);
        writes.saw(&at("7", Some("Deploying")));
        assert_eq!(writes.freshness(&at("5", None)), Behind, "the watch has not echoed our write yet");
        assert_eq!(writes.freshness(&at("7", Some("Deploying"))), Current, "the echo");
        assert_eq!(writes.freshness(&at("8", Some("Deploying"))), Behind, "someone wrote after us: wait once");
        assert_eq!(writes.freshness(&at("8", Some("Deploying"))), Unknown, "still not ours: read it");
        writes.saw(&at("8", Some("Deploying")));
        assert_eq!(writes.freshness(&at("8", Some("Deploying"))), Current);
        writes.saw(&at("9", Some("Succeeded")));
        assert_eq!(writes.freshness(&at("9", Some("Succeeded"))), Unknown, "a finished one is forgotten");
        assert!(writes.0.lock().unwrap_or_else(|e| e.into_inner()).is_empty());
    }
}
