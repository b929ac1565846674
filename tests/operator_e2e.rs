//! Operator controls through the built binary: `kedge pause | resume |
//! hold | release | ice | unice | backfill | rerun | audit` against a
//! running `kedge run`, observed through `kedge runs`, `kedge fires`,
//! `kedge audit`, `/healthz` and `/metrics`. "Nothing launched" is always
//! concluded from an event showing the daemon looked (a fire it recorded
//! `skipped: paused`, a run it logged as held back), never from a pause.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use support::{http_get, wait_until, Workspace};

/// The test's workspace with the HTTP endpoints on a free port.
fn workspace() -> Workspace {
    let ws = Workspace::new();
    ws.write_config(
        "jobs_dir: jobs\n\
         store:\n  url: sqlite://state/kedge.db\n  poll_interval: 50ms\n\
         executor:\n  kind: local\n  local:\n    work_dir: runs\n    pod_backoff: 100ms\n    pod_backoff_max: 1s\n\
         shutdown_timeout: 10s\n\
         http:\n  listen: 127.0.0.1:0\n",
    );
    ws
}

/// A cron job firing every second; `extra` goes under `trigger:`.
fn every_second(name: &str, extra: &str, command: &str) -> String {
    format!(
        "name: {name}\n\
         trigger:\n  cron: \"* * * * * *\"\n  overlap: allow\n{extra}\
         template:\n  template:\n    spec:\n      restartPolicy: Never\n      \
         containers: [{{ name: c, command: [\"sh\", \"-c\", {command:?}] }}]\n"
    )
}

fn time(v: &serde_json::Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("a time"))
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

fn fires(ws: &Workspace, job: &str) -> Vec<serde_json::Value> {
    serde_json::from_str(&ws.ok(&["fires", job, "--limit", "100000", "--json"])).unwrap()
}

/// The fires of `job` recorded `skipped` with `detail`.
fn skipped(ws: &Workspace, job: &str, detail: &str) -> Vec<DateTime<Utc>> {
    fires(ws, job)
        .iter()
        .filter(|f| f["outcome"] == "skipped" && f["detail"] == detail)
        .map(|f| time(&f["fire"]))
        .collect()
}

fn runs_of(ws: &Workspace, job: &str) -> Vec<serde_json::Value> {
    ws.runs().into_iter().filter(|r| r["job"] == job).collect()
}

fn audit(ws: &Workspace) -> Vec<serde_json::Value> {
    serde_json::from_str(&ws.ok(&["audit", "--json"])).unwrap()
}

/// The OS user the CLI records, as `id -un` names it.
fn os_user() -> String {
    let out = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `kedge ARGS` that must fail with exit 2; returns stderr.
fn refused(ws: &Workspace, args: &[&str]) -> String {
    let out = ws.run(args);
    assert_eq!(out.status.code(), Some(2), "kedge {args:?} must exit 2");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn healthz_job(addr: &str, job: &str) -> serde_json::Value {
    let (status, body) = http_get(addr, "/healthz");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["jobs"][job].clone()
}

#[test]
fn pause_stops_launches_messages_wait_and_resume_catches_up_as_catchup_says() {
    let ws = workspace();
    ws.write_job(
        "tick",
        &every_second(
            "tick",
            "  catchup: latest\n  starting_deadline: 1m\n",
            "true",
        ),
    );
    ws.write_job(
        "work",
        "name: work\ntrigger:\n  queue:\n    builtin: {}\n\
         template:\n  template:\n    spec:\n      restartPolicy: Never\n      \
         containers: [{ name: c, command: [\"true\"] }]\n",
    );
    let d = ws.start_daemon();
    let addr = d.http_addr();
    wait_until(Duration::from_secs(30), "a tick to succeed", || {
        runs_of(&ws, "tick")
            .iter()
            .any(|r| r["state"] == "succeeded")
    });
    assert_eq!(healthz_job(&addr, "tick")["state"], "active");

    let out = ws.ok(&["pause", "tick", "--reason", "db migration"]);
    assert!(out.contains("job tick paused"), "{out}");
    ws.ok(&["pause", "work", "--reason", "db migration"]);
    let paused_at = time(&audit(&ws)[0]["at"]);
    let enqueued = ws.ok(&["enqueue", "work", "--data", "{}"]);
    let run = enqueued
        .trim()
        .strip_prefix("enqueued: run ")
        .unwrap()
        .to_string();

    // The daemon looked: fires recorded `skipped: paused`, the message's
    // run logged as held back by the pause.
    wait_until(
        Duration::from_secs(30),
        "fires skipped while paused",
        || skipped(&ws, "tick", "paused").len() >= 3,
    );
    wait_until(
        Duration::from_secs(30),
        "the message's run held back",
        || {
            d.log()
                .lines()
                .any(|l| l.contains(&run) && l.contains("an operator paused the job"))
        },
    );
    let all = ws.runs();
    for r in all.iter().filter(|r| r["started_at"].is_string()) {
        assert!(
            time(&r["started_at"]) <= paused_at,
            "nothing launches while paused: {r}"
        );
    }
    let held = all.iter().find(|r| r["run_id"] == run.as_str()).unwrap();
    assert_eq!(
        (&held["state"], &held["job_state"]),
        (&"pending".into(), &"paused".into())
    );
    let table = ws.ok(&["runs", "--job", "tick"]);
    let user = os_user();
    assert!(
        table.starts_with(&format!("job tick is paused (by {user} since ")),
        "{table}"
    );
    assert!(
        table.lines().next().unwrap().ends_with(": db migration)"),
        "{table}"
    );
    let h = healthz_job(&addr, "tick");
    assert_eq!(
        (&h["state"], &h["by"], &h["reason"]),
        (
            &"paused".into(),
            &user.as_str().into(),
            &"db migration".into()
        )
    );
    let (_, metrics) = http_get(&addr, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "kedge_job_paused{job=\"tick\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == "kedge_job_held{job=\"tick\"} 0"),
        "{metrics}"
    );

    // Resume: catchup latest runs the newest skipped fire, once.
    let out = ws.ok(&["resume", "tick"]);
    let caught: Vec<&str> = out.lines().filter(|l| l.contains("caught up")).collect();
    assert_eq!(caught.len(), 1, "{out}");
    ws.ok(&["resume", "work", "--reason", "migration done"]);
    wait_until(
        Duration::from_secs(30),
        "the waiting message to run",
        || {
            ws.runs()
                .iter()
                .any(|r| r["run_id"] == run.as_str() && r["state"] == "succeeded")
        },
    );
    let skipped_while_paused = skipped(&ws, "tick", "paused");
    let caught_up: Vec<DateTime<Utc>> = fires(&ws, "tick")
        .iter()
        .filter(|f| f["detail"] == "caught up on resume")
        .map(|f| time(&f["fire"]))
        .collect();
    assert_eq!(caught_up.len(), 1);
    assert!(
        skipped_while_paused.iter().all(|f| *f < caught_up[0]),
        "the newest paused fire is the one caught up: {caught_up:?} after {skipped_while_paused:?}"
    );
    wait_until(Duration::from_secs(30), "the caught-up fire to run", || {
        runs_of(&ws, "tick")
            .iter()
            .any(|r| time(&r["scheduled_at"]) == caught_up[0] && r["state"] == "succeeded")
    });
    wait_until(
        Duration::from_secs(10),
        "/healthz to show tick active",
        || healthz_job(&addr, "tick")["state"] == "active",
    );
    let err = refused(&ws, &["resume", "tick"]);
    assert!(
        err.contains("cannot resume job tick: it is active"),
        "{err}"
    );
    let err = refused(&ws, &["pause", "nope"]);
    assert!(err.contains("unknown job \"nope\""), "{err}");
    assert!(d.stop().success());

    // Every action, with the OS user and the reason.
    let log: Vec<(String, String, String, serde_json::Value)> = audit(&ws)
        .iter()
        .map(|a| {
            (
                a["actor"].as_str().unwrap().to_string(),
                a["action"].as_str().unwrap().to_string(),
                a["job"].as_str().unwrap().to_string(),
                a["reason"].clone(),
            )
        })
        .collect();
    let u = || user.clone();
    assert_eq!(
        log,
        [
            (u(), "pause".into(), "tick".into(), "db migration".into()),
            (u(), "pause".into(), "work".into(), "db migration".into()),
            (u(), "resume".into(), "tick".into(), serde_json::Value::Null),
            (u(), "resume".into(), "work".into(), "migration done".into()),
        ]
    );
    let listed = ws.ok(&["audit", "--job", "work"]);
    assert_eq!(
        listed.lines().count(),
        3,
        "a header and work's two actions:\n{listed}"
    );
}

#[test]
fn release_runs_the_newest_held_fire_and_unice_waits_for_the_next_occurrence() {
    let ws = workspace();
    ws.write_job("tick", &every_second("tick", "  catchup: none\n", "true"));
    let d = ws.start_daemon();
    ws.ok(&["hold", "tick", "--reason", "investigating"]);
    wait_until(Duration::from_secs(30), "fires skipped while held", || {
        skipped(&ws, "tick", "held").len() >= 2
    });
    let out = ws.ok(&["release", "tick"]);
    assert_eq!(
        out.lines().filter(|l| l.contains("caught up")).count(),
        1,
        "{out}"
    );
    let newest_held = *skipped(&ws, "tick", "held").iter().max().unwrap();
    let released: Vec<DateTime<Utc>> = fires(&ws, "tick")
        .iter()
        .filter(|f| f["detail"] == "caught up on release")
        .map(|f| time(&f["fire"]))
        .collect();
    assert_eq!(released.len(), 1);
    assert!(
        released[0] > newest_held,
        "release runs the newest held fire"
    );
    wait_until(Duration::from_secs(30), "the released fire to run", || {
        runs_of(&ws, "tick")
            .iter()
            .any(|r| time(&r["scheduled_at"]) == released[0] && r["state"] == "succeeded")
    });

    ws.ok(&["ice", "tick"]);
    wait_until(Duration::from_secs(30), "fires skipped while iced", || {
        skipped(&ws, "tick", "iced").len() >= 2
    });
    let out = ws.ok(&["unice", "tick"]);
    assert!(!out.contains("caught up"), "{out}");
    let unice_at = time(&audit(&ws).last().unwrap()["at"]);
    wait_until(
        Duration::from_secs(30),
        "the next occurrence to run",
        || {
            runs_of(&ws, "tick")
                .iter()
                .any(|r| time(&r["scheduled_at"]) > unice_at && r["state"] == "succeeded")
        },
    );
    assert!(d.stop().success());
    let iced = skipped(&ws, "tick", "iced");
    let run_fires: BTreeSet<DateTime<Utc>> = runs_of(&ws, "tick")
        .iter()
        .map(|r| time(&r["scheduled_at"]))
        .collect();
    assert!(
        iced.iter().all(|f| !run_fires.contains(f)),
        "no iced fire ran: {iced:?}"
    );
    assert!(
        skipped(&ws, "tick", "held")
            .iter()
            .all(|f| !run_fires.contains(f)),
        "only the newest held fire ran"
    );
    let actions: Vec<String> = audit(&ws)
        .iter()
        .map(|a| a["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(actions, ["hold", "release", "ice", "unice"]);
}

/// The fire a cron run is of (its work item's message id is the fire
/// time; a rerun's `scheduled_at` is when it was asked for).
fn fire_of(run: &serde_json::Value) -> DateTime<Utc> {
    let ms: i64 = run["message_id"].as_str().unwrap().parse().unwrap();
    DateTime::from_timestamp_millis(ms).unwrap()
}

/// `(fire, attempt) → state` of `job`'s runs of fires before `to` (a
/// live fire of the schedule, should the test cross its time, is not the
/// backfill's).
fn by_fire(ws: &Workspace, job: &str, to: DateTime<Utc>) -> BTreeMap<(DateTime<Utc>, i64), String> {
    runs_of(ws, job)
        .iter()
        .filter(|r| fire_of(r) < to)
        .map(|r| {
            (
                (fire_of(r), r["attempt"].as_i64().unwrap()),
                r["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The most runs of `runs` running at the same instant.
fn most_at_once(runs: &[serde_json::Value]) -> usize {
    let mut edges: Vec<(DateTime<Utc>, i32)> = Vec::new();
    for r in runs.iter().filter(|r| r["started_at"].is_string()) {
        edges.push((time(&r["started_at"]), 1));
        edges.push((time(&r["finished_at"]), -1));
    }
    edges.sort();
    let mut n = 0;
    let mut most = 0;
    for (_, d) in edges {
        n += d;
        most = most.max(n);
    }
    most as usize
}

#[test]
fn backfill_is_idempotent_keeps_to_max_active_and_reruns_failed_fires() {
    let ws = workspace();
    let flag = ws.path().join("fail");
    std::fs::write(&flag, "").unwrap();
    ws.write_job(
        "hourly",
        &format!(
            "name: hourly\ntrigger:\n  cron: \"0 * * * *\"\n  overlap: allow\n  catchup: none\n\
             retry:\n  max_attempts: 1\n\
             template:\n  backoffLimit: 0\n  template:\n    spec:\n      restartPolicy: Never\n      \
             containers: [{{ name: c, command: [\"sh\", \"-c\", \"sleep 0.3; test ! -e {}\"] }}]\n",
            flag.display()
        ),
    );
    let from = Utc::now().duration_trunc(TimeDelta::hours(1)).unwrap() - TimeDelta::hours(6);
    let to = from + TimeDelta::hours(5);
    let range = [
        "--from".to_string(),
        from.to_rfc3339(),
        "--to".to_string(),
        to.to_rfc3339(),
    ];
    let backfill = |extra: &[&str]| {
        let mut args = vec!["backfill", "hourly"];
        args.extend(range.iter().map(String::as_str));
        args.extend_from_slice(extra);
        ws.ok(&args)
    };
    let d = ws.start_daemon();
    let out = backfill(&["--max-active", "2", "--reason", "outage"]);
    assert!(
        out.contains("5 fires in range, started 5 as backfill bf-"),
        "{out}"
    );
    wait_until(Duration::from_secs(60), "5 backfilled runs to fail", || {
        let runs = by_fire(&ws, "hourly", to);
        runs.len() == 5 && runs.values().all(|s| s == "dead")
    });
    let expected: BTreeSet<DateTime<Utc>> = (0..5).map(|h| from + TimeDelta::hours(h)).collect();
    let fired: BTreeSet<DateTime<Utc>> =
        by_fire(&ws, "hourly", to).keys().map(|(f, _)| *f).collect();
    assert_eq!(fired, expected);
    let backfilled: Vec<serde_json::Value> = (runs_of(&ws, "hourly").into_iter())
        .filter(|r| fire_of(r) < to)
        .collect();
    let most = most_at_once(&backfilled);
    assert!(most <= 2, "at most --max-active 2 at once, saw {most}");

    // Twice: nothing new, nothing rerun without --rerun.
    let out = backfill(&[]);
    assert!(out.contains("5 fires in range, started 0\n"), "{out}");
    assert_eq!(out.matches("keep    dead").count(), 5, "{out}");
    let out = backfill(&["--rerun", "failed", "--dry-run"]);
    assert!(out.contains("would start 5"), "{out}");
    assert_eq!(
        by_fire(&ws, "hourly", to).len(),
        5,
        "a dry run changes nothing"
    );

    // Fixed: --rerun failed runs each failed fire again, as attempt 2.
    std::fs::remove_file(&flag).unwrap();
    let out = backfill(&["--rerun", "failed", "--max-active", "3"]);
    assert!(out.contains("started 5"), "{out}");
    wait_until(Duration::from_secs(60), "the reruns to succeed", || {
        let runs = by_fire(&ws, "hourly", to);
        runs.len() == 10
            && runs
                .iter()
                .all(|((_, a), s)| (*a == 1 && s == "dead") || (*a == 2 && s == "succeeded"))
    });
    let out = backfill(&["--rerun", "failed"]);
    assert!(out.contains("started 0"), "{out}");
    let in_range = fires(&ws, "hourly")
        .iter()
        .filter(|f| time(&f["fire"]) < to)
        .count();
    assert_eq!(in_range, 5, "each fire recorded once");

    // kedge rerun: a finished run's work again, refused while it waits.
    let first = from.timestamp() / 60;
    let done = format!("hourly-{first}-2");
    ws.ok(&["pause", "hourly"]);
    let out = ws.ok(&["rerun", &done, "--reason", "downstream asked"]);
    let third = format!("hourly-{first}-3");
    assert_eq!(out.trim(), format!("rerun of {done}: run {third}"));
    let err = refused(&ws, &["rerun", &done]);
    assert!(
        err.contains(&format!(
            "run {done} cannot be rerun: its work is still pending"
        )),
        "{err}"
    );
    let err = refused(&ws, &["rerun", "hourly-1"]);
    assert!(err.contains("no run hourly-1 in the store"), "{err}");
    ws.ok(&["resume", "hourly"]);
    wait_until(Duration::from_secs(30), "the rerun to succeed", || {
        by_fire(&ws, "hourly", to)
            .get(&(from, 3))
            .map(String::as_str)
            == Some("succeeded")
    });
    assert!(d.stop().success());
    let actions: Vec<(String, serde_json::Value)> = audit(&ws)
        .iter()
        .map(|a| (a["action"].as_str().unwrap().to_string(), a["run"].clone()))
        .collect();
    let backfill = || ("backfill".to_string(), serde_json::Value::Null);
    assert_eq!(
        actions,
        [
            backfill(),
            backfill(),
            backfill(),
            backfill(),
            ("pause".into(), serde_json::Value::Null),
            ("rerun".into(), done.as_str().into()),
            ("resume".into(), serde_json::Value::Null),
        ]
    );
}

#[test]
fn kill_9_during_a_backfill_loses_no_fire_and_runs_none_twice() {
    let ws = workspace();
    ws.write_job(
        "minutely",
        "name: minutely\ntrigger:\n  cron: \"* * * * *\"\n  catchup: none\nretry:\n  max_attempts: 3\n  backoff: 100ms\n\
         template:\n  template:\n    spec:\n      restartPolicy: Never\n      terminationGracePeriodSeconds: 0\n      \
         containers: [{ name: c, command: [\"sleep\", \"0.4\"] }]\n",
    );
    let from = Utc::now().duration_trunc(TimeDelta::minutes(1)).unwrap() - TimeDelta::minutes(40);
    let to = from + TimeDelta::minutes(20);
    let d = ws.start_daemon();
    let out = ws.ok(&[
        "backfill",
        "minutely",
        "--from",
        &from.to_rfc3339(),
        "--to",
        &to.to_rfc3339(),
        "--max-active",
        "3",
    ]);
    assert!(out.contains("20 fires in range, started 20"), "{out}");
    wait_until(Duration::from_secs(60), "some backfilled runs done", || {
        by_fire(&ws, "minutely", to)
            .values()
            .filter(|s| *s == "succeeded")
            .count()
            >= 4
    });
    d.kill9();
    let d = ws.start_daemon();
    wait_until(
        Duration::from_secs(90),
        "every backfilled fire to succeed",
        || {
            let runs = by_fire(&ws, "minutely", to);
            let done: BTreeSet<DateTime<Utc>> = runs
                .iter()
                .filter(|(_, s)| *s == "succeeded")
                .map(|((f, _), _)| *f)
                .collect();
            done.len() == 20
        },
    );
    assert!(d.stop().success());
    let expected: BTreeSet<DateTime<Utc>> = (0..20).map(|m| from + TimeDelta::minutes(m)).collect();
    let mut succeeded: BTreeMap<DateTime<Utc>, usize> = BTreeMap::new();
    for ((fire, _), state) in by_fire(&ws, "minutely", to) {
        assert!(expected.contains(&fire), "a run outside the range: {fire}");
        if state == "succeeded" {
            *succeeded.entry(fire).or_default() += 1;
        }
    }
    assert_eq!(succeeded.keys().copied().collect::<BTreeSet<_>>(), expected);
    assert!(
        succeeded.values().all(|n| *n == 1),
        "a fire succeeded twice: {succeeded:?}"
    );
    let recorded: Vec<DateTime<Utc>> = fires(&ws, "minutely")
        .iter()
        .map(|f| time(&f["fire"]))
        .filter(|f| expected.contains(f))
        .collect();
    assert_eq!(recorded.len(), 20, "each fire recorded once");
    // Running it again after the crash creates nothing.
    let out = ws.ok(&[
        "backfill",
        "minutely",
        "--from",
        &from.to_rfc3339(),
        "--to",
        &to.to_rfc3339(),
    ]);
    assert!(out.contains("20 fires in range, started 0"), "{out}");
}
