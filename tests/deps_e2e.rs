//! Dependencies (`trigger.after`) through the built binary: a diamond runs
//! in order, once per upstream run; the failure path; a cycle refused with
//! its path; a restart (kill -9) never runs a dependent twice.
//! "Did not run" is concluded after a later settlement the daemon saw (it
//! evaluates dependencies after every settlement), never from a pause.

mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use support::{wait_until, Workspace};

const LIMIT: Duration = Duration::from_secs(60);

/// A job run by hand only (a cron that fires once a year, no catch-up),
/// running `command`.
fn upstream(name: &str, command: &str) -> String {
    format!(
        "name: {name}\n\
         trigger:\n  cron: \"0 0 1 1 *\"\n  catchup: none\n\
         retry:\n  max_attempts: 1\n\
         template:\n  template:\n    spec:\n      restartPolicy: Never\n      \
         containers: [{{ name: c, command: [\"sh\", \"-c\", {command:?}] }}]\n"
    )
}

/// A job with `after` alone.
fn dependent(name: &str, after: &str, command: &str) -> String {
    format!(
        "name: {name}\n\
         trigger:\n  after: {after:?}\n\
         retry:\n  max_attempts: 1\n\
         template:\n  template:\n    spec:\n      restartPolicy: Never\n      \
         containers: [{{ name: c, command: [\"sh\", \"-c\", {command:?}] }}]\n"
    )
}

fn runs_of(ws: &Workspace, job: &str) -> Vec<serde_json::Value> {
    let mut runs: Vec<_> = ws.runs().into_iter().filter(|r| r["job"] == job).collect();
    runs.sort_by_key(|r| r["scheduled_at"].as_str().unwrap_or("").to_string());
    runs
}

fn succeeded(ws: &Workspace, job: &str) -> usize {
    runs_of(ws, job)
        .iter()
        .filter(|r| r["state"] == "succeeded")
        .count()
}

fn time(v: &serde_json::Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("a time"))
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

#[test]
fn a_diamond_runs_in_order_once_per_upstream_success() {
    let ws = Workspace::new();
    ws.write_job("a", &upstream("a", "sleep 0.3"));
    ws.write_job("b", &dependent("b", "success(a)", "sleep 0.3"));
    ws.write_job("c", &dependent("c", "success(a)", "sleep 0.1"));
    ws.write_job("d", &dependent("d", "success(b) and success(c)", "true"));
    assert_eq!(
        ws.ok(&["graph"]),
        "a\nb ← success(a)\nc ← success(a)\nd ← success(b) and success(c)\n"
    );
    let _daemon = ws.start_daemon();
    for round in 1..=2 {
        ws.ok(&["trigger", "a"]);
        wait_until(LIMIT, "d succeeded", || succeeded(&ws, "d") == round);
        for job in ["a", "b", "c", "d"] {
            let runs = runs_of(&ws, job);
            assert_eq!(runs.len(), round, "{job} runs once per round: {runs:#?}");
            assert!(runs.iter().all(|r| r["state"] == "succeeded"), "{runs:#?}");
        }
        let last = |job| runs_of(&ws, job).pop().unwrap();
        let (a, b, c, d) = (last("a"), last("b"), last("c"), last("d"));
        for x in [&b, &c] {
            assert!(
                time(&x["started_at"]) >= time(&a["finished_at"]),
                "{x:#?} after {a:#?}"
            );
        }
        assert!(time(&d["started_at"]) >= time(&b["finished_at"]));
        assert!(time(&d["started_at"]) >= time(&c["finished_at"]));
    }
    let fires: Vec<serde_json::Value> =
        serde_json::from_str(&ws.ok(&["fires", "d", "--json"])).unwrap();
    assert_eq!(fires.len(), 2, "{fires:#?}");
    assert!(fires
        .iter()
        .all(|f| f["detail"] == "after: success(b) and success(c)"));
}

#[test]
fn a_failure_runs_the_cleanup_and_not_the_success_path() {
    let ws = Workspace::new();
    ws.write_job("load", &upstream("load", "exit 3"));
    ws.write_job("cleanup", &dependent("cleanup", "failure(load)", "true"));
    ws.write_job("report", &dependent("report", "success(load)", "true"));
    ws.write_job(
        "audit",
        &dependent("audit", "done(load) and not success(load)", "true"),
    );
    let _daemon = ws.start_daemon();
    ws.ok(&["trigger", "load"]);
    wait_until(LIMIT, "cleanup and audit succeeded", || {
        succeeded(&ws, "cleanup") == 1 && succeeded(&ws, "audit") == 1
    });
    assert_eq!(runs_of(&ws, "load")[0]["state"], "dead");
    // The daemon evaluated every dependency again after cleanup and audit
    // settled: report would have fired by now.
    assert!(
        runs_of(&ws, "report").is_empty(),
        "{:#?}",
        runs_of(&ws, "report")
    );
    let fires: Vec<serde_json::Value> =
        serde_json::from_str(&ws.ok(&["fires", "report", "--json"])).unwrap();
    assert!(fires.is_empty(), "{fires:#?}");
}

#[test]
fn a_cycle_is_refused_with_its_path() {
    let ws = Workspace::new();
    ws.write_job("a", &dependent("a", "success(b)", "true"));
    ws.write_job("b", &dependent("b", "success(c) or failure(x)", "true"));
    ws.write_job("c", &dependent("c", "success(a)", "true"));
    ws.write_job("x", &upstream("x", "true"));
    ws.write_job("self", &dependent("self", "done(self)", "true"));
    ws.write_job("typo", &dependent("typo", "success(nope)", "true"));
    let out = ws.run(&["validate"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let cycle = "trigger.after: dependency cycle (each waits for the next): a → b → c → a";
    // Each job on the cycle is refused at the name it waits for.
    assert!(err.contains(&format!("jobs/a.yaml:3:19: {cycle}")), "{err}");
    assert!(err.contains(&format!("jobs/b.yaml:3:19: {cycle}")), "{err}");
    assert!(err.contains(&format!("jobs/c.yaml:3:19: {cycle}")), "{err}");
    assert!(
        err.contains("jobs/self.yaml:3:16: trigger.after: \"self\" is the job itself"),
        "{err}"
    );
    assert!(
        err.contains("jobs/typo.yaml:3:19: trigger.after: \"nope\" is not a job"),
        "{err}"
    );
    assert!(!err.contains("x.yaml"), "{err}");
}

#[test]
fn a_restart_never_runs_a_dependent_twice() {
    let ws = Workspace::new();
    ws.write_job("up", &upstream("up", "true"));
    ws.write_job("down", &dependent("down", "success(up)", "true"));
    ws.write_job("other", &upstream("other", "true"));
    let daemon = ws.start_daemon();
    ws.ok(&["trigger", "up"]);
    wait_until(LIMIT, "down succeeded", || succeeded(&ws, "down") == 1);
    daemon.kill9();
    // Restarted: the check at start finds the dependency met, and already
    // fired for this upstream run.
    let daemon = ws.start_daemon();
    ws.ok(&["trigger", "other"]);
    wait_until(LIMIT, "other succeeded", || succeeded(&ws, "other") == 1);
    assert_eq!(runs_of(&ws, "down").len(), 1);
    // Work of the upstream stored while no daemon runs: the restarted
    // daemon runs it, then the dependent, once; a kill -9 and restart
    // after that does not run the dependent again.
    daemon.kill9();
    ws.ok(&["trigger", "up"]);
    assert_eq!(runs_of(&ws, "up").len(), 2);
    let daemon = ws.start_daemon();
    wait_until(LIMIT, "down ran again", || succeeded(&ws, "down") == 2);
    daemon.kill9();
    let _daemon = ws.start_daemon();
    ws.ok(&["trigger", "other"]);
    wait_until(LIMIT, "other succeeded again", || {
        succeeded(&ws, "other") == 2
    });
    assert_eq!(runs_of(&ws, "down").len(), 2, "{:#?}", runs_of(&ws, "down"));
}

/// A cron job with `after`: every second, waiting for `success(up)`.
fn waiting_cron(wait_timeout: &str) -> String {
    format!(
        "name: rep\n\
         trigger:\n  cron: \"* * * * * *\"\n  overlap: allow\n  catchup: none\n  \
         after: \"success(up)\"\n  wait_timeout: {wait_timeout}\n\
         template:\n  template:\n    spec:\n      restartPolicy: Never\n      \
         containers: [{{ name: c, command: [\"true\"] }}]\n"
    )
}

fn fires(ws: &Workspace, job: &str) -> Vec<serde_json::Value> {
    serde_json::from_str(&ws.ok(&["fires", job, "--limit", "100000", "--json"])).unwrap()
}

#[test]
fn a_cron_fire_waits_for_its_dependency_then_times_out() {
    let ws = Workspace::new();
    ws.write_job("up", &upstream("up", "true"));
    ws.write_job("rep", &waiting_cron("2s"));
    let daemon = ws.start_daemon();
    wait_until(LIMIT, "a fire waiting and one timed out", || {
        let f = fires(&ws, "rep");
        f.iter()
            .any(|f| f["outcome"] == "waiting" && f["detail"] == "waiting for: success(up)")
            && f.iter()
                .any(|f| f["outcome"] == "skipped" && f["detail"] == "dependency timeout")
    });
    assert!(runs_of(&ws, "rep").is_empty());
    assert!(daemon
        .log()
        .contains("cron fire skipped: dependency timeout"));
    ws.ok(&["trigger", "up"]);
    wait_until(LIMIT, "rep ran after up", || succeeded(&ws, "rep") >= 1);
    let up = runs_of(&ws, "up").pop().unwrap();
    // One success of up starts one waiting fire; the later ones wait again.
    let started: Vec<_> = fires(&ws, "rep")
        .into_iter()
        .filter(|f| f["detail"] == "after: success(up)")
        .collect();
    assert_eq!(started.len(), 1, "{started:#?}");
    for r in runs_of(&ws, "rep") {
        assert!(time(&r["started_at"]) >= time(&up["finished_at"]), "{r:#?}");
    }
}

#[test]
fn a_waiting_cron_fire_survives_a_kill_and_runs_once() {
    let ws = Workspace::new();
    ws.write_job("up", &upstream("up", "true"));
    ws.write_job("rep", &waiting_cron("1h"));
    let daemon = ws.start_daemon();
    wait_until(LIMIT, "a fire waiting", || {
        fires(&ws, "rep").iter().any(|f| f["outcome"] == "waiting")
    });
    daemon.kill9();
    let waiting: Vec<_> = fires(&ws, "rep")
        .into_iter()
        .filter(|f| f["outcome"] == "waiting")
        .collect();
    let _daemon = ws.start_daemon();
    ws.ok(&["trigger", "up"]);
    wait_until(LIMIT, "rep ran", || succeeded(&ws, "rep") == 1);
    let started: Vec<_> = fires(&ws, "rep")
        .into_iter()
        .filter(|f| f["detail"] == "after: success(up)")
        .collect();
    assert_eq!(started.len(), 1, "{started:#?}");
    assert_eq!(
        started[0]["fire"], waiting[0]["fire"],
        "the oldest waiting fire runs"
    );
    // Later settlements (up again) start the next waiting fire only.
    ws.ok(&["trigger", "up"]);
    wait_until(LIMIT, "rep ran again", || succeeded(&ws, "rep") == 2);
    assert_eq!(runs_of(&ws, "rep").len(), 2);
}

#[test]
fn a_held_upstream_makes_fires_wait() {
    let ws = Workspace::new();
    ws.write_job("up", &upstream("up", "true"));
    ws.write_job(
        "rep",
        &waiting_cron("1h").replace("success(up)", "success(up, 1h)"),
    );
    let _daemon = ws.start_daemon();
    ws.ok(&["trigger", "up"]);
    // With a look-back, every fire in the hour after up's success runs.
    wait_until(LIMIT, "rep ran", || succeeded(&ws, "rep") >= 1);
    ws.ok(&["hold", "up", "--reason", "investigating"]);
    let held_at = Utc::now();
    wait_until(LIMIT, "a fire after the hold waiting", || {
        fires(&ws, "rep").iter().any(|f| {
            f["outcome"] == "waiting" && time(&f["fire"]) > held_at + chrono::TimeDelta::seconds(1)
        })
    });
    let ran_while_held = fires(&ws, "rep")
        .iter()
        .filter(|f| f["detail"] == "after: success(up, 1h)")
        .filter(|f| time(&f["fire"]) > held_at + chrono::TimeDelta::seconds(1))
        .count();
    assert_eq!(ran_while_held, 0);
}

#[test]
fn an_iced_upstream_counts_as_succeeded() {
    let ws = Workspace::new();
    ws.write_job("up", &upstream("up", "exit 1"));
    ws.write_job("rep", &waiting_cron("1h"));
    let _daemon = ws.start_daemon();
    wait_until(LIMIT, "a fire waiting", || {
        fires(&ws, "rep").iter().any(|f| f["outcome"] == "waiting")
    });
    assert!(runs_of(&ws, "rep").is_empty());
    ws.ok(&["ice", "up"]);
    wait_until(LIMIT, "rep ran once up is iced", || {
        succeeded(&ws, "rep") >= 1
    });
    assert!(runs_of(&ws, "up").is_empty(), "up never ran");
}
