//! Leader election through a coordination.k8s.io/v1 Lease, with kube's own
//! API and optimistic concurrency (a write with a stale resourceVersion is
//! refused, so two replicas never both take the Lease). Only the holder
//! writes status and events; every replica serves MCP regardless.
//!
//! Failover: the holder renews every `renew` interval; if it dies, another
//! replica takes the Lease once `duration` has passed since the last renewal.
//! A replica shutting down cleanly gives the Lease up at once.
//!
//! Why not the `kube-lease-manager` crate (0.13, same kube 5): it was read
//! and measured against what this loop must guarantee, and it differs where
//! it matters here:
//! - its renewals are strategic-merge patches with no resourceVersion
//!   precondition, and taking an expired Lease is two writes (a forced
//!   release, then a server-side apply arbitrated by managedFields
//!   ownership). Here every write is a replace conditioned on the version we
//!   read, the rule client-go's leader election follows, so of two replicas
//!   only one can win and a stale holder's renewal is refused;
//! - when its API calls fail it keeps reporting the last state it saw, so a
//!   replica cut off from the API server keeps believing it leads after the
//!   Lease has passed to another and both write status. Here leadership ends
//!   as soon as our last renewal can no longer be shown valid (fail closed).
//!
//! The loop is small (one function to take or renew, one to release) and its
//! failover and outage behaviour are tested against the fake API server.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (the pod name in Kubernetes).
    pub identity: String,
    pub duration: Duration,
    pub renew: Duration,
}

impl LeaseConfig {
    pub fn new(namespace: String, identity: String) -> Self {
        Self {
            namespace,
            name: "flotilla-status-writer".into(),
            identity,
            duration: Duration::from_secs(15),
            renew: Duration::from_secs(5),
        }
    }
}

/// Whether this replica currently holds the Lease.
#[derive(Clone)]
pub struct LeaderElection {
    rx: watch::Receiver<bool>,
    /// Cancelled when the election has ended (the Lease released if it was ours).
    ended: CancellationToken,
}

impl LeaderElection {
    pub fn start(client: Client, config: LeaseConfig, cancel: CancellationToken) -> Self {
        let (tx, rx) = watch::channel(false);
        let api: Api<Lease> = Api::namespaced(client, &config.namespace);
        let ended = CancellationToken::new();
        let _ended = ended.clone().drop_guard();
        tokio::spawn(async move {
            let _ended = _ended;
            loop {
                let leading = match try_acquire_or_renew(&api, &config).await {
                    Ok(leading) => leading,
                    Err(error) => {
                        tracing::warn!(%error, lease = %config.name, "lease update failed");
                        // Keep leading only while our last renewal is still valid.
                        *tx.borrow() && still_ours(&api, &config).await
                    }
                };
                if tx.send_if_modified(|current| std::mem::replace(current, leading) != leading) {
                    tracing::info!(identity = %config.identity, leading, "leadership changed");
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(config.renew) => {}
                }
            }
            if *tx.borrow() {
                release(&api, &config).await;
                tx.send_replace(false);
                tracing::info!(identity = %config.identity, "lease released");
            }
        });
        Self { rx, ended }
    }

    /// Waits until the election has ended after its cancellation, the Lease
    /// released if this replica held it (so shutdown can wait for that
    /// instead of leaving the next leader to wait out the Lease).
    pub async fn ended(&self) {
        self.ended.cancelled().await
    }

    pub fn is_leader(&self) -> bool {
        *self.rx.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }
}

fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(MicroTime(renewed)) = spec.renew_time else {
        return true;
    };
    let seconds = spec.lease_duration_seconds.unwrap_or(15).max(1) as i64;
    renewed
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(seconds))
        .map(|deadline| deadline < now)
        .unwrap_or(true)
}

/// Takes, renews or observes the Lease; returns whether we hold it now.
async fn try_acquire_or_renew(api: &Api<Lease>, config: &LeaseConfig) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let ours = |transitions: Option<i32>, acquired: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(config.duration.as_secs() as i32),
        acquire_time: acquired.or(Some(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: transitions,
        ..Default::default()
    };
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                ..Default::default()
            },
            spec: Some(ours(Some(0), None)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.as_deref();
    let next = if holder == Some(config.identity.as_str()) {
        ours(spec.lease_transitions, spec.acquire_time.clone())
    } else if holder.is_none() || expired(&spec, now) {
        ours(Some(spec.lease_transitions.unwrap_or(0) + 1), None)
    } else {
        return Ok(false);
    };
    lease.spec = Some(next);
    // The resourceVersion we read makes this write fail if anyone wrote since.
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error),
    }
}

async fn still_ours(api: &Api<Lease>, config: &LeaseConfig) -> bool {
    match api.get_opt(&config.name).await {
        Ok(Some(lease)) => lease.spec.is_some_and(|spec| {
            spec.holder_identity.as_deref() == Some(config.identity.as_str())
                && !expired(&spec, Timestamp::now())
        }),
        _ => false,
    }
}

/// Gives the Lease up so another replica need not wait for it to expire.
async fn release(api: &Api<Lease>, config: &LeaseConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&config.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    if let Err(error) = api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        tracing::debug!(%error, "releasing the lease failed; it will expire instead");
    }
}
