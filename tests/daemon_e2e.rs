//! End to end through the built `kedge` binary, as a user runs it: a
//! workspace with config and job files, `kedge run` in the background, and
//! the CLI (`enqueue`, `trigger`, `runs`, `dlq`) to drive and observe it.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use support::{wait_until, Workspace};

fn states(runs: &[serde_json::Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in runs {
        *m.entry(r["state"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    m
}

fn count_state(ws: &Workspace, state: &str) -> usize {
    ws.runs().iter().filter(|r| r["state"] == state).count()
}

fn time(v: &serde_json::Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("a time"))
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

const QUEUE_JOB: &str = r#"
name: work
trigger:
  queue:
    builtin: {}
limits:
  max_active: 8
retry:
  max_attempts: 2
  backoff: 100ms
template:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: main
          command: ["sh", "-c", "printf '%s' \"$KEDGE_PAYLOAD\" > \"$OUT/$KEDGE_RUN_ID\""]
          env:
            - name: OUT
              value: OUTDIR
"#;

#[test]
fn every_second_cron_records_each_fire_once_across_a_restart() {
    let ws = Workspace::new();
    ws.write_job(
        "tick",
        r#"
name: tick
trigger:
  cron: "* * * * * *"
  overlap: allow
  catchup: all
  starting_deadline: 1m
template:
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: tick
          command: ["true"]
"#,
    );
    let d = ws.start_daemon();
    wait_until(Duration::from_secs(20), "3 succeeded ticks", || {
        count_state(&ws, "succeeded") >= 3
    });
    assert!(d.stop().success(), "graceful stop exits 0");
    // Down for a while: the fires in between must be caught up, not lost.
    std::thread::sleep(Duration::from_millis(2500));
    let before = ws.runs().len();
    let d = ws.start_daemon();
    wait_until(Duration::from_secs(20), "ticks after the restart", || {
        ws.runs().len() >= before + 4
    });
    assert!(d.stop().success());

    let runs = ws.runs();
    let mut fires: Vec<DateTime<Utc>> = runs.iter().map(|r| time(&r["scheduled_at"])).collect();
    fires.sort();
    let unique: BTreeSet<_> = fires.iter().collect();
    assert_eq!(unique.len(), fires.len(), "a fire was run twice: {fires:?}");
    for pair in fires.windows(2) {
        assert_eq!(
            (pair[1] - pair[0]).num_milliseconds(),
            1000,
            "fires must be consecutive seconds, none dropped: {fires:?}"
        );
    }
    for r in &runs {
        assert_eq!(r["job"], "tick");
        assert_eq!(r["trigger"], "cron");
        assert_eq!(r["attempt"], 1);
        let scheduled = time(&r["scheduled_at"]);
        assert_eq!(
            scheduled.timestamp_subsec_millis(),
            0,
            "fires are on whole seconds"
        );
    }
    // Everything still pending after the stop is fine; nothing failed.
    let s = states(&runs);
    assert_eq!(s.get("failed"), None, "{s:?}");
    assert_eq!(s.get("dead"), None, "{s:?}");
}

#[test]
fn fifty_enqueued_messages_become_fifty_succeeded_runs_with_their_payloads() {
    let ws = Workspace::new();
    let out = ws.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    ws.write_job("work", &QUEUE_JOB.replace("OUTDIR", out.to_str().unwrap()));
    let d = ws.start_daemon();
    let mut sent = BTreeMap::new();
    for i in 0..50 {
        let payload = format!("{{\"order\":{i},\"note\":\"it's $(x) & `y` \\\"q\\\"\"}}");
        let stdout = ws.ok(&["enqueue", "work", "--data", &payload]);
        let run_id = stdout
            .trim()
            .strip_prefix("enqueued: run ")
            .unwrap_or_else(|| panic!("unexpected enqueue output {stdout:?}"))
            .to_string();
        sent.insert(run_id, payload);
    }
    wait_until(Duration::from_secs(60), "50 succeeded runs", || {
        count_state(&ws, "succeeded") == 50
    });
    assert!(d.stop().success());
    let runs = ws.runs();
    assert_eq!(runs.len(), 50, "{:?}", states(&runs));
    for (run_id, payload) in &sent {
        let seen = std::fs::read_to_string(out.join(run_id))
            .unwrap_or_else(|e| panic!("run {run_id} left no output: {e}"));
        assert_eq!(
            &seen, payload,
            "the container must get the payload byte for byte"
        );
    }
    let ids: BTreeSet<_> = runs.iter().map(|r| r["message_id"].to_string()).collect();
    assert_eq!(ids.len(), 50);
}

#[test]
fn a_failing_job_is_retried_then_dead_lettered_and_replay_brings_it_back() {
    let ws = Workspace::new();
    let marker = ws.path().join("fixed");
    ws.write_job(
        "fragile",
        &format!(
            r#"
name: fragile
trigger:
  queue:
    builtin: {{}}
retry:
  max_attempts: 2
  backoff: 200ms
template:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: main
          command: ["sh", "-c", "test -e {marker} || {{ echo not fixed yet >&2; exit 3; }}"]
"#,
            marker = marker.display()
        ),
    );
    let d = ws.start_daemon();
    ws.ok(&["enqueue", "fragile", "--data", "{\"n\":1}"]);
    wait_until(Duration::from_secs(30), "a dead letter", || {
        ws.dead_letters().len() == 1
    });
    let runs = ws.runs();
    assert_eq!(
        states(&runs),
        BTreeMap::from([("dead".into(), 1), ("failed".into(), 1)])
    );
    let attempts: BTreeSet<i64> = runs
        .iter()
        .map(|r| r["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(attempts, BTreeSet::from([1, 2]));
    let retry = runs.iter().find(|r| r["attempt"] == 2).unwrap();
    let first = runs.iter().find(|r| r["attempt"] == 1).unwrap();
    let gap = time(&retry["scheduled_at"]) - time(&first["finished_at"]);
    assert!(
        gap.num_milliseconds() >= 190,
        "retry waits the backoff: {gap:?}"
    );

    let letter = &ws.dead_letters()[0];
    assert_eq!(letter["job"], "fragile");
    assert_eq!(letter["payload"], "{\"n\":1}");
    assert_eq!(letter["attempts"], 2);
    assert!(
        letter["last_error"]
            .as_str()
            .unwrap()
            .contains("exited with code 3"),
        "{letter}"
    );

    // Fix the cause, then replay: the same message runs again and succeeds.
    std::fs::write(&marker, "").unwrap();
    let out = ws.ok(&["dlq", "replay", letter["id"].as_str().unwrap()]);
    assert!(out.contains("1 dead letter(s) replayed"), "{out}");
    wait_until(
        Duration::from_secs(30),
        "the replayed run to succeed",
        || count_state(&ws, "succeeded") == 1,
    );
    assert!(d.stop().success());
    let runs = ws.runs();
    let ok = runs.iter().find(|r| r["state"] == "succeeded").unwrap();
    assert_eq!(ok["attempt"], 3);
    assert_eq!(ok["message_id"], first["message_id"]);
    assert!(
        ws.dead_letters().is_empty(),
        "a replayed letter is no longer open"
    );
    let all: Vec<serde_json::Value> =
        serde_json::from_str(&ws.ok(&["dlq", "list", "--all", "--json"])).unwrap();
    assert!(all[0]["replayed_at"].is_string());
    // A second replay of the same letter is refused.
    let again = ws.run(&["dlq", "replay", letter["id"].as_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2));
}

/// A container whose program does not exist cannot start on any try: the
/// local executor fails the attempt at once as `rejected` (no pod
/// replaced, though `backoffLimit` would allow four more), the job's retry
/// policy runs the next attempts after their backoff, and the last one is
/// dead-lettered with the same error. One log line per attempt.
#[test]
fn a_command_that_does_not_exist_is_rejected_retried_per_policy_then_dead_lettered() {
    let ws = Workspace::new();
    ws.write_job(
        "ghost",
        r#"
name: ghost
trigger:
  queue:
    builtin: {}
retry:
  max_attempts: 3
  backoff: 200ms
template:
  backoffLimit: 4
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: main
          command: ["kedge-no-such-program", "--flag"]
"#,
    );
    let d = ws.start_daemon();
    ws.ok(&["enqueue", "ghost", "--data", "{}"]);
    wait_until(Duration::from_secs(30), "a dead letter", || {
        ws.dead_letters().len() == 1
    });
    let want = "rejected: spawn: kedge-no-such-program: No such file or directory";

    let mut runs = ws.runs();
    runs.sort_by_key(|r| r["attempt"].as_i64());
    let tries: Vec<(i64, &str, &str)> = runs
        .iter()
        .map(|r| {
            (
                r["attempt"].as_i64().unwrap(),
                r["state"].as_str().unwrap(),
                r["error"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        tries,
        [(1, "failed", want), (2, "failed", want), (3, "dead", want)]
    );
    for pair in runs.windows(2) {
        let gap = time(&pair[1]["scheduled_at"]) - time(&pair[0]["finished_at"]);
        assert!(
            gap.num_milliseconds() >= 190,
            "each retry waits its backoff: {gap:?}"
        );
    }
    for r in &runs {
        let run_dir = ws.path().join("runs").join(r["run_id"].as_str().unwrap());
        let pods = std::fs::read_dir(&run_dir).unwrap().flatten().count();
        assert_eq!(pods, 1, "one pod per attempt, none replaced: {run_dir:?}");
    }

    let letter = &ws.dead_letters()[0];
    assert_eq!(letter["last_error"], want);
    assert_eq!(letter["attempts"], 3);
    let table = ws.ok(&["dlq", "list"]);
    assert!(
        table.contains(&format!("failed 3 of 3 attempts / {want}")),
        "kedge dlq list shows the reason:\n{table}"
    );
    let log = d.log();
    assert!(d.stop().success());
    assert_eq!(
        log.matches("a container of the run cannot start").count(),
        3,
        "one line per attempt:\n{log}"
    );
}

#[test]
fn kill_9_during_runs_then_restart_loses_nothing_and_succeeds_nothing_twice() {
    let ws = Workspace::new();
    let out = ws.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // Each run waits for the gate, opened only once the restarted daemon is
    // ready: the kill lands while three are running however slow the
    // machine, and the killed daemon's processes, if the restart left them
    // alive, would write a second "done".
    let gate = ws.path().join("gate");
    ws.write_job(
        "slow",
        &format!(
            r#"
name: slow
trigger:
  queue:
    builtin: {{}}
limits:
  max_active: 3
template:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: main
          command: ["sh", "-c", "while [ ! -e {gate} ]; do sleep 0.05; done; echo done >> {out}/$KEDGE_MESSAGE_ID"]
"#,
            out = out.display(),
            gate = gate.display(),
        ),
    );
    for i in 0..8 {
        ws.ok(&["enqueue", "slow", "--data", &format!("{{\"i\":{i}}}")]);
    }
    let d = ws.start_daemon();
    wait_until(Duration::from_secs(20), "runs in flight", || {
        count_state(&ws, "running") == 3
    });
    d.kill9();
    // The daemon is gone; its runs are still marked running in the store.
    assert_eq!(count_state(&ws, "running"), 3);

    let d = ws.start_daemon();
    std::fs::write(&gate, "").unwrap();
    wait_until(Duration::from_secs(60), "all 8 messages to succeed", || {
        count_state(&ws, "succeeded") == 8
    });
    assert!(d.stop().success());

    let runs = ws.runs();
    assert_eq!(runs.len(), 8, "one run per message: {:?}", states(&runs));
    let by_message: BTreeSet<String> = runs
        .iter()
        .filter(|r| r["state"] == "succeeded")
        .map(|r| r["message_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(by_message.len(), 8, "each message succeeded exactly once");
    let relaunched = runs
        .iter()
        .filter(|r| r["launches"].as_i64() > Some(1))
        .count();
    assert_eq!(relaunched, 3, "the 3 interrupted runs were launched again");
    // The interrupted processes were killed at restart (they never got to
    // write), so each message's work was completed exactly once.
    for m in &by_message {
        let done = std::fs::read_to_string(out.join(m)).unwrap();
        assert_eq!(done.lines().count(), 1, "message {m} completed {done:?}");
    }
}

#[test]
fn sigterm_stops_running_processes_and_the_next_start_finishes_the_run() {
    let ws = Workspace::new();
    let pidfile = ws.path().join("pid");
    ws.write_job(
        "long",
        &format!(
            r#"
name: long
trigger:
  queue:
    builtin: {{}}
template:
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
        - name: main
          # `$$` is Kubernetes' escape for `$`, so `$$$$` reaches the shell as `$$`.
          command: ["sh", "-c", "test -e {pid}.2 && exit 0; echo $$$$ > {pid}; touch {pid}.2; sleep 60"]
"#,
            pid = pidfile.display()
        ),
    );
    let d = ws.start_daemon();
    ws.ok(&["enqueue", "long", "--data", "{}"]);
    wait_until(Duration::from_secs(20), "the process to start", || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| s.ends_with('\n'))
    });
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(d.stop().success());
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    assert!(!alive, "shutdown must stop the run's processes");
    let runs = ws.runs();
    assert_eq!(
        runs[0]["state"], "pending",
        "an interrupted run waits for the next start"
    );
    assert!(runs[0]["error"].as_str().unwrap().contains("interrupted"));

    let d = ws.start_daemon();
    wait_until(Duration::from_secs(20), "the run to finish", || {
        count_state(&ws, "succeeded") == 1
    });
    assert!(d.stop().success());
    assert_eq!(
        ws.runs().len(),
        1,
        "the same run was relaunched, not a new one"
    );
}

#[test]
fn a_bad_job_file_is_reported_and_the_others_keep_running() {
    let ws = Workspace::new();
    ws.write_job(
        "broken",
        "name: broken\ntrigger:\n  cron: \"61 * * * *\"\ntemplate:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{name: main, command: [\"true\"]}]\n",
    );
    ws.write_job(
        "fine",
        r#"
name: fine
trigger:
  queue:
    builtin: {}
template:
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: main
          command: ["true"]
"#,
    );
    let d = ws.start_daemon();
    ws.ok(&["enqueue", "fine", "--data", "{}"]);
    wait_until(Duration::from_secs(20), "the good job to run", || {
        count_state(&ws, "succeeded") == 1
    });
    let log = d.log();
    assert!(
        log.contains("jobs/broken.yaml:3:3: trigger.cron: minute field"),
        "the daemon names the bad file, line and field:\n{log}"
    );
    assert!(d.stop().success());
}

#[test]
fn cli_refuses_bad_input_with_exit_code_2_and_a_clear_message() {
    let ws = Workspace::new();
    let out = ws.path().join("out");
    ws.write_job("work", &QUEUE_JOB.replace("OUTDIR", out.to_str().unwrap()));
    ws.write_job(
        "cronjob",
        r#"
name: cronjob
trigger:
  cron: "@daily"
template:
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: main
          command: ["true"]
"#,
    );
    let cases: &[(&[&str], &str)] = &[
        (
            &["enqueue", "work", "--data", "{not json"],
            "--data: payload is not JSON, and job work takes JSON",
        ),
        (
            &["enqueue", "nope", "--data", "{}"],
            "unknown job \"nope\" in jobs (defined: cronjob, work)",
        ),
        (
            &["enqueue", "cronjob", "--data", "{}"],
            "job cronjob is triggered by cron and takes no messages",
        ),
        (
            &["enqueue", "work", "--data", "@missing.json"],
            "--data @missing.json: cannot read",
        ),
        (
            &["plan", "--from", "yesterday"],
            "--from: \"yesterday\" is not an RFC 3339 time",
        ),
        (&["trigger", "nope"], "unknown job \"nope\""),
        (
            &["runs", "--store", "mysql://x"],
            "--store: unsupported store URL mysql://x",
        ),
        (
            &["dlq", "replay"],
            "dlq replay: name dead letter ids, or --all",
        ),
    ];
    for (args, expected) in cases {
        let o = ws.run(args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "kedge {args:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "kedge {args:?}: expected {expected:?} in {stderr:?}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // The message can also come from stdin; non-JSON there is refused too.
    let mut child = ws
        .kedge()
        .args(["enqueue", "work"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"from\":\"stdin\"}")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let runs = ws.runs();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["state"], "pending");
}

#[test]
fn plan_json_lists_fires_in_utc_with_debian_dst_rules() {
    let ws = Workspace::new();
    ws.write_job(
        "backup",
        r#"
name: backup
trigger:
  cron: "30 2 * * *"
  timezone: Europe/Berlin
template:
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: main
          command: ["true"]
"#,
    );
    let out = ws.ok(&[
        "plan",
        "--job",
        "backup",
        "--from",
        "2026-03-27T12:00:00Z",
        "--count",
        "4",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v,
        serde_json::json!([{
            "job": "backup",
            "timezone": "Europe/Berlin",
            // 02:30 does not exist on 2026-03-29: it fires right after the jump (03:00 CEST).
            "fires": ["2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z", "2026-03-31T00:30:00Z"]
        }])
    );
}

fn fires(ws: &Workspace, job: &str) -> Vec<serde_json::Value> {
    serde_json::from_str(&ws.ok(&["fires", job, "--limit", "1000", "--json"])).unwrap()
}

fn slow_cron_job(name: &str, overlap: &str) -> String {
    format!(
        r#"
name: {name}
trigger:
  cron: "* * * * * *"
  overlap: {overlap}
retry:
  max_attempts: 1
template:
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 0
      containers:
        - name: main
          command: ["sleep", "2.5"]
"#
    )
}

#[test]
fn overlap_forbid_skips_fires_while_a_run_is_active_and_records_why() {
    let ws = Workspace::new();
    ws.write_job("guarded", &slow_cron_job("guarded", "forbid"));
    let d = ws.start_daemon();
    wait_until(
        Duration::from_secs(30),
        "a run to finish and fires to be skipped",
        || {
            count_state(&ws, "succeeded") >= 1
                && fires(&ws, "guarded")
                    .iter()
                    .filter(|f| f["outcome"] == "skipped")
                    .count()
                    >= 2
        },
    );
    assert!(d.stop().success());
    let runs = ws.runs();
    let fs = fires(&ws, "guarded");
    // A fire whose run had not started when the daemon stopped reads `recorded`.
    let launched = fs
        .iter()
        .filter(|f| f["outcome"] == "launched" || f["outcome"] == "recorded")
        .count();
    assert_eq!(launched, runs.len(), "one run per launched fire");
    for f in fs.iter().filter(|f| f["outcome"] == "skipped") {
        assert_eq!(
            f["detail"],
            "overlap: forbid, an earlier run is still active"
        );
    }
    // Never two runs of the job at once: the runs' intervals do not overlap.
    let mut spans: Vec<(DateTime<Utc>, Option<DateTime<Utc>>)> = runs
        .iter()
        .filter(|r| r["started_at"].is_string())
        .map(|r| {
            (
                time(&r["started_at"]),
                r["finished_at"].as_str().map(|_| time(&r["finished_at"])),
            )
        })
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        let end = w[0]
            .1
            .expect("an earlier run finished before the next started");
        assert!(end <= w[1].0, "runs overlapped: {spans:?}");
    }
}

#[test]
fn overlap_replace_cancels_the_active_run_for_the_new_fire() {
    let ws = Workspace::new();
    ws.write_job("fresh", &slow_cron_job("fresh", "replace"));
    let d = ws.start_daemon();
    wait_until(
        Duration::from_secs(30),
        "runs replaced by newer fires",
        || {
            ws.runs()
                .iter()
                .filter(|r| {
                    r["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("replaced by a newer cron fire"))
                })
                .count()
                >= 2
        },
    );
    assert!(d.stop().success());
    let fs = fires(&ws, "fresh");
    assert!(fs.iter().any(|f| f["outcome"] == "replaced"), "{fs:?}");
    // Replace skips a fire only when a newer one was due at the same time
    // (a late pass on a loaded machine).
    assert!(
        fs.iter().all(|f| f["outcome"] != "skipped"
            || f["detail"] == "overlap: replace, a newer fire due at the same time replaced it"),
        "replace skips no fire for an active run: {fs:?}"
    );
    assert!(
        ws.dead_letters().is_empty(),
        "a replaced run is not dead-lettered"
    );
}

#[test]
fn catching_up_under_overlap_replace_launches_only_the_newest_missed_fire() {
    let ws = Workspace::new();
    let mut job = slow_cron_job("fresh", "replace");
    job = job.replace(
        "  overlap: replace\n",
        "  overlap: replace\n  catchup: all\n",
    );
    ws.write_job("fresh", &job);
    let d = ws.start_daemon();
    wait_until(Duration::from_secs(30), "a first fire", || {
        !fires(&ws, "fresh").is_empty()
    });
    assert!(d.stop().success());
    let before = fires(&ws, "fresh").len();
    // Down for a few fires, then back: they are all due at once.
    std::thread::sleep(Duration::from_millis(3500));
    let d = ws.start_daemon();
    wait_until(
        Duration::from_secs(30),
        "the missed fires to be decided",
        || fires(&ws, "fresh").len() >= before + 3,
    );
    assert!(d.stop().success());
    let fs = fires(&ws, "fresh");
    let caught_up = &fs[before..];
    let skipped: Vec<_> = caught_up
        .iter()
        .take_while(|f| f["outcome"] == "skipped")
        .collect();
    assert!(
        skipped.len() >= 2,
        "the older fires of the catch-up are skipped: {caught_up:?}"
    );
    for f in &skipped {
        assert_eq!(
            f["detail"],
            "overlap: replace, a newer fire due at the same time replaced it"
        );
    }
    let newest = &caught_up[skipped.len()];
    assert!(
        newest["outcome"] == "launched" || newest["outcome"] == "replaced",
        "the newest fire of the catch-up runs: {caught_up:?}"
    );
    // One run per fire that ran, none for the skipped ones.
    let ran = fs.iter().filter(|f| f["outcome"] != "skipped").count();
    assert_eq!(ws.runs().len(), ran, "{fs:?}");
}

/// With the store poll at an hour, work stored by `kedge enqueue` and
/// `kedge trigger` (other processes) must start at once: the writer wakes
/// the daemon (a socket beside the SQLite file, or NOTIFY on PostgreSQL).
///
/// What else could start a run: the one-second re-planning tick (dispatch
/// runs after every wake of the loop), an outcome (none here: every run
/// sleeps until the daemon stops), or the poll (an hour). So without the
/// wake-up a run starts on the next tick, and the test stores each piece of
/// work at a uniformly random moment of the tick's period (a random pause
/// of up to 1 s before each): its lag is then uniform over 0–1 s, under
/// 250 ms about one time in four. Of 12 enqueued messages and of 12 manual
/// triggers, at least 10 each must start within 250 ms of being stored: by
/// the tick alone that happens with probability 4·10⁻⁵ per kind, while a
/// working wake-up is typically tens of milliseconds and may still have two
/// arbitrarily slow starts per kind on a loaded machine.
fn work_from_other_processes_starts_without_waiting_for_the_poll(ws: &Workspace, store_url: &str) {
    const PER_KIND: usize = 12;
    const FAST_MS: i64 = 250;
    const FAST_AT_LEAST: usize = 10;
    ws.write_config(&format!(
        "jobs_dir: jobs\n\
         store:\n  url: {store_url}\n  poll_interval: 1h\n\
         executor:\n  kind: local\n  local:\n    work_dir: runs\n\
         shutdown_timeout: 10s\n"
    ));
    let sleeper = "template:\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n        \
                   - name: main\n          command: [\"sh\", \"-c\", \"exec sleep 600\"]\n";
    ws.write_job(
        "work",
        &format!("name: work\ntrigger:\n  queue:\n    builtin: {{}}\nlimits:\n  max_active: 16\n{sleeper}"),
    );
    ws.write_job(
        "once",
        &format!(
            "name: once\ntrigger:\n  cron: \"0 0 1 1 *\"\n  overlap: allow\nlimits:\n  max_active: 16\n{sleeper}"
        ),
    );
    let d = ws.start_daemon();
    let mut stored: Vec<(&str, String)> = Vec::new();
    for i in 0..PER_KIND * 2 {
        std::thread::sleep(Duration::from_millis(rand::random_range(0..1000)));
        if i % 2 == 0 {
            let stdout = ws.ok(&["enqueue", "work", "--data", &format!("{{\"i\":{i}}}")]);
            let run_id = stdout.trim().strip_prefix("enqueued: run ").unwrap();
            stored.push(("enqueue", run_id.to_string()));
        } else {
            let stdout = ws.ok(&["trigger", "once"]);
            let run_id = stdout.trim().strip_prefix("triggered: run ").unwrap();
            stored.push(("trigger", run_id.to_string()));
        }
    }
    let mut runs = Vec::new();
    wait_until(Duration::from_secs(60), "every run to start", || {
        runs = ws.runs();
        runs.len() == stored.len() && runs.iter().all(|r| !r["started_at"].is_null())
    });
    for kind in ["enqueue", "trigger"] {
        let lags: Vec<i64> = stored
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, id)| {
                let r = runs.iter().find(|r| r["run_id"] == id.as_str()).unwrap();
                (time(&r["started_at"]) - time(&r["scheduled_at"])).num_milliseconds()
            })
            .collect();
        println!("`kedge {kind}` lags (ms): {lags:?}");
        let fast = lags.iter().filter(|l| **l < FAST_MS).count();
        assert!(
            fast >= FAST_AT_LEAST,
            "`kedge {kind}`: runs must start when stored, not on the 1 s tick or the 1 h poll; \
             lags (ms): {lags:?}"
        );
    }
    assert!(d.stop().success(), "{}", ws.daemon_logs());
    assert!(
        !ws.daemon_logs().contains("wake-up socket"),
        "the daemon must listen without complaint:\n{}",
        ws.daemon_logs()
    );
}

#[test]
fn enqueue_and_trigger_wake_the_daemon_sqlite() {
    let ws = Workspace::new();
    work_from_other_processes_starts_without_waiting_for_the_poll(&ws, "sqlite://state/kedge.db");
    assert!(
        !ws.path().join("state/kedge.db.wake").exists(),
        "a daemon that stopped removes its wake-up socket"
    );
}

#[test]
fn enqueue_and_trigger_wake_the_daemon_postgres() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(db) = rt.block_on(support::postgres_database()) else {
        return;
    };
    let ws = Workspace::new();
    work_from_other_processes_starts_without_waiting_for_the_poll(&ws, &db.url);
}

/// A workspace with 8 slots in all, a backlog of `messages` one-second
/// messages in `backlog`, and, with `cron`, a job `tick` firing every 2 s.
fn backlog_next_to_cron(messages: usize, cron: bool) -> Workspace {
    let ws = Workspace::new();
    ws.write_config(
        "jobs_dir: jobs\n\
         store:\n  url: sqlite://state/kedge.db\n  poll_interval: 50ms\n\
         executor:\n  kind: local\n  local:\n    work_dir: runs\n    pod_backoff: 100ms\n    pod_backoff_max: 1s\n\
         limits:\n  max_active_runs: 8\n\
         shutdown_timeout: 10s\n",
    );
    let job = |name: &str, trigger: &str, command: &str| {
        format!(
            "name: {name}\ntrigger:\n{trigger}retry: {{ max_attempts: 1 }}\n\
             template:\n  template:\n    spec:\n      restartPolicy: Never\n      \
             terminationGracePeriodSeconds: 0\n      containers:\n        - name: main\n          \
             command: {command}\n"
        )
    };
    ws.write_job(
        "backlog",
        &job(
            "backlog",
            "  queue:\n    builtin: {}\n",
            "[\"sleep\", \"1\"]",
        ),
    );
    if cron {
        ws.write_job(
            "tick",
            &job(
                "tick",
                "  cron: \"*/2 * * * * *\"\n  overlap: allow\n  catchup: none\n",
                "[\"true\"]",
            ),
        );
    }
    // Four producers at once, as a busy queue gets them.
    std::thread::scope(|s| {
        for p in 0..4 {
            let ws = &ws;
            s.spawn(move || {
                for i in (p..messages).step_by(4) {
                    ws.ok(&[
                        "enqueue",
                        "backlog",
                        "--id",
                        &format!("m{i}"),
                        "--data",
                        "{}",
                    ]);
                }
            });
        }
    });
    ws
}

/// Issue 13 §2: a backlog in one job no longer starves the others. With 8
/// slots in all, 200 one-second messages and a cron job firing every 2 s,
/// every fire launches within 2 s of its time, while `kedge fires` says
/// `recorded` until a fire's run has started.
#[test]
fn a_backlog_shares_the_global_cap_and_every_cron_fire_launches_on_time() {
    let ws = backlog_next_to_cron(200, true);
    let d = ws.start_daemon();
    wait_until(Duration::from_secs(60), "five cron fires launched", || {
        fires(&ws, "tick")
            .iter()
            .filter(|f| f["outcome"] == "launched")
            .count()
            >= 5
    });
    // "Now" for the fires not started yet is when the runs were read.
    let now = Utc::now();
    let runs = ws.runs();
    assert!(d.stop().success());
    let backlog_done = runs
        .iter()
        .filter(|r| r["job"] == "backlog" && r["state"] == "succeeded")
        .count();
    assert!(
        backlog_done < 200,
        "the backlog was still there while the fires came ({backlog_done} done)"
    );
    let ticks: Vec<&serde_json::Value> = runs.iter().filter(|r| r["job"] == "tick").collect();
    let mut worst = chrono::Duration::zero();
    for t in &ticks {
        let due = time(&t["scheduled_at"]);
        let late = match t["started_at"].as_str() {
            Some(_) => time(&t["started_at"]) - due,
            // Not started: late by the time it has waited so far.
            None => now - due,
        };
        assert!(
            late <= chrono::Duration::milliseconds(2_000),
            "the fire due {due} launched {} ms late behind the backlog",
            late.num_milliseconds()
        );
        worst = worst.max(late);
    }
    eprintln!(
        "{} cron fires beside a backlog ({backlog_done} of 200 messages done): latest launch {} ms after its fire",
        ticks.len(),
        worst.num_milliseconds()
    );
    for f in fires(&ws, "tick") {
        let outcome = f["outcome"].as_str().unwrap();
        let fire = f["fire"].as_str().unwrap();
        let started = ticks
            .iter()
            .any(|t| t["scheduled_at"] == fire && t["started_at"].is_string());
        let want = if started { "launched" } else { "recorded" };
        assert_eq!(outcome, want, "{f}");
    }
}

/// Measures how fast the backlog drains with and without the cron job
/// beside it (BENCHMARKS.md, issue 13 §2). Opt-in:
/// `cargo test --release --test daemon_e2e -- --ignored drain --nocapture`.
#[test]
#[ignore]
fn drain_rate_of_a_backlog_with_and_without_a_cron_job_beside_it() {
    let rate = |cron: bool| {
        let ws = backlog_next_to_cron(240, cron);
        let d = ws.start_daemon();
        let start = std::time::Instant::now();
        wait_until(Duration::from_secs(120), "the backlog drained", || {
            ws.runs()
                .iter()
                .filter(|r| r["job"] == "backlog" && r["state"] == "succeeded")
                .count()
                == 240
        });
        let took = start.elapsed();
        assert!(d.stop().success());
        240.0 / took.as_secs_f64()
    };
    let alone = rate(false);
    let beside = rate(true);
    eprintln!(
        "backlog drain: alone {alone:.2}/s, beside a 2 s cron job {beside:.2}/s, ratio {:.2}",
        beside / alone
    );
}
