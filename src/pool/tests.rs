//! The pool against real hyper servers and raw sockets on 127.0.0.1.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::StatusCode;
use http_body_util::BodyExt;
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use super::*;

#[derive(Default)]
struct Seen {
    accepted: AtomicUsize,
    ended: AtomicUsize,
}

/// An HTTP/1 server: `/json` answers a small body, `/empty` a 202 without
/// one, `/stream` one chunk and then nothing for 10 s. With `idle_close`,
/// a connection idle that long is closed by the server.
async fn server(idle_close: Option<Duration>) -> (Uri, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri: Uri = format!("http://{}/", listener.local_addr().unwrap()).parse().unwrap();
    let seen = Arc::new(Seen::default());
    let counts = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counts.accepted.fetch_add(1, Ordering::SeqCst);
            let counts = Arc::clone(&counts);
            tokio::spawn(async move {
                let service = service_fn(|request: Request<Incoming>| async move {
                    let body = match request.uri().path() {
                        "/empty" => {
                            let mut answer = Response::new(server_body(Full::new(Bytes::new())));
                            *answer.status_mut() = StatusCode::ACCEPTED;
                            return Ok::<_, Infallible>(answer);
                        }
                        "/stream" => {
                            use futures_util::StreamExt;
                            let first = futures_util::stream::once(async {
                                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"data: 1\n\n")))
                            });
                            let never = futures_util::stream::once(async {
                                tokio::time::sleep(Duration::from_secs(10)).await;
                                Ok(Frame::data(Bytes::new()))
                            });
                            let body = http_body_util::StreamBody::new(first.chain(never));
                            body.boxed_unsync()
                        }
                        _ => server_body(Full::new(Bytes::from_static(b"hello"))),
                    };
                    Ok(Response::new(body))
                });
                let mut builder = server::Builder::new();
                if let Some(idle) = idle_close {
                    builder.timer(TokioTimer::new()).header_read_timeout(idle);
                }
                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                counts.ended.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (uri, seen)
}

fn server_body(body: Full<Bytes>) -> http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible> {
    body.boxed_unsync()
}

fn pool(idle_for: Duration) -> Pool<HttpConnector> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Pool::new(connector, idle_for)
}

fn request(base: &Uri, path: &str) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(Bytes::new()));
    *request.uri_mut() = Uri::try_from(path).unwrap();
    let host = base.authority().unwrap().as_str();
    request.headers_mut().insert(http::header::HOST, host.parse().unwrap());
    request
}

async fn get(pool: &Pool<HttpConnector>, base: &Uri, path: &str) -> (StatusCode, Bytes) {
    let answer = pool.send(base, request(base, path)).await.unwrap();
    let status = answer.status();
    (status, answer.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn answers_read_to_their_end_leave_their_connection_for_the_next_request() {
    let (base, seen) = server(None).await;
    let pool = pool(Duration::from_secs(30));
    assert_eq!(
        get(&pool, &base, "/json").await,
        (StatusCode::OK, Bytes::from_static(b"hello"))
    );
    // A 202 without a body is given back at once, though no one reads it.
    let empty = pool.send(&base, request(&base, "/empty")).await.unwrap();
    assert_eq!(empty.status(), StatusCode::ACCEPTED);
    drop(empty);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(get(&pool, &base, "/json").await.0, StatusCode::OK);
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(pool.idle(), 1);
}

#[tokio::test]
async fn concurrent_requests_each_get_a_connection_and_all_come_back() {
    let (base, seen) = server(None).await;
    let pool = pool(Duration::from_secs(30));
    let calls = (0..8).map(|_| get(&pool, &base, "/json"));
    for (status, _) in futures_util::future::join_all(calls).await {
        assert_eq!(status, StatusCode::OK);
    }
    let accepted = seen.accepted.load(Ordering::SeqCst);
    assert!((1..=8).contains(&accepted), "{accepted}");
    assert_eq!(pool.idle(), accepted);
    // The next round reuses them.
    let calls = (0..8).map(|_| get(&pool, &base, "/json"));
    futures_util::future::join_all(calls).await;
    assert!(seen.accepted.load(Ordering::SeqCst) <= 8);
}

#[tokio::test]
async fn an_answer_dropped_before_its_end_closes_its_connection() {
    let (base, seen) = server(None).await;
    let pool = pool(Duration::from_secs(30));
    let mut stream = pool.send(&base, request(&base, "/stream")).await.unwrap().into_body();
    let first = stream.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"data: 1\n\n");
    drop(stream);
    assert_eq!(pool.idle(), 0, "a connection mid-answer is never pooled");
    assert_eq!(get(&pool, &base, "/json").await.0, StatusCode::OK);
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        seen.ended.load(Ordering::SeqCst),
        1,
        "the dropped answer's connection was closed"
    );
}

#[tokio::test]
async fn a_connection_its_peer_closed_while_idle_is_not_used_again() {
    let (base, seen) = server(Some(Duration::from_millis(100))).await;
    let pool = pool(Duration::from_secs(30));
    assert_eq!(get(&pool, &base, "/json").await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        seen.ended.load(Ordering::SeqCst),
        1,
        "the server closed the idle connection"
    );
    assert_eq!(get(&pool, &base, "/json").await.0, StatusCode::OK);
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connections_idle_longer_than_idle_for_are_closed() {
    let (base, seen) = server(None).await;
    let pool = pool(Duration::from_millis(150));
    get(&pool, &base, "/json").await;
    assert_eq!(pool.idle(), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(pool.idle(), 0);
    assert_eq!(seen.ended.load(Ordering::SeqCst), 1, "the reaper closed it");
    // The pool works on after its reaper stopped, and starts it again.
    get(&pool, &base, "/json").await;
    assert_eq!(pool.idle(), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(pool.idle(), 0);
}

#[tokio::test]
async fn a_refused_connect_is_not_sent() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base: Uri = format!("http://{}/", listener.local_addr().unwrap()).parse().unwrap();
    drop(listener);
    let pool = pool(Duration::from_secs(30));
    let err = pool.send(&base, request(&base, "/json")).await.err().unwrap();
    assert!(matches!(err, PoolError::Connect(_)), "{err:?}");
}

#[tokio::test]
async fn a_request_the_peer_read_and_then_dropped_may_have_run() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base: Uri = format!("http://{}/", listener.local_addr().unwrap()).parse().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf).await;
        // Closed without an answer.
    });
    let pool = pool(Duration::from_secs(30));
    let err = pool.send(&base, request(&base, "/json")).await.err().unwrap();
    assert!(matches!(err, PoolError::Sent(_)), "{err:?}");
}
