//! kube-rs membership against a fake Kubernetes API server that speaks the
//! real EndpointSlice list + watch JSON over HTTP on 127.0.0.1.

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::broadcast;
use vmcp::affinity::Membership;
use vmcp::config::KubernetesMembership;

const PATH: &str = "/apis/discovery.k8s.io/v1/namespaces/test/endpointslices";

/// The fake API server's state: the slices a list returns, and a feed of
/// watch events (one JSON object per line, as the API server streams them).
#[derive(Clone)]
struct FakeApi {
    slices: Arc<Mutex<Vec<Value>>>,
    events: broadcast::Sender<String>,
    lists: Arc<Mutex<Vec<String>>>,
}

fn endpoint(pod: &str, ip: &str, ready: bool) -> Value {
    json!({"addresses": [ip], "conditions": {"ready": ready}, "targetRef": {"kind": "Pod", "name": pod, "namespace": "test"}})
}

/// A pod shutting down: not ready any more, terminating.
fn terminating(pod: &str, ip: &str) -> Value {
    json!({"addresses": [ip], "conditions": {"ready": false, "serving": false, "terminating": true},
        "targetRef": {"kind": "Pod", "name": pod, "namespace": "test"}})
}

fn slice(name: &str, rv: u32, endpoints: Vec<Value>) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "test", "resourceVersion": rv.to_string(),
                     "labels": {"kubernetes.io/service-name": "vmcp-peers"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
}

impl FakeApi {
    async fn start(initial: Vec<Value>) -> (Self, String) {
        let (events, _) = broadcast::channel(64);
        let api = Self {
            slices: Arc::new(Mutex::new(initial)),
            events,
            lists: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = api.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let api = server.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let api = api.clone();
                        async move { Ok::<_, Infallible>(api.answer(req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (api, url)
    }

    fn answer(&self, req: http::Request<hyper::body::Incoming>) -> http::Response<BoxBody<Bytes, Infallible>> {
        let query = req.uri().query().unwrap_or_default().to_owned();
        if req.uri().path() != PATH || !query.contains("labelSelector=kubernetes.io%2Fservice-name%3Dvmcp-peers") {
            return http::Response::builder()
                .status(404)
                .body(Full::new(Bytes::new()).boxed())
                .unwrap();
        }
        if query.contains("watch=true") || query.contains("watch=1") {
            let feed = self.events.subscribe();
            let lines = futures_util::stream::unfold(feed, |mut feed| async move {
                let line = feed.recv().await.ok()?;
                Some((Ok::<_, Infallible>(Frame::data(Bytes::from(line + "\n"))), feed))
            });
            return http::Response::builder()
                .header("content-type", "application/json")
                .body(BodyExt::boxed(StreamBody::new(lines)))
                .unwrap();
        }
        self.lists.lock().unwrap().push(query);
        let list = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList",
                          "metadata": {"resourceVersion": "10"}, "items": *self.slices.lock().unwrap()});
        http::Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(list.to_string())).boxed())
            .unwrap()
    }

    /// Sends a watch event once a watch is open (like the API server, it
    /// streams only to watchers that exist).
    async fn send(&self, kind: &str, object: Value) {
        for _ in 0..200 {
            if self.events.receiver_count() > 0 {
                let _ = self.events.send(json!({"type": kind, "object": object}).to_string());
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the watcher never opened a watch");
    }
}

async fn members_become(membership: &Membership, expected: &[&str]) {
    let mut rx = membership.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ids: Vec<String> = rx
            .borrow_and_update()
            .ring
            .members()
            .iter()
            .map(|m| m.id.to_string())
            .collect();
        if rx.borrow().known && ids == expected {
            return;
        }
        if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
            panic!("members are {ids:?}, expected {expected:?}");
        }
    }
}

#[tokio::test]
async fn ready_endpoints_of_the_headless_service_are_the_members() {
    let initial = slice(
        "vmcp-peers-a",
        1,
        vec![
            endpoint("vmcp-0", "10.0.0.1", true),
            endpoint("vmcp-1", "10.0.0.2", true),
            endpoint("vmcp-2", "10.0.0.3", false),
        ],
    );
    let (api, url) = FakeApi::start(vec![initial]).await;
    let mut config = kube::Config::new(url.parse().unwrap());
    config.default_namespace = "test".into();
    vmcp::app::install_crypto_provider();
    let client = kube::Client::try_from(config).unwrap();
    let pins = vmcp::affinity::pin::Pins::new("kube-test-hop-key-0123");
    let pinned_to_1 = pins.mint(&[9; 16], "vmcp-1");
    let membership = Arc::new(Membership::unknown("vmcp-0").with_pins(Some(pins)));
    assert!(!membership.is_known(), "not ready before the first complete list");
    let k8s = KubernetesMembership {
        service: "vmcp-peers".into(),
        namespace: None,
        port: None,
    };
    tokio::spawn(vmcp::affinity::kubernetes::follow(
        Arc::clone(&membership),
        client,
        k8s,
        8080,
    ));

    members_become(&membership, &["vmcp-0", "vmcp-1"]).await;
    assert_eq!(&*membership.view().ring.get("vmcp-1").unwrap().addr, "10.0.0.2:8080");

    // vmcp-2 becomes ready.
    let all_ready = vec![
        endpoint("vmcp-0", "10.0.0.1", true),
        endpoint("vmcp-1", "10.0.0.2", true),
        endpoint("vmcp-2", "10.0.0.3", true),
    ];
    api.send("MODIFIED", slice("vmcp-peers-a", 11, all_ready)).await;
    members_become(&membership, &["vmcp-0", "vmcp-1", "vmcp-2"]).await;

    // vmcp-0 turns not ready (it is draining).
    let zero_draining = vec![
        endpoint("vmcp-0", "10.0.0.1", false),
        endpoint("vmcp-1", "10.0.0.2", true),
        endpoint("vmcp-2", "10.0.0.3", true),
    ];
    api.send("MODIFIED", slice("vmcp-peers-a", 12, zero_draining)).await;
    members_become(&membership, &["vmcp-1", "vmcp-2"]).await;

    // A second slice appears, then goes away.
    let second = slice("vmcp-peers-b", 13, vec![endpoint("vmcp-3", "10.0.0.4", true)]);
    api.send("ADDED", second.clone()).await;
    members_become(&membership, &["vmcp-1", "vmcp-2", "vmcp-3"]).await;
    api.send("DELETED", second).await;
    members_become(&membership, &["vmcp-1", "vmcp-2"]).await;
    assert!(!api.lists.lock().unwrap().is_empty(), "the watcher listed first");

    // vmcp-1 is terminating (draining): no new sessions, but its pinned ones still go to it.
    let one_terminating = vec![terminating("vmcp-1", "10.0.0.2"), endpoint("vmcp-2", "10.0.0.3", true)];
    api.send("MODIFIED", slice("vmcp-peers-a", 14, one_terminating)).await;
    members_become(&membership, &["vmcp-2"]).await;
    let draining: Vec<String> = membership.view().draining.iter().map(|m| m.id.to_string()).collect();
    assert_eq!(draining, ["vmcp-1"]);
    assert!(
        matches!(membership.place(&pinned_to_1), vmcp::affinity::Placement::Remote(m) if &*m.id == "vmcp-1"),
        "a draining replica keeps its pinned sessions"
    );
    // Gone: its sessions are placed among the others.
    api.send(
        "MODIFIED",
        slice("vmcp-peers-a", 15, vec![endpoint("vmcp-2", "10.0.0.3", true)]),
    )
    .await;
    members_become(&membership, &["vmcp-2"]).await;
    for _ in 0..100 {
        if membership.view().draining.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(matches!(membership.place(&pinned_to_1), vmcp::affinity::Placement::Remote(m) if &*m.id == "vmcp-2"));
}
