//! Deadline-aware sizing end to end, through the built binary on the local
//! executor: a backup-like Indexed job whose shards sleep in proportion to
//! their share of the work, so the real finish can be held against the
//! deadline the planner promised.

mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use support::{wait_until, Workspace};

/// Seconds one unit of work takes one pod. The model's true rate is
/// therefore 3600 / SECONDS_PER_UNIT units per pod per hour.
const SECONDS_PER_UNIT: f64 = 0.25;

fn time(v: &serde_json::Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("a time"))
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

/// A job measuring its work with `cat WORKFILE`; each shard sleeps its
/// share (work / shards × SECONDS_PER_UNIT).
fn backup_job(
    ws: &Workspace,
    name: &str,
    extra_sizing: &str,
    within: &str,
    initial_rate: f64,
) -> String {
    let work_file = ws.path().join(format!("{name}.work"));
    format!(
        r#"
name: {name}
trigger:
  queue:
    builtin: {{}}
window:
  within: {within}
sizing:
  work:
    command: ["cat", "{work}"]
  unit: GB
  initial_rate_per_pod: {initial_rate}
  margin: 0.2
{extra_sizing}
retry:
  max_attempts: 1
template:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: shard
          command: ["sh", "-c", "sleep $(awk \"BEGIN {{ print $KEDGE_WORK / $KEDGE_SHARDS * {spu} }}\")"]
"#,
        work = work_file.display(),
        spu = SECONDS_PER_UNIT,
    )
}

fn set_work(ws: &Workspace, name: &str, work: f64) {
    std::fs::write(ws.path().join(format!("{name}.work")), format!("{work}\n")).unwrap();
}

fn succeeded(ws: &Workspace) -> Vec<serde_json::Value> {
    ws.runs()
        .into_iter()
        .filter(|r| r["state"] == "succeeded")
        .collect()
}

/// The 4th run is sized from the rate fitted to the first three. The
/// history spans 1 to 5 s of work per pod, so a start-up delay of a few
/// hundred milliseconds on a loaded machine moves the fitted rate by a few
/// per cent, well inside the 30 % allowed, which still tells the true rate
/// from the initial one (3× it) and from anything that would size the 4th
/// run wrong.
#[test]
fn after_three_runs_of_history_the_fourth_is_sized_to_finish_before_its_deadline() {
    let ws = Workspace::new();
    // The initial rate is 3× too optimistic: only history can size it right.
    let true_rate = 3600.0 / SECONDS_PER_UNIT;
    ws.write_job(
        "backup",
        &backup_job(
            &ws,
            "backup",
            "  parallelism: { min: 1, max: 8 }",
            "10s",
            true_rate * 3.0,
        ),
    );
    let d = ws.start_daemon();
    // History with different work per pod (1, 3 and 5 s, each on one pod:
    // 8 s are usable), so rate and overhead are fitted.
    for (i, work) in [4.0, 12.0, 20.0].into_iter().enumerate() {
        set_work(&ws, "backup", work);
        ws.ok(&["enqueue", "backup", "--data", "{}"]);
        wait_until(Duration::from_secs(60), "a history run", || {
            succeeded(&ws).len() == i + 1
        });
    }
    // The planner's own view before the 4th run: fitted, not initial.
    let plan: serde_json::Value = serde_json::from_str(&ws.ok(&[
        "plan",
        "--job",
        "backup",
        "--at",
        "2026-06-01T00:00:00Z",
        "--work",
        "48",
        "--json",
    ]))
    .unwrap();
    assert_eq!(plan["model"], "fitted from 3 runs", "{plan}");
    let rate = plan["rate_per_pod"].as_f64().unwrap();
    assert!(
        (rate - true_rate).abs() / true_rate < 0.3,
        "fitted rate {rate} vs true {true_rate}"
    );

    set_work(&ws, "backup", 48.0);
    ws.ok(&["enqueue", "backup", "--data", "{}"]);
    wait_until(Duration::from_secs(60), "the sized run", || {
        succeeded(&ws).len() == 4
    });
    assert!(d.stop().success());

    let runs = ws.runs();
    let fourth = &runs[0];
    let sizing = &fourth["sizing"];
    // 48 units × 0.25 s = 12 s of pod time; 8 s usable (10 s − 20 %) → 2
    // pods at the true rate; 3 if the fit erred slow (within its 30 %). The
    // initial rate would have planned 1 pod, 12 s: past the deadline.
    let p = sizing["parallelism"].as_i64().unwrap();
    assert!(p == 2 || p == 3, "parallelism {p}: {fourth}");
    assert_eq!(sizing["at_risk"], false, "{fourth}");
    let finished = time(&fourth["finished_at"]);
    let deadline = time(&fourth["deadline"]);
    assert!(
        finished <= deadline,
        "finished {finished} after its deadline {deadline}: {fourth}"
    );
    let projected = time(&sizing["projected_finish"]);
    println!("projected {projected}, actual {finished}, deadline {deadline}");
}

/// Accepts one HTTP request on `listener` and returns its body; panics
/// (failing the test's `join`) if none comes within `limit`, rather than
/// hanging the test.
fn accept_one(listener: std::net::TcpListener, limit: Duration) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let start = std::time::Instant::now();
        let mut s = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(start.elapsed() < limit, "no webhook call within {limit:?}");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).unwrap_or(0);
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(head_end) = text.find("\r\n\r\n") {
                let len = text[..head_end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= head_end + 4 + len {
                    s.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                        .unwrap();
                    return text[head_end + 4..].to_string();
                }
            }
            if n == 0 {
                return String::new();
            }
        }
    })
}

#[test]
fn a_run_the_maximum_cannot_finish_in_time_is_flagged_at_risk_and_skipped() {
    let ws = Workspace::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/kedge", listener.local_addr().unwrap());
    let hook = accept_one(listener, Duration::from_secs(60));
    let sizing = format!(
        "  parallelism: {{ min: 1, max: 2 }}\n  when_at_risk: skip\n  at_risk_webhook: {url}"
    );
    ws.write_job(
        "big",
        &backup_job(&ws, "big", &sizing, "2s", 3600.0 / SECONDS_PER_UNIT),
    );
    set_work(&ws, "big", 100.0);
    let d = ws.start_daemon();
    ws.ok(&["enqueue", "big", "--data", "{}"]);
    let body = hook.join().unwrap();
    let event: serde_json::Value = serde_json::from_str(&body).expect("webhook body is JSON");
    assert_eq!(event["event"], "at_risk");
    assert_eq!(event["decision"]["job"], "big");
    assert_eq!(event["decision"]["at_risk"], true);
    assert_eq!(event["decision"]["parallelism"], 2);
    wait_until(Duration::from_secs(20), "the run to be settled", || {
        ws.runs().first().is_some_and(|r| r["state"] == "failed")
    });
    assert!(d.stop().success());
    let run = &ws.runs()[0];
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .starts_with("skipped: at risk"),
        "{run}"
    );
    assert_eq!(run["sizing"]["at_risk"], true);
    assert!(
        ws.dead_letters().is_empty(),
        "a skipped run is not dead-lettered"
    );
    let log = ws.daemon_logs();
    assert!(log.contains("run at risk"), "{log}");
}

#[test]
fn a_run_slower_than_its_history_gets_its_parallelism_raised_in_flight() {
    let ws = Workspace::new();
    // The initial rate claims 64 units in well under the window on one pod;
    // the shards really take 2 s each, so one pod would need 16 s of a 14 s
    // window. Raised to 2 pods after the first shard, it needs about 10 s:
    // seconds of slack for a loaded machine.
    let sizing = "  parallelism: { min: 1, max: 4 }\n  shards: 8";
    ws.write_job(
        "slow",
        &backup_job(&ws, "slow", sizing, "14s", 3600.0 * 100.0),
    );
    set_work(&ws, "slow", 64.0);
    let d = ws.start_daemon();
    ws.ok(&["enqueue", "slow", "--data", "{}"]);
    wait_until(Duration::from_secs(60), "the run to finish", || {
        succeeded(&ws).len() == 1
    });
    assert!(d.stop().success());
    let run = &ws.runs()[0];
    let sizing = &run["sizing"];
    assert!(sizing["parallelism"].as_i64().unwrap() > 1, "{run}");
    assert!(
        sizing["note"]
            .as_str()
            .unwrap()
            .contains("raised from 1 to"),
        "{run}"
    );
    assert!(time(&run["finished_at"]) <= time(&run["deadline"]), "{run}");
}

/// Max number of intervals open at once; `open` intervals end at `cut`.
fn max_overlap(spans: &[(f64, Option<f64>)], cut: f64) -> usize {
    let mut ev: Vec<(f64, i32)> = Vec::new();
    for (s, e) in spans {
        ev.push((*s, 1));
        ev.push((e.unwrap_or(cut), -1));
    }
    ev.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut cur, mut max) = (0i32, 0i32);
    for (_, d) in ev {
        cur += d;
        max = max.max(cur);
    }
    max as usize
}

fn spans(dir: &Path) -> Vec<(f64, Option<f64>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap();
        let mut start = None;
        let mut end = None;
        for l in text.lines() {
            if let Some(v) = l.strip_prefix("start ") {
                start = v.trim().parse::<f64>().ok();
            }
            if let Some(v) = l.strip_prefix("end ") {
                end = v.trim().parse::<f64>().ok();
            }
        }
        if let Some(s) = start {
            out.push((s, end));
        }
    }
    out
}

#[test]
fn two_jobs_sharing_a_two_slot_pool_never_exceed_two_together_even_across_a_restart() {
    let ws = Workspace::new();
    let stamps = ws.path().join("stamps");
    std::fs::create_dir_all(&stamps).unwrap();
    ws.write_config(
        "jobs_dir: jobs\n\
         store:\n  url: sqlite://state/kedge.db\n  poll_interval: 50ms\n\
         executor:\n  kind: local\n  local:\n    work_dir: runs\n    pod_backoff: 100ms\n\
         pools:\n  db-prod: 2\n\
         shutdown_timeout: 10s\n",
    );
    for name in ["dump", "vacuum"] {
        ws.write_job(
            name,
            &format!(
                r#"
name: {name}
trigger:
  queue:
    builtin: {{}}
limits:
  pool: db-prod
template:
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: main
          command: ["sh", "-c", "f={stamps}/$KEDGE_RUN_ID.$$$$; echo start $(date +%s.%N) > $f; sleep 0.6; echo end $(date +%s.%N) >> $f"]
"#,
                stamps = stamps.display()
            ),
        );
    }
    for i in 0..5 {
        ws.ok(&["enqueue", "dump", "--data", &format!("{{\"i\":{i}}}")]);
        ws.ok(&["enqueue", "vacuum", "--data", &format!("{{\"i\":{i}}}")]);
    }
    let d = ws.start_daemon();
    wait_until(Duration::from_secs(30), "two runs in flight", || {
        ws.runs().iter().filter(|r| r["state"] == "running").count() == 2
    });
    d.kill9();
    let d = ws.start_daemon();
    // The daemon logs "kedge ready" after recovery (which kills what the
    // killed daemon left running) and before its first launch: the
    // interrupted runs' processes were dead by then.
    let restarted_at = ready_at(&d.log());
    wait_until(Duration::from_secs(60), "all 10 runs", || {
        succeeded(&ws).len() == 10
    });
    assert!(d.stop().success());
    // Processes of the killed daemon's runs never wrote "end": they died
    // no later than the restart, which killed them before relaunching.
    let all = spans(&stamps);
    assert!(all.len() >= 10, "{all:?}");
    let open = all.iter().filter(|(_, e)| e.is_none()).count();
    assert!(open <= 2, "{all:?}");
    assert_eq!(max_overlap(&all, restarted_at), 2, "{all:?}");
}

/// The time of the "kedge ready" line of a JSON daemon log, in Unix seconds.
fn ready_at(log: &str) -> f64 {
    let line = log
        .lines()
        .find(|l| l.contains("kedge ready"))
        .unwrap_or_else(|| panic!("no ready line in {log}"));
    let v: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
    let ts = v["timestamp"].as_str().expect("timestamp");
    let t = chrono::DateTime::parse_from_rfc3339(ts).expect("RFC 3339 timestamp");
    t.timestamp_micros() as f64 / 1e6
}
