//! Load guards end to end, through the built binary on the local
//! executor: the "load" is a row in a real PostgreSQL table (a fresh
//! database per test) that the guards' `sql` probes read, and the tests
//! move it up and down.

mod support;

use std::time::Duration;

use support::{http_get, postgres_database, wait_until, Workspace};

/// Config lines shared by the tests: a SQLite store in the workspace, the
/// local executor, /healthz on a free port.
const BASE: &str = "jobs_dir: jobs\n\
    store:\n  url: sqlite://state/kedge.db\n  poll_interval: 50ms\n\
    executor:\n  kind: local\n  local:\n    work_dir: runs\n    pod_backoff: 100ms\n    pod_backoff_max: 1s\n\
    http:\n  listen: 127.0.0.1:0\n\
    shutdown_timeout: 10s\n";

/// `kedge ARGS` in `ws` with `env` set (the guards' `url_env`), asserting
/// success; returns stdout.
fn kedge(ws: &Workspace, env: &[(String, String)], args: &[&str]) -> String {
    let out = ws
        .kedge()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(args)
        .output()
        .expect("run kedge");
    assert!(
        out.status.success(),
        "kedge {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn runs(ws: &Workspace, env: &[(String, String)]) -> Vec<serde_json::Value> {
    serde_json::from_str(&kedge(ws, env, &["runs", "--json", "--limit", "1000"])).unwrap()
}

/// The load table: one row, `cpu_pct`.
struct Load {
    pool: sqlx::PgPool,
}

impl Load {
    async fn new(url: &str, value: f64) -> Load {
        let pool = sqlx::PgPool::connect(url).await.expect("connect");
        sqlx::query("CREATE TABLE db_load (cpu_pct float8 NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO db_load VALUES ($1)")
            .bind(value)
            .execute(&pool)
            .await
            .unwrap();
        Load { pool }
    }

    async fn set(&self, value: f64) {
        sqlx::query("UPDATE db_load SET cpu_pct = $1")
            .bind(value)
            .execute(&self.pool)
            .await
            .unwrap();
    }
}

fn healthz_guard(addr: &str, name: &str) -> serde_json::Value {
    let (status, body) = http_get(addr, "/healthz");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    v["guards"][name].clone()
}

/// Whether the JSON log has a line with `message` and field `key` = `value`.
fn logged(log: &str, message: &str, key: &str, value: &str) -> usize {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == message && v["fields"][key] == value)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_the_load_holds_launches_and_lowering_it_below_resume_below_resumes_them() {
    let Some(db) = postgres_database().await else {
        return;
    };
    let load = Load::new(&db.url, 91.0).await;
    let ws = Workspace::new();
    let env = vec![("GUARD_HOLD_DB".to_string(), db.url.clone())];
    // A guard shared through the daemon config, named by the job.
    ws.write_config(&format!(
        "{BASE}guards:\n  - name: primary-db-cpu\n    probe: {{ sql: {{ url_env: GUARD_HOLD_DB, query: \"select cpu_pct from db_load\" }} }}\n    max: 80\n    resume_below: 70\n    interval: 100ms\n"
    ));
    ws.write_job(
        "loader",
        "name: loader\ntrigger:\n  queue:\n    builtin: {}\nguards: [primary-db-cpu]\n\
         template:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{ name: m, command: [\"true\"] }]\n",
    );
    kedge(&ws, &env, &["validate"]);
    let d = ws.start_daemon_with(&env);
    let addr = d.http_addr();
    wait_until(Duration::from_secs(20), "the guard to hold at 91", || {
        let g = healthz_guard(&addr, "primary-db-cpu");
        g["holding"] == true && g["value"] == 91.0
    });
    let (_, metrics) = http_get(&addr, "/metrics");
    assert!(
        metrics.contains("kedge_guard_holding{guard=\"primary-db-cpu\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kedge_guard_value{guard=\"primary-db-cpu\"} 91"),
        "{metrics}"
    );
    let plan = kedge(
        &ws,
        &env,
        &["plan", "--job", "loader", "--at", "2026-06-01T00:00:00Z"],
    );
    assert!(
        plan.contains("would hold: primary-db-cpu 91 > 80"),
        "{plan}"
    );

    kedge(&ws, &env, &["enqueue", "loader", "--data", "{}"]);
    // The dispatcher looked at the run and held it back, naming the guard.
    wait_until(Duration::from_secs(20), "the run held back", || {
        logged(
            &d.log(),
            "run held back by a load guard",
            "guard",
            "primary-db-cpu 91 > 80",
        ) == 1
    });
    assert_eq!(runs(&ws, &env)[0]["state"], "pending");

    // Between resume_below and max: still held (hysteresis).
    load.set(75.0).await;
    wait_until(Duration::from_secs(20), "the guard to read 75", || {
        healthz_guard(&addr, "primary-db-cpu")["value"] == 75.0
    });
    assert_eq!(healthz_guard(&addr, "primary-db-cpu")["holding"], true);
    // A second message: the dispatcher looks at it (the event that shows
    // it looked at 75) and holds it too.
    kedge(&ws, &env, &["enqueue", "loader", "--data", "{\"n\":2}"]);
    wait_until(Duration::from_secs(20), "the second run held back", || {
        logged(
            &d.log(),
            "run held back by a load guard",
            "guard",
            "primary-db-cpu 75 ≥ 70 (resume below it)",
        ) == 1
    });
    assert!(runs(&ws, &env).iter().all(|r| r["state"] == "pending"));

    // Below resume_below: the run launches.
    load.set(50.0).await;
    wait_until(Duration::from_secs(30), "both runs to succeed", || {
        runs(&ws, &env).iter().all(|r| r["state"] == "succeeded")
    });
    assert_eq!(healthz_guard(&addr, "primary-db-cpu")["holding"], false);
    assert!(d.stop().success());
    // One log line per change of state, not per poll (dozens of polls).
    let log = ws.daemon_logs();
    let holding = logged(
        &log,
        "guard holding: no new runs of its jobs launch",
        "guard",
        "primary-db-cpu",
    );
    let clear = logged(&log, "guard clear", "guard", "primary-db-cpu");
    assert_eq!((holding, clear), (1, 1), "{log}");
}

/// A backup sized to 4 pods for its window is throttled to 1 pod in
/// flight when the load rises, and flagged at risk naming the guard; a
/// new run under a half throttle gets 2 pods and is at risk at launch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_sized_for_its_window_is_replanned_down_under_throttle_and_flagged_at_risk() {
    let Some(db) = postgres_database().await else {
        return;
    };
    let load = Load::new(&db.url, 10.0).await;
    let ws = Workspace::new();
    let env = vec![("GUARD_THROTTLE_DB".to_string(), db.url.clone())];
    ws.write_config(BASE);
    // 128 units, 8 shards of 16 units; a unit takes a pod 0.25 s (the
    // initial rate is the true one), so one shard is 4 s and the run 32
    // pod-seconds. The 12 s window with a 20 % margin leaves 9.6 s: 4 pods
    // (8 s, two waves of shards; 2 s of slack for a slow launch), 3 would
    // take 10.7 s.
    ws.write_job(
        "backup",
        r#"
name: backup
trigger:
  queue:
    builtin: {}
window:
  within: 12s
sizing:
  work: { static: 128 }
  unit: GB
  initial_rate_per_pod: 14400
  margin: 0.2
  parallelism: { min: 1, max: 4 }
  shards: 8
  when_at_risk: wait
guards:
  - name: db-load
    probe: { sql: { url_env: GUARD_THROTTLE_DB, query: "select cpu_pct from db_load" } }
    max: 80
    resume_below: 40
    interval: 100ms
    action: throttle
retry:
  max_attempts: 1
template:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: shard
          command: ["sh", "-c", "sleep $(awk \"BEGIN { print $KEDGE_WORK / $KEDGE_SHARDS * 0.25 }\")"]
"#,
    );
    let d = ws.start_daemon_with(&env);
    let addr = d.http_addr();
    wait_until(Duration::from_secs(20), "the guard clear at 10", || {
        let g = healthz_guard(&addr, "db-load");
        g["holding"] == false && g["value"] == 10.0
    });
    kedge(&ws, &env, &["enqueue", "backup", "--data", "{\"n\":1}"]);
    wait_until(Duration::from_secs(20), "the run sized to 4 pods", || {
        let r = &runs(&ws, &env)[0];
        r["state"] == "running" && r["sizing"]["parallelism"] == 4
    });
    let first = runs(&ws, &env)[0].clone();
    assert_eq!(first["sizing"]["at_risk"], false, "{first}");

    // The load rises above max: throttled to parallelism.min in flight.
    load.set(95.0).await;
    wait_until(
        Duration::from_secs(20),
        "the run re-planned down and at risk",
        || {
            let r = runs(&ws, &env)
                .into_iter()
                .find(|r| r["run_id"] == first["run_id"])
                .unwrap();
            r["sizing"]["parallelism"] == 1 && r["sizing"]["at_risk"] == true
        },
    );
    let r = runs(&ws, &env)
        .into_iter()
        .find(|r| r["run_id"] == first["run_id"])
        .unwrap();
    let note = r["sizing"]["note"].as_str().unwrap();
    assert!(
        note.contains("lowered from 4 to 1 pods by guard db-load 95 > 80"),
        "{r}"
    );
    assert!(
        note.contains("at risk: guard db-load 95 > 80 throttles it to 1 pod(s)"),
        "{r}"
    );

    // Half-way between resume_below and max: a new run gets 1 + ⌊3 × ½⌋ = 2
    // pods, too few for its window, so it is at risk with the guard named;
    // `when_at_risk: wait` keeps the throttle.
    load.set(60.0).await;
    wait_until(Duration::from_secs(20), "the guard to read 60", || {
        healthz_guard(&addr, "db-load")["value"] == 60.0
    });
    let plan = kedge(
        &ws,
        &env,
        &["plan", "--job", "backup", "--at", "2026-06-01T00:00:00Z"],
    );
    assert!(
        plan.contains("would throttle: db-load 60 > 40 (at most 2 pod(s))"),
        "{plan}"
    );
    kedge(&ws, &env, &["enqueue", "backup", "--data", "{\"n\":2}"]);
    wait_until(Duration::from_secs(20), "the second run launched", || {
        runs(&ws, &env)
            .iter()
            .any(|r| r["run_id"] != first["run_id"] && r["sizing"]["parallelism"].is_number())
    });
    let second = runs(&ws, &env)
        .into_iter()
        .find(|r| r["run_id"] != first["run_id"])
        .unwrap();
    assert_eq!(second["sizing"]["parallelism"], 2, "{second}");
    assert_eq!(second["sizing"]["at_risk"], true, "{second}");
    let note = second["sizing"]["note"].as_str().unwrap();
    assert!(
        note.contains("guard db-load 60 > 40 throttles it to 2 pod(s)"),
        "{second}"
    );
    assert!(
        note.contains("throttled to at most 2 pod(s) by guard db-load 60 > 40"),
        "{second}"
    );
    let (_, metrics) = http_get(&addr, "/metrics");
    assert!(
        metrics.contains("kedge_guard_holding{guard=\"db-load\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("kedge_runs_at_risk_total 2"), "{metrics}");
    assert!(d.stop().success());
}

/// A probe that hangs (hold) and one that fails (ignore): the daemon keeps
/// serving, the hanging one holds its job, the failing one is reported but
/// lets its job run, and neither is ever shown as fine.
#[test]
fn a_probe_that_fails_or_hangs_never_crashes_the_daemon_and_never_reads_as_fine() {
    let ws = Workspace::new();
    ws.write_config(BASE);
    let job = |name: &str, guard: &str| {
        format!(
            "name: {name}\ntrigger:\n  queue:\n    builtin: {{}}\nguards:\n  - {guard}\n\
             template:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{{ name: m, command: [\"true\"] }}]\n"
        )
    };
    ws.write_job(
        "stuck",
        &job(
            "stuck",
            "{ name: hangs, probe: { command: [sleep, '600'] }, max: 1, interval: 100ms, timeout: 300ms }",
        ),
    );
    ws.write_job(
        "lenient",
        &job(
            "lenient",
            "{ name: fails, probe: { command: [sh, -c, 'echo no >&2; exit 3'] }, max: 1, interval: 100ms, on_probe_failure: ignore }",
        ),
    );
    let d = ws.start_daemon();
    let addr = d.http_addr();
    wait_until(Duration::from_secs(20), "both failures reported", || {
        let hangs = healthz_guard(&addr, "hangs");
        let fails = healthz_guard(&addr, "fails");
        hangs["failures"].as_u64() >= Some(2) && fails["failures"].as_u64() >= Some(2)
    });
    let hangs = healthz_guard(&addr, "hangs");
    assert_eq!(hangs["holding"], true, "{hangs}");
    assert!(
        hangs["error"].as_str().unwrap().contains("timed out")
            || hangs["error"].as_str().unwrap().contains("did not answer"),
        "{hangs}"
    );
    let fails = healthz_guard(&addr, "fails");
    assert_eq!(fails["holding"], false, "{fails}");
    assert!(
        fails["error"]
            .as_str()
            .unwrap()
            .contains("exited with code 3"),
        "{fails}"
    );

    ws.ok(&["enqueue", "stuck", "--data", "{}"]);
    ws.ok(&["enqueue", "lenient", "--data", "{}"]);
    wait_until(Duration::from_secs(20), "lenient's run to succeed", || {
        ws.runs()
            .iter()
            .any(|r| r["job"] == "lenient" && r["state"] == "succeeded")
    });
    wait_until(Duration::from_secs(20), "stuck's run held back", || {
        logged(&d.log(), "run held back by a load guard", "job", "stuck") == 1
    });
    let stuck: Vec<_> = ws
        .runs()
        .into_iter()
        .filter(|r| r["job"] == "stuck")
        .collect();
    assert_eq!(stuck[0]["state"], "pending", "{stuck:?}");
    let log = d.log();
    assert_eq!(
        logged(
            &log,
            "guard probe failing; the guard holds its jobs (on_probe_failure: hold)",
            "guard",
            "hangs"
        ),
        1,
        "{log}"
    );
    assert_eq!(
        logged(
            &log,
            "guard probe failing; the guard keeps its last state (on_probe_failure: ignore)",
            "guard",
            "fails"
        ),
        1,
        "{log}"
    );
    assert!(d.stop().success(), "the daemon stops cleanly");
}

/// Two sized jobs held by one guard, each with a 4 s window and 2 s of
/// work: once waiting longer would miss the window, both runs are flagged
/// at risk naming the guard; `when_at_risk: wait` keeps its run waiting,
/// `run` lets its run through (the deadline wins).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_run_that_would_miss_its_window_is_flagged_at_risk_and_when_at_risk_decides() {
    let Some(db) = postgres_database().await else {
        return;
    };
    let _load = Load::new(&db.url, 91.0).await;
    let ws = Workspace::new();
    let env = vec![("GUARD_DEADLINE_DB".to_string(), db.url.clone())];
    ws.write_config(&format!(
        "{BASE}guards:\n  - name: primary-db-cpu\n    probe: {{ sql: {{ url_env: GUARD_DEADLINE_DB, query: \"select cpu_pct from db_load\" }} }}\n    max: 80\n    interval: 100ms\n"
    ));
    // 8 units at 0.25 s per unit on its one pod: 2 s. A 4 s window with a
    // 20 % margin leaves 3.2 s: fine at first, too late after 1.5 s held.
    for (name, when) in [("waits", "wait"), ("overrides", "run")] {
        ws.write_job(
            name,
            &format!(
                "name: {name}\ntrigger:\n  queue:\n    builtin: {{}}\nwindow:\n  within: 4s\n\
                 sizing:\n  work: {{ static: 8 }}\n  initial_rate_per_pod: 14400\n  parallelism: {{ min: 1, max: 1 }}\n  when_at_risk: {when}\n\
                 guards: [primary-db-cpu]\n\
                 template:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{{ name: m, command: [\"true\"] }}]\n"
            ),
        );
    }
    let d = ws.start_daemon_with(&env);
    let addr = d.http_addr();
    wait_until(Duration::from_secs(20), "the guard to hold", || {
        healthz_guard(&addr, "primary-db-cpu")["holding"] == true
    });
    kedge(&ws, &env, &["enqueue", "waits", "--data", "{}"]);
    kedge(&ws, &env, &["enqueue", "overrides", "--data", "{}"]);
    let of = |job: &str| {
        runs(&ws, &env)
            .into_iter()
            .find(|r| r["job"] == job)
            .expect("the job's run")
    };
    wait_until(
        Duration::from_secs(20),
        "the overridden run to succeed",
        || of("overrides")["state"] == "succeeded",
    );
    wait_until(Duration::from_secs(20), "the waiting run flagged", || {
        of("waits")["sizing"]["at_risk"] == true
    });
    let waits = of("waits");
    assert_eq!(waits["state"], "pending", "{waits}");
    let note = waits["sizing"]["note"].as_str().unwrap();
    assert!(
        note.contains("held by guard primary-db-cpu 91 > 80: waiting longer misses the window"),
        "{waits}"
    );
    let over = of("overrides");
    assert_eq!(over["sizing"]["at_risk"], true, "{over}");
    let note = over["sizing"]["note"].as_str().unwrap();
    assert!(
        note.contains("held by guard primary-db-cpu 91 > 80; launched at risk"),
        "{over}"
    );
    let (_, metrics) = http_get(&addr, "/metrics");
    assert!(metrics.contains("kedge_runs_at_risk_total 2"), "{metrics}");
    // The waiting run is still held on later passes: a run enqueued now is
    // held too (the dispatcher looked again), "waits" has not launched, and
    // it was flagged once.
    kedge(&ws, &env, &["enqueue", "waits", "--data", "{\"n\":2}"]);
    wait_until(Duration::from_secs(20), "the second run held back", || {
        logged(&d.log(), "run held back by a load guard", "job", "waits") == 2
    });
    assert!(runs(&ws, &env)
        .iter()
        .filter(|r| r["job"] == "waits")
        .all(|r| r["state"] == "pending"));
    let log = d.log();
    let waiting = "run at risk while a guard holds it; it keeps waiting (when_at_risk: wait)";
    let run_id = waits["run_id"].as_str().unwrap();
    assert_eq!(
        logged(&log, waiting, "run", run_id),
        1,
        "flagged once: {log}"
    );
    assert!(d.stop().success());
}

/// Bad guards are configuration errors naming file, line, column and field.
#[test]
fn bad_guards_are_reported_with_file_line_column_and_field() {
    let ws = Workspace::new();
    ws.write_config(&format!(
        "{BASE}guards:\n  - name: db\n    probe: {{ command: [echo, '1'] }}\n    max: 80\n    resume_below: 90\n    interval: 0s\n"
    ));
    let out = ws.run(&["validate"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = BASE.lines().count();
    assert!(
        err.contains(&format!(
            "config/kedge.yaml:{}:5: guards[0].resume_below: 90 is above max 80",
            line + 5
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "config/kedge.yaml:{}:5: guards[0].interval: must be longer than 0s",
            line + 6
        )),
        "{err}"
    );

    ws.write_config(&format!(
        "{BASE}guards:\n  - name: db\n    probe: {{ command: [echo, '1'] }}\n    max: 80\n"
    ));
    let job = |name: &str, guards: &str| {
        format!(
            "name: {name}\ntrigger:\n  queue:\n    builtin: {{}}\nguards:\n{guards}\
             template:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{{ name: m, command: [\"true\"] }}]\n"
        )
    };
    ws.write_job("a", &job("a", "  - nope\n  - { name: own, probe: { command: [echo, '1'] }, max: 1, action: throttle }\n"));
    ws.write_job(
        "b",
        &job(
            "b",
            "  - { name: mine, probe: { command: [echo, '1'] }, max: 1 }\n",
        ),
    );
    ws.write_job(
        "c",
        &job(
            "c",
            "  - db\n  - { name: mine, probe: { command: [echo, '2'] }, max: 2 }\n",
        ),
    );
    let out = ws.run(&["validate"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "jobs/a.yaml:6:5: guards[0]: unknown guard \"nope\" (the daemon config defines: db)"
        ),
        "{err}"
    );
    assert!(
        err.contains("jobs/a.yaml:7:59: guards[1].action: guard \"own\" throttles, which needs the job's `sizing`"),
        "{err}"
    );
    assert!(
        err.contains(
            "jobs/c.yaml:7:7: guards[1].name: guard \"mine\" is already defined in jobs/b.yaml:6:7"
        ),
        "{err}"
    );
}
