//! Statuses a pass decided and held back instead of writing (see
//! [`decide::may_wait`](super::decide::may_wait)): the next pass over the
//! same version of the Redeployment goes on from the held status, as if it
//! had been written. Held in memory only: a restarted operator (or a new
//! leader) has none, and finds the same start again in the world.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use kube::ResourceExt;

use crate::api::{Redeployment, RedeploymentStatus};

#[derive(Clone, Default)]
pub struct HeldStatuses(Arc<Mutex<HashMap<(String, String), Held>>>);

struct Held {
    /// The Redeployment's version the status was decided on: held for that version only.
    version: String,
    status: RedeploymentStatus,
}

impl HeldStatuses {
    /// Holds `status` for `redeployment` at its current version.
    pub fn hold(&self, redeployment: &Redeployment, status: RedeploymentStatus) {
        let Some(version) = redeployment.resource_version() else { return };
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        held.insert(key(redeployment), Held { version, status });
    }

    /// Takes the status held for `redeployment`, if it was held for the
    /// version given (any other version drops it: the object changed since).
    pub fn take(&self, redeployment: &Redeployment) -> Option<RedeploymentStatus> {
        let held = self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&key(redeployment))?;
        (redeployment.resource_version().as_deref() == Some(held.version.as_str())).then_some(held.status)
    }

    /// Takes the status held for a Redeployment being deleted, whatever its
    /// version (the deletion made a new one): what this process did and
    /// did not write yet is what its cancellation must undo.
    pub fn take_deleted(&self, redeployment: &Redeployment) -> Option<RedeploymentStatus> {
        let held = self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&key(redeployment))?;
        Some(held.status)
    }
}

fn key(redeployment: &Redeployment) -> (String, String) {
    (redeployment.namespace().unwrap_or_default(), redeployment.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Phase, RedeploymentSpec};

    fn at_version(version: &str) -> Redeployment {
        let mut redeployment = Redeployment::new("shop-1", RedeploymentSpec::default());
        redeployment.metadata.namespace = Some("shop-ns".into());
        redeployment.metadata.resource_version = Some(version.into());
        redeployment
    }

    #[test]
    fn a_held_status_is_taken_once_and_only_at_its_version() {
        let held = HeldStatuses::default();
        let deploying = RedeploymentStatus { phase: Some(Phase::Deploying), ..Default::default() };
        held.hold(&at_version("7"), deploying.clone());
        assert_eq!(held.take(&at_version("7")), Some(deploying.clone()));
        assert_eq!(held.take(&at_version("7")), None, "taken once");
        held.hold(&at_version("7"), deploying);
        assert_eq!(held.take(&at_version("8")), None, "changed since: dropped");
        assert_eq!(held.take(&at_version("7")), None, "and gone");
        held.hold(&at_version("7"), RedeploymentStatus::default());
        assert!(held.take_deleted(&at_version("9")).is_some(), "a deletion's new version still finds it");
    }
}
