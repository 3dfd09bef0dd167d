//! The two clocks on an in-memory connection, in paused time.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::{Activity, Watched};

const HEAD: Duration = Duration::from_secs(10);
const IDLE: Duration = Duration::from_secs(620);

fn connection() -> (Watched<DuplexStream>, DuplexStream, Arc<Activity>) {
    let (server, client) = tokio::io::duplex(1024);
    let activity = Arc::new(Activity::new(None));
    (
        Watched::new(server, Arc::clone(&activity), HEAD, IDLE, None),
        client,
        activity,
    )
}

/// How long (in paused time) until a read ends, and how.
async fn read_ends(conn: &mut Watched<DuplexStream>) -> (Duration, std::io::Result<usize>) {
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 64];
    let result = conn.read(&mut buf).await;
    (started.elapsed(), result)
}

fn timed_out(result: &std::io::Result<usize>) -> bool {
    matches!(result, Err(e) if e.kind() == std::io::ErrorKind::TimedOut)
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_says_nothing_ends_at_the_head_deadline() {
    let (mut conn, _client, _) = connection();
    let (took, result) = read_ends(&mut conn).await;
    assert!(timed_out(&result), "{result:?}");
    assert_eq!(took, HEAD);
}

#[tokio::test(start_paused = true)]
async fn between_requests_the_idle_clock_runs_and_a_new_head_restarts_the_head_clock() {
    let (mut conn, mut client, activity) = connection();
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
    assert!(matches!(read_ends(&mut conn).await.1, Ok(n) if n > 0));
    let served = activity.begin();
    drop(served); // answered
    let (took, result) = read_ends(&mut conn).await;
    assert!(timed_out(&result), "{result:?}");
    assert_eq!(took, IDLE, "an idle connection lasts the idle timeout, not the head's");

    let (mut conn, mut client, activity) = connection();
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
    let _ = read_ends(&mut conn).await;
    drop(activity.begin());
    tokio::time::sleep(Duration::from_secs(300)).await;
    client.write_all(b"GET / HT").await.expect("write");
    assert!(matches!(read_ends(&mut conn).await.1, Ok(n) if n > 0));
    let (took, result) = read_ends(&mut conn).await;
    assert!(timed_out(&result), "{result:?}");
    assert_eq!(took, HEAD, "a started head is due at the head deadline");
}

#[tokio::test(start_paused = true)]
async fn no_clock_runs_while_a_request_is_served() {
    let (mut conn, mut client, activity) = connection();
    client.write_all(b"POST / HTTP/1.1\r\n\r\n").await.expect("write");
    let _ = read_ends(&mut conn).await;
    let served = activity.begin();
    let read = tokio::time::timeout(IDLE * 2, read_ends(&mut conn)).await;
    assert!(read.is_err(), "a request being served was cut: {read:?}");
    drop(served);
    let (took, result) = read_ends(&mut conn).await;
    assert!(timed_out(&result), "{result:?}");
    assert_eq!(took, IDLE);
}

#[tokio::test(start_paused = true)]
async fn a_request_ending_while_no_read_waits_is_seen_by_the_reminder() {
    // hyper reads again only when bytes arrive once a connection is idle:
    // the wait that began while the request was served has to notice.
    let (mut conn, mut client, activity) = connection();
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
    let _ = read_ends(&mut conn).await;
    let served = activity.begin();
    let reader = tokio::spawn(async move { read_ends(&mut conn).await });
    tokio::time::sleep(Duration::from_secs(100)).await;
    drop(served);
    let (took, result) = reader.await.expect("reader");
    assert!(timed_out(&result), "{result:?}");
    assert_eq!(
        took,
        Duration::from_secs(100) + IDLE,
        "counted from the end of the answer"
    );
}
