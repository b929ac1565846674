//! Work probes ([`kedge::probes`]) against real things: processes, a tiny
//! HTTP server on 127.0.0.1, a SQLite file, the real PostgreSQL server (see
//! `support::postgres_database`) and a store with pending runs.
//!
//! Probes are built the way a job file builds them, through
//! [`probe::resolve`], and measured with [`probes::measure`].

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use kedge::config::probe::{self, RawWorkProbe, WorkProbe};
use kedge::lifecycle::TriggerKind;
use kedge::probes::{self, ProbeContext, ProbeError};
use kedge::store::{NewWorkItem, Store};
use sqlx::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SHORT: Duration = Duration::from_secs(20);

fn resolve(raw: RawWorkProbe) -> WorkProbe {
    probe::resolve(&raw, &|_| None).unwrap_or_else(|p| panic!("does not resolve: {p:?}"))
}

fn resolve_with(raw: RawWorkProbe, var: &str, value: &str) -> WorkProbe {
    let env = |k: &str| (k == var).then(|| value.to_string());
    probe::resolve(&raw, &env).unwrap_or_else(|p| panic!("does not resolve: {p:?}"))
}

/// A migrated in-memory store (the probes other than `queue_length` only
/// need one to exist).
async fn store() -> Store {
    let s = Store::connect("sqlite::memory:").await.expect("store");
    s.migrate().await.expect("migrate");
    s
}

async fn measure(probe: &WorkProbe, timeout: Duration) -> Result<f64, ProbeError> {
    let store = store().await;
    let ctx = ProbeContext {
        store: &store,
        job: "backup",
    };
    probes::measure(probe, &ctx, timeout).await
}

fn chain(e: &ProbeError) -> String {
    kedge::error_chain(e)
}

// ----- static ---------------------------------------------------------------

#[tokio::test]
async fn static_is_the_number_itself() {
    let p = resolve(RawWorkProbe::Static(400.0));
    assert_eq!(p.kind(), "static");
    assert_eq!(measure(&p, SHORT).await.unwrap(), 400.0);
}

// ----- command --------------------------------------------------------------

fn command(argv: &[&str]) -> WorkProbe {
    resolve(RawWorkProbe::Command(
        argv.iter().map(|s| s.to_string()).collect(),
    ))
}

/// True when `pid` no longer runs: gone, or a zombie waiting for its parent.
fn gone(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    if !alive {
        return true;
    }
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| {
            panic!(
                "{} was not written ({e}): did the script start?",
                path.display()
            )
        })
        .trim()
        .parse()
        .expect("a pid")
}

#[tokio::test]
async fn command_prints_a_number() {
    let p = command(&["sh", "-c", "printf '  42.5\\n\\n'"]);
    assert_eq!(p.kind(), "command");
    assert_eq!(measure(&p, SHORT).await.unwrap(), 42.5);
    // argv runs as is: no shell is added, so nothing is expanded.
    assert_eq!(
        measure(&command(&["echo", "12"]), SHORT).await.unwrap(),
        12.0
    );
    let e = measure(&command(&["echo", "$HOME"]), SHORT)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ProbeError::CommandNotNumber { output, .. } if output == "$HOME"),
        "{e:?}"
    );
    // The job's name is in the environment.
    let p = command(&["sh", "-c", "test \"$KEDGE_JOB\" = backup && echo 7"]);
    assert_eq!(measure(&p, SHORT).await.unwrap(), 7.0);
}

#[tokio::test]
async fn command_output_that_is_not_work_is_an_error() {
    let e = measure(&command(&["echo", "lots"]), SHORT)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "command probe: echo printed \"lots\", not a number"
    );
    let e = measure(&command(&["true"]), SHORT).await.unwrap_err();
    assert!(
        matches!(&e, ProbeError::CommandNotNumber { output, .. } if output.is_empty()),
        "{e:?}"
    );
    let e = measure(&command(&["echo", "-3"]), SHORT).await.unwrap_err();
    assert!(
        matches!(e, ProbeError::InvalidWork { kind: "command", value } if value == -3.0),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "command probe measured -3; work must be a finite number, 0 or more"
    );
    let e = measure(&command(&["echo", "NaN"]), SHORT)
        .await
        .unwrap_err();
    assert!(matches!(e, ProbeError::InvalidWork { .. }), "{e:?}");
}

#[tokio::test]
async fn command_failures_carry_the_exit_code_and_first_stderr_line() {
    let p = command(&[
        "sh",
        "-c",
        "echo 5; echo >&2; echo 'disk not mounted' >&2; echo more >&2; exit 3",
    ]);
    let e = measure(&p, SHORT).await.unwrap_err();
    assert!(
        matches!(&e, ProbeError::CommandExit { code: 3, .. }),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "command probe: sh exited with code 3: disk not mounted"
    );

    let e = measure(&command(&["sh", "-c", "kill -TERM $$"]), SHORT)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ProbeError::CommandSignal { signal: 15, .. }),
        "{e:?}"
    );

    let e = measure(&command(&["/nonexistent/kedge-probe"]), SHORT)
        .await
        .unwrap_err();
    assert!(matches!(&e, ProbeError::CommandSpawn { .. }), "{e:?}");
    assert!(
        chain(&e).starts_with("command probe cannot start /nonexistent/kedge-probe: "),
        "{}",
        chain(&e)
    );
}

#[tokio::test]
async fn command_timeout_kills_its_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "echo $$ > {d}/leader; sleep 60 & echo $! > {d}/child; wait",
        d = dir.path().display()
    );
    let p = command(&["sh", "-c", &script]);
    let start = Instant::now();
    // Long enough that a loaded machine's `sh` has written both pid files.
    let e = measure(&p, Duration::from_secs(5)).await.unwrap_err();
    assert!(
        matches!(
            e,
            ProbeError::Timeout {
                kind: "command",
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.to_string(), "command probe timed out after 5s");
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "took {:?}",
        start.elapsed()
    );
    // The leader was killed and reaped before measure returned; the
    // grandchild (same group) was killed and goes as soon as it is reaped.
    let leader = read_pid(&dir.path().join("leader"));
    let child = read_pid(&dir.path().join("child"));
    assert!(gone(leader), "the probe's process {leader} still runs");
    support::wait_until_async(
        Duration::from_secs(10),
        "the probe's grandchild to die",
        || async { gone(child) },
    )
    .await;
}

#[tokio::test]
async fn command_leaves_nothing_behind_when_it_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "sleep 60 >/dev/null 2>&1 & echo $! > {d}/bg; echo 5",
        d = dir.path().display()
    );
    assert_eq!(
        measure(&command(&["sh", "-c", &script]), SHORT)
            .await
            .unwrap(),
        5.0
    );
    let bg = read_pid(&dir.path().join("bg"));
    support::wait_until_async(
        Duration::from_secs(10),
        "the background process to die",
        || async { gone(bg) },
    )
    .await;
}

#[tokio::test]
async fn a_cancelled_command_probe_kills_its_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let (leader_file, child_file) = (dir.path().join("leader"), dir.path().join("child"));
    let script = format!(
        "echo $$ > {l}; sleep 60 & echo $! > {c}; wait",
        l = leader_file.display(),
        c = child_file.display()
    );
    let p = command(&["sh", "-c", &script]);
    let store = store().await;
    let ctx = ProbeContext {
        store: &store,
        job: "backup",
    };
    // The caller gives up (drops the future) once the script runs.
    let written = |f: &Path| std::fs::read_to_string(f).is_ok_and(|s| s.ends_with('\n'));
    tokio::select! {
        r = probes::measure(&p, &ctx, Duration::from_secs(120)) => panic!("finished: {r:?}"),
        _ = support::wait_until_async(SHORT, "the script to start", || async {
            written(&leader_file) && written(&child_file)
        }) => {}
    }
    for pid in [read_pid(&leader_file), read_pid(&child_file)] {
        support::wait_until_async(
            Duration::from_secs(10),
            "the cancelled probe's processes to die",
            || async { gone(pid) },
        )
        .await;
    }
}

// ----- http -----------------------------------------------------------------

/// A tiny HTTP/1.1 server on 127.0.0.1: each path answers with a fixed
/// status and body (status 0: never answers). Returns its base URL.
async fn serve(routes: &[(&'static str, u16, &'static str)]) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = routes.to_vec();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let routes = routes.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let (status, body) = routes
                    .iter()
                    .find(|r| r.0 == path)
                    .map(|r| (r.1, r.2))
                    .unwrap_or((404, "no such metric"));
                if status == 0 {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return;
                }
                let resp = format!(
                    "HTTP/1.1 {status} Whatever\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

fn http(url: &str, pointer: &str) -> WorkProbe {
    resolve(RawWorkProbe::Http {
        url: Some(url.to_string()),
        url_env: None,
        pointer: pointer.to_string(),
    })
}

const PROMETHEUS: &str = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000.123,"1234.5"]}]}}"#;

#[tokio::test]
async fn http_reads_the_number_at_a_json_pointer() {
    let base = serve(&[
        ("/flat", 200, r#"{"backlog": 17}"#),
        ("/prom", 200, PROMETHEUS),
        ("/escaped", 200, r#"{"a/b": {"m~n": 2.25}}"#),
        ("/whole", 200, "99"),
    ])
    .await;
    let p = http(&format!("{base}/flat"), "/backlog");
    assert_eq!(p.kind(), "http");
    assert_eq!(measure(&p, SHORT).await.unwrap(), 17.0);
    // Nested, through an array, and a numeric string (as Prometheus writes).
    let p = http(&format!("{base}/prom"), "/data/result/0/value/1");
    assert_eq!(measure(&p, SHORT).await.unwrap(), 1234.5);
    let p = http(&format!("{base}/escaped"), "/a~1b/m~0n");
    assert_eq!(measure(&p, SHORT).await.unwrap(), 2.25);
    let p = http(&format!("{base}/whole"), "");
    assert_eq!(measure(&p, SHORT).await.unwrap(), 99.0);
    // The URL may come from the environment.
    let p = resolve_with(
        RawWorkProbe::Http {
            url: None,
            url_env: Some("METRICS_URL".into()),
            pointer: "/backlog".into(),
        },
        "METRICS_URL",
        &format!("{base}/flat"),
    );
    assert_eq!(measure(&p, SHORT).await.unwrap(), 17.0);
}

#[tokio::test]
async fn http_failures_say_what_was_wrong() {
    let base = serve(&[
        ("/prom", 200, PROMETHEUS),
        ("/down", 503, "upstream is down\nmore detail"),
        ("/html", 200, "<html>hello</html>"),
        ("/object", 200, r#"{"a": {"b": 1}, "s": "n/a", "neg": -2}"#),
        ("/hang", 0, ""),
    ])
    .await;
    let e = measure(
        &http(&format!("{base}/prom"), "/data/result/1/value/1"),
        SHORT,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ProbeError::HttpPointerMissing { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("http probe GET {base}/prom: nothing at JSON pointer \"/data/result/1/value/1\"")
    );

    let e = measure(&http(&format!("{base}/down"), "/x"), SHORT)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ProbeError::HttpStatus { status, .. } if status.as_u16() == 503),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!("http probe GET {base}/down answered 503 Service Unavailable: upstream is down")
    );

    let e = measure(&http(&format!("{base}/html"), "/x"), SHORT)
        .await
        .unwrap_err();
    assert!(matches!(e, ProbeError::HttpNotJson { .. }), "{e:?}");
    assert!(
        chain(&e).starts_with(&format!(
            "http probe GET {base}/html: the body is not JSON: "
        )),
        "{}",
        chain(&e)
    );

    let e = measure(&http(&format!("{base}/object"), "/a"), SHORT)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("http probe GET {base}/object: the value at \"/a\" is an object, not a number")
    );
    let e = measure(&http(&format!("{base}/object"), "/s"), SHORT)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .ends_with("is the string \"n/a\", not a number"),
        "{e}"
    );
    let e = measure(&http(&format!("{base}/object"), "/neg"), SHORT)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ProbeError::InvalidWork { kind: "http", .. }),
        "{e:?}"
    );

    let start = Instant::now();
    let e = measure(
        &http(&format!("{base}/hang"), "/x"),
        Duration::from_millis(500),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, ProbeError::Timeout { kind: "http", .. }),
        "{e:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );

    // Credentials and query strings stay out of messages.
    let with_secret = base.replace("http://", "http://probe:hunter2@");
    let e = measure(
        &http(&format!("{with_secret}/nothing?token=s3cret"), "/x"),
        SHORT,
    )
    .await
    .unwrap_err();
    let text = chain(&e);
    assert!(
        matches!(&e, ProbeError::HttpStatus { status, .. } if status.as_u16() == 404),
        "{e:?}"
    );
    assert!(
        !text.contains("hunter2") && !text.contains("s3cret"),
        "{text}"
    );
    assert!(
        text.contains("probe:***@") && text.contains("/nothing?…"),
        "{text}"
    );
}

#[tokio::test]
async fn http_connection_errors_do_not_leak_the_url() {
    // A port nothing listens on, held (bound, not listening) until the
    // check ends, so no other test's server can take it meanwhile.
    let reserved = support::ReservedPort::new();
    let addr = reserved.addr();
    let p = http(&format!("http://probe:hunter2@{addr}/m?token=s3cret"), "/x");
    let e = measure(&p, SHORT).await.unwrap_err();
    assert!(matches!(e, ProbeError::HttpRequest { .. }), "{e:?}");
    let text = chain(&e);
    assert!(
        !text.contains("hunter2") && !text.contains("s3cret"),
        "{text}"
    );
    assert!(
        text.starts_with(&format!(
            "http probe GET http://probe:***@{addr}/m?… failed"
        )),
        "{text}"
    );
}

// ----- sql ------------------------------------------------------------------

fn sql(url: &str, query: &str) -> WorkProbe {
    resolve_with(
        RawWorkProbe::Sql {
            url_env: "PROBE_DB".into(),
            query: query.to_string(),
        },
        "PROBE_DB",
        url,
    )
}

#[tokio::test]
async fn sql_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("app.db").display());
    {
        let mut c = sqlx::SqliteConnection::connect(&format!("{url}?mode=rwc"))
            .await
            .unwrap();
        sqlx::raw_sql(
            "CREATE TABLE files (name TEXT, size INTEGER, ratio REAL); \
             INSERT INTO files VALUES ('a', 100, 0.5), ('b', 250, 1.5);",
        )
        .execute(&mut c)
        .await
        .unwrap();
        c.close().await.unwrap();
    }
    let ok = |q: &str| sql(&url, q);
    assert_eq!(ok("select 1").kind(), "sql");
    assert_eq!(
        measure(&ok("SELECT SUM(size) FROM files"), SHORT)
            .await
            .unwrap(),
        350.0
    );
    assert_eq!(
        measure(&ok("SELECT AVG(ratio) FROM files"), SHORT)
            .await
            .unwrap(),
        1.0
    );
    // The first column of the first row.
    assert_eq!(
        measure(
            &ok("SELECT size, name FROM files ORDER BY size DESC"),
            SHORT
        )
        .await
        .unwrap(),
        250.0
    );

    let e = measure(&ok("SELECT name FROM files"), SHORT)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ProbeError::SqlNotNumeric { type_name, .. } if type_name == "TEXT"),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "sql probe query returned a TEXT value on {url}, not a number (CAST it in the query)"
        )
    );
    let e = measure(&ok("SELECT size FROM files WHERE 0"), SHORT)
        .await
        .unwrap_err();
    assert!(matches!(e, ProbeError::SqlNoRows { .. }), "{e:?}");
    let e = measure(&ok("SELECT SUM(size) FROM files WHERE 0"), SHORT)
        .await
        .unwrap_err();
    assert!(matches!(e, ProbeError::SqlNull { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("sql probe query returned NULL on {url}")
    );
    let e = measure(&ok("SELECT -5"), SHORT).await.unwrap_err();
    assert!(
        matches!(e, ProbeError::InvalidWork { kind: "sql", .. }),
        "{e:?}"
    );
    let e = measure(&ok("SELECT x FROM missing"), SHORT)
        .await
        .unwrap_err();
    assert!(matches!(e, ProbeError::SqlQuery { .. }), "{e:?}");
    assert!(chain(&e).contains("no such table"), "{}", chain(&e));
    // Read-only: a probe cannot change the database.
    let e = measure(
        &ok("INSERT INTO files VALUES ('c', 1, 1) RETURNING size"),
        SHORT,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ProbeError::SqlQuery { .. }), "{e:?}");
    assert!(chain(&e).contains("readonly"), "{}", chain(&e));
    assert_eq!(
        measure(&ok("SELECT COUNT(*) FROM files"), SHORT)
            .await
            .unwrap(),
        2.0
    );

    // A database that does not exist is not created.
    let missing = format!("sqlite://{}", dir.path().join("nope.db").display());
    let e = measure(&sql(&missing, "SELECT 1"), SHORT)
        .await
        .unwrap_err();
    assert!(matches!(e, ProbeError::SqlConnect { .. }), "{e:?}");
    assert!(!dir.path().join("nope.db").exists());
}

#[tokio::test]
async fn sql_connection_errors_mask_the_password() {
    // A port nothing listens on, held until the check ends (see above).
    let reserved = support::ReservedPort::new();
    let addr = reserved.addr();
    let p = sql(&format!("postgres://kedge:hunter2@{addr}/app"), "select 1");
    assert!(!format!("{p:?}").contains("hunter2"));
    let e = measure(&p, SHORT).await.unwrap_err();
    assert!(matches!(e, ProbeError::SqlConnect { .. }), "{e:?}");
    let text = chain(&e);
    assert!(
        text.starts_with(&format!(
            "sql probe cannot connect to postgres://kedge:***@{addr}/app: "
        )),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn sql_on_postgres() {
    let Some(pg) = support::postgres_database().await else {
        return;
    };
    {
        let mut c = sqlx::PgConnection::connect(&pg.url).await.unwrap();
        sqlx::raw_sql(
            "CREATE TABLE t (n INT, label TEXT); \
             INSERT INTO t VALUES (3, 'x'), (4, 'y');",
        )
        .execute(&mut c)
        .await
        .unwrap();
        c.close().await.unwrap();
    }
    let ok = |q: &str| sql(&pg.url, q);
    assert_eq!(
        measure(&ok("select count(*) from t"), SHORT).await.unwrap(),
        2.0
    );
    assert_eq!(
        measure(&ok("select sum(n)::int4 from t"), SHORT)
            .await
            .unwrap(),
        7.0
    );
    assert_eq!(
        measure(&ok("select 2.5::float8"), SHORT).await.unwrap(),
        2.5
    );
    // NUMERIC, which sqlx's Any driver cannot decode.
    assert_eq!(
        measure(&ok("select 12.50::numeric(10,2)"), SHORT)
            .await
            .unwrap(),
        12.5
    );
    assert_eq!(
        measure(&ok("select sum(n) / 2.0 from t"), SHORT)
            .await
            .unwrap(),
        3.5
    );
    let size = measure(
        &ok("select pg_database_size(current_database()) / 1e9"),
        SHORT,
    )
    .await
    .unwrap();
    assert!(size > 0.0 && size < 100.0, "{size}");

    let e = measure(&ok("select label from t order by n"), SHORT)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ProbeError::SqlNotNumeric { type_name, .. } if type_name == "TEXT"),
        "{e:?}"
    );
    let e = measure(&ok("select n from t where false"), SHORT)
        .await
        .unwrap_err();
    assert!(matches!(e, ProbeError::SqlNoRows { .. }), "{e:?}");
    let e = measure(&ok("select from t"), SHORT).await.unwrap_err();
    assert!(matches!(e, ProbeError::SqlNoColumns { .. }), "{e:?}");
    let e = measure(&ok("select null::int"), SHORT).await.unwrap_err();
    assert!(matches!(e, ProbeError::SqlNull { .. }), "{e:?}");
    let e = measure(&ok("select 'NaN'::numeric"), SHORT)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ProbeError::InvalidWork { kind: "sql", .. }),
        "{e:?}"
    );
    let e = measure(&ok("select -1::int8"), SHORT).await.unwrap_err();
    assert!(
        matches!(e, ProbeError::InvalidWork { kind: "sql", .. }),
        "{e:?}"
    );
    let e = measure(&ok("select nope from t"), SHORT).await.unwrap_err();
    assert!(matches!(e, ProbeError::SqlQuery { .. }), "{e:?}");
    assert!(chain(&e).contains("nope"), "{}", chain(&e));

    // Read-only: a probe cannot change the database.
    let e = measure(
        &ok("with x as (insert into t values (9, 'z') returning n) select count(*) from x"),
        SHORT,
    )
    .await
    .unwrap_err();
    assert!(chain(&e).contains("read-only"), "{}", chain(&e));
    assert_eq!(
        measure(&ok("select count(*) from t"), SHORT).await.unwrap(),
        2.0
    );

    // A slow query times out; the server stops it shortly after.
    let start = Instant::now();
    let e = measure(&ok("select pg_sleep(30)"), Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ProbeError::Timeout { kind: "sql", .. }),
        "{e:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    let peek = sqlx::PgPool::connect(&pg.url).await.unwrap();
    support::wait_until_async(SHORT, "the server to stop the abandoned query", || {
        let peek = peek.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "select count(*) from pg_stat_activity \
                 where query = 'select pg_sleep(30)' and state = 'active'",
            )
            .fetch_one(&peek)
            .await
            .unwrap();
            n == 0
        }
    })
    .await;
    peek.close().await;
}

// ----- queue_length -----------------------------------------------------------

#[tokio::test]
async fn queue_length_counts_the_jobs_pending_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!(
        "sqlite://{}",
        dir.path().join("kedge.db").display()
    ))
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let item = |job: &str, msg: &str| NewWorkItem {
        job: job.to_string(),
        source: "builtin".to_string(),
        message_id: msg.to_string(),
        payload: None,
        deadline_ms: None,
        trigger: TriggerKind::Queue,
        run_id: format!("{job}-{msg}"),
        // One is not due yet: pending all the same.
        scheduled_ms: if msg == "m3" { i64::MAX / 2 } else { 1_000 },
    };
    for m in ["m1", "m2", "m3", "m4"] {
        assert!(store.insert_work_item(&item("resize", m)).await.unwrap());
    }
    assert!(store.insert_work_item(&item("other", "m1")).await.unwrap());
    // One has launched: no longer pending.
    assert!(store.claim_run("resize-m1", 2_000).await.unwrap());

    let p = resolve(RawWorkProbe::QueueLength {});
    assert_eq!(p.kind(), "queue_length");
    let at = |job: &'static str| ProbeContext { store: &store, job };
    assert_eq!(
        probes::measure(&p, &at("resize"), SHORT).await.unwrap(),
        3.0
    );
    assert_eq!(probes::measure(&p, &at("other"), SHORT).await.unwrap(), 1.0);
    assert_eq!(probes::measure(&p, &at("idle"), SHORT).await.unwrap(), 0.0);
    assert_eq!(store.pending_runs("resize").await.unwrap(), 3);

    // A store that fails says so.
    store.close().await;
    let e = probes::measure(&p, &at("resize"), SHORT).await.unwrap_err();
    assert!(matches!(e, ProbeError::QueueLength { .. }), "{e:?}");
    assert!(
        chain(&e).starts_with("queue_length probe cannot count the pending runs of resize: "),
        "{}",
        chain(&e)
    );
}
