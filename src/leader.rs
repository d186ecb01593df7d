//! Leader election on a `coordination.k8s.io` Lease, as client-go does it:
//! every replica serves the hook, only the Lease holder runs the reconcilers.
//! The holder renews the Lease; another replica takes it over once it has
//! seen no renewal for a whole lease duration by its own clock, so the
//! replicas' clocks need not agree. A graceful stop hands the Lease back.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tokio::sync::watch;

use crate::install::FIELD_MANAGER;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's name in the Lease (its pod's name, say).
    pub identity: String,
    /// How long a Lease nobody renews stays with its holder.
    pub lease_duration: Duration,
    /// How long the holder goes on leading while it fails to renew.
    pub renew_deadline: Duration,
    /// How often the Lease is renewed, or tried for.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// client-go's defaults: 15 s, 10 s, 2 s.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What the Lease said when it was last seen change, and when that was.
struct Observed {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    at: Instant,
}

pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Option<Observed>,
}

impl Elector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self { api: Api::namespaced(client, &config.namespace), config, observed: None }
    }

    /// Tries for the Lease and keeps it, telling `leading` whether this
    /// replica holds it, until `stop` completes; then gives it back.
    pub async fn run(mut self, leading: watch::Sender<bool>, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut renewed = Instant::now();
        loop {
            let is_leading = *leading.borrow();
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    renewed = Instant::now();
                    if !is_leading {
                        tracing::info!(lease = %self.config.name, identity = %self.config.identity, "leading");
                        leading.send_replace(true);
                    }
                }
                Ok(false) if is_leading => {
                    tracing::error!(lease = %self.config.name, "another replica holds the lease now");
                    leading.send_replace(false);
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(lease = %self.config.name, %error, "renewing the lease failed");
                    if is_leading && renewed.elapsed() > self.config.renew_deadline {
                        tracing::error!(lease = %self.config.name, "could not renew the lease in time");
                        leading.send_replace(false);
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.config.retry_period) => {}
                () = &mut stop => break,
            }
        }
        if *leading.borrow() {
            leading.send_replace(false);
            if let Err(error) = self.release().await {
                tracing::warn!(lease = %self.config.name, %error, "handing the lease back failed; it expires");
            }
        }
    }

    /// True when this replica holds the Lease after the call.
    async fn try_acquire_or_renew(&mut self) -> kube::Result<bool> {
        let now = MicroTime(Timestamp::now());
        let me = Some(self.config.identity.clone());
        let duration = i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.config.name.clone()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: me,
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return conflict_is_false(self.api.create(&self.params(), &lease).await);
        };
        let mut spec = lease.spec.take().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let renew_time = spec.renew_time.as_ref().map(|t| t.0);
        let changed = self.observed.as_ref().is_none_or(|o| o.holder != holder || o.renew_time != renew_time);
        if changed {
            self.observed = Some(Observed { holder: holder.clone(), renew_time, at: Instant::now() });
        }
        let held_for = spec.lease_duration_seconds.and_then(|s| u64::try_from(s).ok()).map(Duration::from_secs);
        let expired =
            self.observed.as_ref().is_some_and(|o| o.at.elapsed() > held_for.unwrap_or(self.config.lease_duration));
        if holder.is_some() && holder != me && !expired {
            return Ok(false);
        }
        if holder != me {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or_default() + 1);
        }
        spec.holder_identity = me;
        spec.lease_duration_seconds = Some(duration);
        spec.renew_time = Some(now);
        lease.spec = Some(spec);
        // The read version goes with it: a replica that changed the Lease since wins.
        conflict_is_false(self.api.replace(&self.config.name, &self.params(), &lease).await)
    }

    async fn release(&self) -> kube::Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else { return Ok(()) };
        let Some(spec) = lease.spec.as_mut() else { return Ok(()) };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api.replace(&self.config.name, &self.params(), &lease).await.map(drop)
    }

    fn params(&self) -> PostParams {
        PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }
    }
}

/// A write that lost a race for the Lease: not leading, not an error.
fn conflict_is_false(result: kube::Result<Lease>) -> kube::Result<bool> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error),
    }
}
