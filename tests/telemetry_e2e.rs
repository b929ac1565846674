//! OpenTelemetry traces through the built binary: `telemetry.otlp` set,
//! a message from Redis and one retried builtin-queue message; a minimal
//! OTLP/HTTP (JSON) receiver in the test collects what kedge exports.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{wait_until, Workspace};

/// A span as exported: (trace id, name, attributes as text).
#[derive(Debug, Clone)]
struct Span {
    trace: String,
    parent: String,
    name: String,
    attributes: BTreeMap<String, String>,
    error: bool,
}

/// Accepts OTLP/HTTP JSON posts on a free port; returns its base URL and
/// the spans received so far.
fn receiver() -> (String, Arc<Mutex<Vec<Span>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let spans = Arc::new(Mutex::new(Vec::new()));
    let sink = spans.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let sink = sink.clone();
            std::thread::spawn(move || serve(conn, &sink));
        }
    });
    (url, spans)
}

/// Serves one keep-alive connection: each request's JSON body is parsed
/// and answered 200 `{}`.
fn serve(conn: std::net::TcpStream, sink: &Mutex<Vec<Span>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        assert!(
            line.starts_with("POST /v1/traces "),
            "unexpected request {line:?}"
        );
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap();
                }
                if k.eq_ignore_ascii_case("content-type") {
                    assert!(
                        v.contains("application/json"),
                        "OTLP/HTTP JSON expected: {v}"
                    );
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&body).expect("OTLP JSON");
        sink.lock().unwrap().extend(spans_of(&doc));
        out.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        )
        .unwrap();
    }
}

fn spans_of(doc: &serde_json::Value) -> Vec<Span> {
    let mut out = Vec::new();
    for rs in doc["resourceSpans"].as_array().into_iter().flatten() {
        let service = rs["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == "service.name")
            .map(|a| a["value"]["stringValue"].clone());
        assert_eq!(service, Some(serde_json::json!("kedge-test")));
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for s in ss["spans"].as_array().into_iter().flatten() {
                let attributes = s["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        let v = &a["value"];
                        let text = v["stringValue"]
                            .as_str()
                            .map(str::to_string)
                            .or_else(|| v["intValue"].as_str().map(str::to_string))
                            .unwrap_or_else(|| v.to_string());
                        (a["key"].as_str().unwrap().to_string(), text)
                    })
                    .collect();
                out.push(Span {
                    trace: s["traceId"].as_str().unwrap().to_string(),
                    parent: s["parentSpanId"].as_str().unwrap_or("").to_string(),
                    name: s["name"].as_str().unwrap().to_string(),
                    attributes,
                    error: s["status"]["code"] == 2 || s["status"]["code"] == "STATUS_CODE_ERROR",
                });
            }
        }
    }
    out
}

#[test]
fn each_message_is_one_trace_of_intake_launch_and_run_spans() {
    let redis_url = "redis://127.0.0.1:6379/";
    let mut conn = match redis::Client::open(redis_url).and_then(|c| c.get_connection()) {
        Ok(c) => c,
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("Redis is unavailable and CI is set: {e}")
        }
        Err(e) => {
            eprintln!(
                "\n!!! SKIPPING: Redis is unavailable ({e}); start it or run under CI to enforce\n"
            );
            return;
        }
    };
    let list = format!("kedge-otel-{}", uuid::Uuid::new_v4().simple());
    let (url, spans) = receiver();
    let ws = Workspace::new();
    let config = std::fs::read_to_string(ws.path().join("config/kedge.yaml")).unwrap();
    ws.write_config(&format!(
        "{config}telemetry:\n  otlp:\n    endpoint: {url}\n    service_name: kedge-test\n"
    ));
    let job = |name: &str, trigger: &str, command: &str| {
        format!(
            "name: {name}\ntrigger:\n  queue:\n    {trigger}\n\
             retry: {{ max_attempts: 2, backoff: 100ms }}\n\
             template:\n  backoffLimit: 0\n  template:\n    spec:\n      restartPolicy: Never\n      \
             containers: [{{ name: m, command: [\"sh\", \"-c\", \"{command}\"] }}]\n"
        )
    };
    ws.write_job(
        "flaky",
        &job("flaky", "builtin: {}", "test $KEDGE_ATTEMPT -gt 1"),
    );
    ws.write_job(
        "fromredis",
        &job(
            "fromredis",
            &format!("redis_list: {{ url: \"{redis_url}\", list: {list} }}"),
            "true",
        ),
    );
    let d = ws.start_daemon();
    assert!(d.log().contains("exporting traces"), "{}", d.log());
    ws.ok(&["enqueue", "flaky", "--id", "f-1", "--data", "{}"]);
    let _: () = redis::cmd("LPUSH")
        .arg(&list)
        .arg("{\"n\":1}")
        .query(&mut conn)
        .unwrap();
    wait_until(Duration::from_secs(60), "both messages to finish", || {
        let runs = ws.runs();
        runs.iter().filter(|r| r["state"] == "succeeded").count() == 2
    });
    assert!(d.stop().success());
    let _: () = redis::cmd("DEL").arg(&list).query(&mut conn).unwrap();
    // The last batch is flushed at shutdown.
    wait_until(Duration::from_secs(20), "the spans to arrive", || {
        spans.lock().unwrap().len() >= 7
    });

    let spans = spans.lock().unwrap().clone();
    let of = |job: &str| -> Vec<Span> {
        spans
            .iter()
            .filter(|s| s.attributes.get("kedge.job").map(String::as_str) == Some(job))
            .cloned()
            .collect()
    };
    let names = |spans: &[Span]| -> Vec<String> {
        let mut n: Vec<String> = spans.iter().map(|s| s.name.clone()).collect();
        n.sort();
        n
    };

    let flaky = of("flaky");
    assert_eq!(
        names(&flaky),
        ["kedge.launch", "kedge.launch", "kedge.run", "kedge.run"],
        "{flaky:#?}"
    );
    let trace = &flaky[0].trace;
    assert!(
        flaky
            .iter()
            .all(|s| &s.trace == trace && s.parent == flaky[0].parent),
        "one trace, one parent: {flaky:#?}"
    );
    let runs: Vec<&Span> = flaky.iter().filter(|s| s.name == "kedge.run").collect();
    let state_of = |attempt: &str| {
        runs.iter()
            .find(|s| s.attributes["kedge.attempt"] == attempt)
            .map(|s| (s.attributes["kedge.state"].clone(), s.error))
    };
    assert_eq!(state_of("1"), Some(("retrying".into(), true)));
    assert_eq!(state_of("2"), Some(("succeeded".into(), false)));

    let redis = of("fromredis");
    assert_eq!(
        names(&redis),
        ["kedge.intake", "kedge.launch", "kedge.run"],
        "{redis:#?}"
    );
    assert!(redis.iter().all(|s| s.trace == redis[0].trace));
    assert_ne!(&redis[0].trace, trace, "another message, another trace");
    let intake = redis.iter().find(|s| s.name == "kedge.intake").unwrap();
    assert_eq!(intake.attributes["kedge.outcome"], "stored");
    assert!(
        intake.attributes["kedge.source"].starts_with("redis_list"),
        "{intake:?}"
    );
}
