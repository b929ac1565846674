//! Fault hooks: fail the next N requests with a code, hang, cut watches
//! (between events or mid-event), drop or delay watch events.
mod common;
use common::*;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, WatchEvent, WatchParams};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

#[tokio::test]
async fn fail_next_requests_with_a_chosen_code() {
    let (sim, client) = start().await;
    let jobs: Api<Job> = Api::namespaced(client, "default");
    sim.fail_next(2, 500);
    for _ in 0..2 {
        let s = status(jobs.get("x").await.unwrap_err());
        assert_eq!((s.code, s.reason.as_str()), (500, "InternalError"));
    }
    assert_eq!(status(jobs.get("x").await.unwrap_err()).code, 404);
}

/// Requests arriving together must take the armed failures one each:
/// exactly `n` fail, and every later request is answered normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fail_next_fails_exactly_n_of_many_concurrent_requests() {
    let (sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client, "default");
    for round in 0..5 {
        sim.fail_next(7, 500);
        let answers = futures::future::join_all((0..64).map(|_| jobs.get_opt("x"))).await;
        let failed = answers.iter().filter(|a| a.is_err()).count();
        assert_eq!(failed, 7, "round {round}: exactly the armed failures");
        assert!(
            jobs.get_opt("x").await.unwrap().is_none(),
            "round {round}: none left armed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hang_next_hangs_exactly_n_of_many_concurrent_requests() {
    let (sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client, "default");
    sim.hang_next(3);
    let answers = futures::future::join_all(
        (0..32).map(|_| tokio::time::timeout(Duration::from_secs(2), jobs.get_opt("x"))),
    )
    .await;
    let hung = answers.iter().filter(|a| a.is_err()).count();
    assert_eq!(hung, 3, "exactly the armed hangs");
    assert!(
        jobs.get_opt("x").await.unwrap().is_none(),
        "none left armed"
    );
}

#[tokio::test]
async fn hang_next_request() {
    let (sim, client) = start().await;
    let jobs: Api<Job> = Api::namespaced(client, "default");
    sim.hang_next(1);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), jobs.get_opt("x"))
            .await
            .is_err()
    );
    assert!(jobs.get_opt("x").await.unwrap().is_none());
}

#[tokio::test]
async fn cut_watches_ends_open_streams() {
    let (sim, client) = start().await;
    let jobs: Api<Job> = Api::namespaced(client, "default");
    create(&jobs, "a", json!({})).await;
    let mut s = jobs
        .watch(
            &WatchParams {
                bookmarks: false,
                ..Default::default()
            },
            "0",
        )
        .await
        .unwrap()
        .boxed();
    assert!(s.next().await.unwrap().is_ok());
    sim.cut_watches();
    // The Job controller keeps writing the Job's status, so events may still
    // arrive before the end of the stream.
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(ev) = s.next().await {
            ev.unwrap();
        }
    })
    .await
    .expect("the stream ends");
}

fn no_bookmarks() -> WatchParams {
    WatchParams {
        bookmarks: false,
        ..Default::default()
    }
}

fn added_name(ev: &WatchEvent<Job>) -> Option<String> {
    match ev {
        WatchEvent::Added(j) => j.metadata.name.clone(),
        _ => None,
    }
}

/// Reads one HTTP/1.1 chunk's data; `None` at a clean end (the zero chunk)
/// or when the connection breaks before a whole chunk arrived.
async fn read_chunk<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Option<Vec<u8>> {
    let mut size = String::new();
    if r.read_line(&mut size).await.ok()? == 0 {
        return None;
    }
    let n = usize::from_str_radix(size.trim(), 16).ok()?;
    let mut data = vec![0; n + 2];
    r.read_exact(&mut data).await.ok()?;
    data.truncate(n);
    (n > 0).then_some(data)
}

#[tokio::test]
async fn cut_mid_event_sends_half_a_line_then_breaks_the_connection() {
    let (sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client, "default");
    create(&jobs, "a", json!({})).await;
    let mut conn = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    conn.write_all(
        b"GET /apis/batch/v1/namespaces/default/jobs?watch=true HTTP/1.1\r\nHost: kube-sim\r\n\r\n",
    )
    .await
    .unwrap();
    let mut r = BufReader::new(conn);
    let mut header = String::new();
    while header != "\r\n" {
        header.clear();
        r.read_line(&mut header).await.unwrap();
        assert!(!header.is_empty(), "connection closed in the headers");
    }
    let first = read_chunk(&mut r).await.expect("the ADDED event of a");
    assert!(first.ends_with(b"\n") && first.starts_with(b"{\"type\":\"ADDED\""));
    sim.cut_watches_mid_event();
    create(&jobs, "b", json!({})).await;
    let half = tokio::time::timeout(Duration::from_secs(5), read_chunk(&mut r))
        .await
        .expect("the cut event in 5 s")
        .expect("half an event");
    assert!(half.starts_with(b"{\"type\":\"ADDED\"") && !half.ends_with(b"\n"));
    assert!(
        serde_json::from_slice::<serde_json::Value>(&half).is_err(),
        "not a whole JSON object"
    );
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut rest))
        .await
        .expect("the connection closes in 5 s");
    assert!(
        end.is_err() || rest.is_empty(),
        "no closing chunk after the cut: {rest:?}"
    );
}

#[tokio::test]
async fn cut_mid_event_is_an_error_for_kube_rs_and_later_streams_are_whole() {
    let (sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client, "default");
    let mut s = jobs.watch(&no_bookmarks(), "0").await.unwrap().boxed();
    sim.cut_watches_mid_event();
    create(&jobs, "a", json!({})).await;
    let outcome = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("the stream reacts in 5 s");
    match outcome {
        None | Some(Err(_)) => {}
        Some(Ok(ev)) => panic!("half an event must not decode: {ev:?}"),
    }
    let mut again = jobs.watch(&no_bookmarks(), "0").await.unwrap().boxed();
    let ev = again.next().await.unwrap().unwrap();
    assert_eq!(
        added_name(&ev).as_deref(),
        Some("a"),
        "opened after the cut: whole"
    );
}

#[tokio::test]
async fn dropped_events_are_never_sent_and_the_stream_goes_on() {
    let (sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client, "default");
    let mut s = jobs.watch(&no_bookmarks(), "0").await.unwrap().boxed();
    sim.drop_watch_events(1);
    create(&jobs, "a", json!({})).await;
    create(&jobs, "b", json!({})).await;
    let ev = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("an event in 5 s")
        .unwrap()
        .unwrap();
    assert_eq!(added_name(&ev).as_deref(), Some("b"), "ADDED a was dropped");
}

#[tokio::test]
async fn delayed_events_arrive_no_sooner_than_the_delay() {
    let (sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client, "default");
    let mut s = jobs.watch(&no_bookmarks(), "0").await.unwrap().boxed();
    let delay = Duration::from_millis(300);
    sim.delay_watch_events(delay);
    let t0 = Instant::now();
    create(&jobs, "a", json!({})).await;
    create(&jobs, "b", json!({})).await;
    let mut names = Vec::new();
    for _ in 0..2 {
        let ev = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("an event in 5 s")
            .unwrap()
            .unwrap();
        names.push(added_name(&ev).unwrap());
    }
    assert!(t0.elapsed() >= delay * 2, "each event held back in turn");
    assert_eq!(names, ["a", "b"], "in order");
    sim.delay_watch_events(Duration::ZERO);
    let t1 = Instant::now();
    create(&jobs, "c", json!({})).await;
    let ev = s.next().await.unwrap().unwrap();
    assert_eq!(added_name(&ev).as_deref(), Some("c"));
    assert!(t1.elapsed() < delay, "delay off");
}

#[tokio::test]
async fn deny_creates_refuses_matching_names_with_the_given_status() {
    let (sim, client) = start_quiet().await;
    let jobs: Api<Job> = Api::namespaced(client, "default");
    sim.deny_creates(
        "poison",
        403,
        "admission webhook \"deny.example.com\" denied the request: {name} is not allowed",
    );
    let e = jobs
        .create(&Default::default(), &job("a-poison-1", json!({})))
        .await
        .unwrap_err();
    let s = status(e);
    assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        s.message,
        "admission webhook \"deny.example.com\" denied the request: a-poison-1 is not allowed"
    );
    assert!(
        jobs.get_opt("a-poison-1").await.unwrap().is_none(),
        "not stored"
    );
    create(&jobs, "fine", json!({})).await;
    let creates = sim.creates_of("jobs");
    assert_eq!(
        creates.iter().map(|c| c.code).collect::<Vec<_>>(),
        [403, 201],
        "refusals are in the create log"
    );
    sim.allow_creates();
    create(&jobs, "a-poison-1", json!({})).await;
}
