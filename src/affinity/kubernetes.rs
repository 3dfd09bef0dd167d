//! Membership from Kubernetes: the ready endpoints of the EndpointSlices of
//! the chart's headless Service.
//!
//! A kube-rs `watcher` (list, then watch, with backoff on errors) feeds a
//! reflector store; the member set is rebuilt from the store's complete state,
//! and only once the initial list is complete (`InitDone`), so a relist never
//! publishes a half-filled set that would move sessions for nothing.
//! A member's id is its pod name (`targetRef.name`), which is also what each
//! pod gets as `replica_id` (env `VMCP_REPLICA_ID` from the downward API).

use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};

use super::membership::Membership;
use super::ring::Member;
use crate::config::KubernetesMembership;

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("kubernetes client: {0}")]
    Client(String),
}

/// Builds a client from the pod's service account (or a kubeconfig outside a cluster).
pub async fn client_from_environment() -> Result<Client, DiscoveryError> {
    Client::try_default()
        .await
        .map_err(|e| DiscoveryError::Client(e.to_string()))
}

/// Keeps `membership` equal to the ready endpoints of the Service until the
/// watch stream ends (it does not: errors are retried with backoff).
pub async fn follow(membership: Arc<Membership>, client: Client, config: KubernetesMembership, default_port: u16) {
    let namespace = config
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let port = config.port.unwrap_or(default_port);
    let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
    let selector = format!("kubernetes.io/service-name={}", config.service);
    let (store, writer) = reflector::store();
    let events = watcher::watcher(api, watcher::Config::default().labels(&selector))
        .default_backoff()
        .reflect(writer);
    tracing::info!(service = %config.service, %namespace, "watching replicas");
    futures_util::pin_mut!(events);
    let mut complete = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => complete = false,
            Ok(Event::InitApply(_)) => {}
            Ok(Event::InitDone) => {
                complete = true;
                publish(&membership, &store, port);
            }
            Ok(Event::Apply(_) | Event::Delete(_)) if complete => publish(&membership, &store, port),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "EndpointSlice watch failed; retrying"),
        }
    }
}

fn publish(membership: &Membership, store: &Store<EndpointSlice>, port: u16) {
    let (ready, draining) = members(&store.state(), port);
    membership.set_with_draining(ready, draining);
}

/// The ready endpoints of `slices` as members (an unknown readiness counts as
/// ready, as the EndpointSlice API asks consumers to), and the terminating
/// ones that are no longer ready: draining replicas, which still serve the
/// sessions pinned to them while they drain.
pub fn members(slices: &[Arc<EndpointSlice>], port: u16) -> (Vec<Member>, Vec<Member>) {
    let (mut members, mut draining) = (Vec::new(), Vec::new());
    for slice in slices {
        for endpoint in &slice.endpoints {
            let conditions = endpoint.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            let Some(address) = endpoint.addresses.first() else {
                continue;
            };
            if !ready && !terminating {
                continue;
            }
            let id = endpoint
                .target_ref
                .as_ref()
                .and_then(|r| r.name.clone())
                .or_else(|| endpoint.hostname.clone())
                .unwrap_or_else(|| address.clone());
            let host = if address.contains(':') {
                format!("[{address}]")
            } else {
                address.clone()
            };
            let member = Member::new(&id, &format!("{host}:{port}"));
            if ready {
                members.push(member);
            } else {
                draining.push(member);
            }
        }
    }
    (members, draining)
}
