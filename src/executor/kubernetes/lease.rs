//! Leader election on a `coordination.k8s.io/v1` Lease, so that one replica
//! at a time launches (DESIGN §6).
//!
//! Every write is a resourceVersion-checked update, so two candidates can
//! never both hold the Lease: the loser's write answers 409 Conflict. As in
//! client-go, expiry is judged by this replica's own clock: a Lease whose
//! record has not changed for `leaseDurationSeconds` since this replica
//! first saw it is free, whatever the holder's clock says. The holder renews
//! every seventh of the duration and steps down if it could not renew for
//! two thirds of it, before anyone else may take over. A graceful stop releases
//! the Lease (no holder, duration 1 s), so the next replica takes over at
//! once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use tokio_util::sync::CancellationToken;

/// One candidate for one Lease.
pub struct LeaderLease {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

/// What a candidate last knew of the Lease.
struct Observed {
    resource_version: Option<String>,
    since: Instant,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl LeaderLease {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        LeaderLease {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn seconds(&self) -> i32 {
        self.duration.as_secs().clamp(1, i32::MAX as u64) as i32
    }

    /// How often the holder renews (and how long one renewal may take).
    fn renew_period(&self) -> Duration {
        (self.duration / 7).max(Duration::from_millis(100))
    }

    /// How often a follower looks again.
    fn retry_period(&self) -> Duration {
        (self.duration / 5).max(Duration::from_millis(100))
    }

    /// Waits until this replica holds the Lease. Returns false if `stop`
    /// came first.
    pub async fn acquire(&self, stop: &CancellationToken) -> bool {
        let mut observed: Option<Observed> = None;
        let mut announced = false;
        loop {
            // Each look is bounded as a renewal is: a request the API server
            // never answers must not keep a replica from ever leading.
            let look = tokio::time::timeout(self.renew_period(), self.try_acquire(&mut observed));
            match look.await {
                Ok(Ok(true)) => {
                    crate::metrics::set_leader(true);
                    return true;
                }
                Ok(Ok(false)) => {
                    if !announced {
                        announced = true;
                        tracing::info!(lease = %self.name, "another replica leads; waiting for the Lease");
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(lease = %self.name, error = %crate::error_chain(&e), "cannot read or take the Lease; retrying")
                }
                Err(_) => {
                    tracing::warn!(lease = %self.name, timeout = ?self.renew_period(), "no answer reading or taking the Lease; retrying")
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(self.retry_period()) => {}
            }
        }
    }

    async fn try_acquire(&self, observed: &mut Option<Observed>) -> Result<bool, kube::Error> {
        let current = match self.api.get_opt(&self.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(self.seconds()),
                        acquire_time: Some(now()),
                        renew_time: Some(now()),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(false),
                    Err(e) => Err(e),
                };
            }
            Some(l) => l,
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let rv = current.metadata.resource_version.clone();
        let free = if holder.is_empty() || holder == self.identity {
            true
        } else {
            let duration =
                Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
            match observed {
                Some(o) if o.resource_version == rv => o.since.elapsed() >= duration,
                _ => {
                    *observed = Some(Observed {
                        resource_version: rv.clone(),
                        since: Instant::now(),
                    });
                    false
                }
            }
        };
        if !free {
            return Ok(false);
        }
        let mut lease = current;
        let transitions = spec.lease_transitions.unwrap_or(0);
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.seconds()),
            acquire_time: if holder == self.identity {
                spec.acquire_time.clone()
            } else {
                Some(now())
            },
            renew_time: Some(now()),
            lease_transitions: Some(
                if holder == self.identity || holder.is_empty() && transitions == 0 {
                    transitions
                } else {
                    transitions + 1
                },
            ),
            ..spec
        });
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                tracing::info!(lease = %self.name, identity = %self.identity, previous = %holder, "this replica now holds the Lease");
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Renews the Lease until `stop`, then releases it. Cancels `lost` and
    /// returns if leadership is lost (someone else holds the Lease, or no
    /// renewal succeeded for two thirds of the duration). As client-go's
    /// elector does, it renews every retry period (a seventh of the
    /// duration: 2 s of 15 s), so one slow or failed request costs one
    /// period, not the lead.
    pub async fn hold(&self, stop: CancellationToken, lost: CancellationToken) {
        let every = self.renew_period();
        let retry = every;
        let deadline = self.duration * 2 / 3;
        let mut renewed = Instant::now();
        let mut wait = every;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            match self.renew().await {
                Ok(true) => {
                    renewed = Instant::now();
                    wait = every;
                }
                Ok(false) => {
                    tracing::error!(lease = %self.name, "another replica took the Lease; this one stops launching");
                    crate::metrics::set_leader(false);
                    lost.cancel();
                    return;
                }
                Err(e) => {
                    let since = renewed.elapsed();
                    if since >= deadline {
                        tracing::error!(lease = %self.name, error = %crate::error_chain(&e), "the Lease could not be renewed in time; this replica stops launching");
                        crate::metrics::set_leader(false);
                        lost.cancel();
                        return;
                    }
                    tracing::warn!(lease = %self.name, error = %crate::error_chain(&e), "cannot renew the Lease; retrying");
                    wait = retry.min(deadline - since);
                }
            }
        }
        crate::metrics::set_leader(false);
        match self.release().await {
            Ok(()) => tracing::info!(lease = %self.name, "Lease released"),
            Err(e) => {
                tracing::warn!(lease = %self.name, error = %crate::error_chain(&e), "cannot release the Lease; it expires on its own")
            }
        }
    }

    /// One renewal: false if another replica holds the Lease; an error if
    /// the read or the (resourceVersion-checked) write failed or conflicted.
    async fn renew(&self) -> Result<bool, kube::Error> {
        let call = async {
            let mut lease = self.api.get(&self.name).await?;
            let mut spec = lease.spec.clone().unwrap_or_default();
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(false);
            }
            spec.renew_time = Some(now());
            lease.spec = Some(spec);
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
                .map(|_| true)
        };
        match tokio::time::timeout(self.renew_period(), call).await {
            Ok(r) => r,
            Err(_) => Err(kube::Error::Service("renewing the Lease timed out".into())),
        }
    }

    async fn release(&self) -> Result<(), kube::Error> {
        let mut lease = self.api.get(&self.name).await?;
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        lease.spec = Some(spec);
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }
}

/// The held Lease of an elected replica ([`LeaderLease::lead`]): renewed
/// in the background until [`Leadership::step_down`].
pub struct Leadership {
    /// Cancelled to stop renewing and release the Lease.
    holding: CancellationToken,
    /// Cancelled by the renewal when the Lease was lost.
    lost: CancellationToken,
    renewal: tokio::task::JoinHandle<()>,
}

/// This replica lost the Lease while it led: another replica leads now.
#[derive(Debug, thiserror::Error)]
#[error("lost the leader Lease; stopped launching (another replica leads now)")]
pub struct LeaseLost;

impl LeaderLease {
    /// Waits until this replica holds the Lease, then keeps it in the
    /// background. Losing it later cancels `shutdown`, stopping this
    /// replica like a signal would ([`Leadership::step_down`] then says
    /// so). `None` if `shutdown` came first.
    pub async fn lead(self, shutdown: &CancellationToken) -> Option<Leadership> {
        if !self.acquire(shutdown).await {
            tracing::info!("stopped before becoming the leader");
            return None;
        }
        let lost = CancellationToken::new();
        let holding = CancellationToken::new();
        let renewal = {
            let (holding, lost) = (holding.clone(), lost.clone());
            tokio::spawn(async move { self.hold(holding, lost).await })
        };
        let (stop, lost_watch) = (shutdown.clone(), lost.clone());
        tokio::spawn(async move {
            lost_watch.cancelled().await;
            stop.cancel();
        });
        Some(Leadership {
            holding,
            lost,
            renewal,
        })
    }
}

impl Leadership {
    /// Stops renewing and releases the Lease (when still held), so the
    /// next replica takes over at once. `Err` if it was lost meanwhile.
    pub async fn step_down(self) -> Result<(), LeaseLost> {
        self.holding.cancel();
        if let Err(e) = self.renewal.await {
            tracing::error!(error = %e, "the Lease renewal task ended abnormally");
        }
        if self.lost.is_cancelled() {
            return Err(LeaseLost);
        }
        Ok(())
    }
}
