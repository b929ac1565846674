//! `kedge prune [--dry-run]` end to end, through the built binary: a
//! workspace whose daemon ran some work to success and one message to a
//! dead letter, then pruned by hand once the history is older than
//! `retention.history`.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::{wait_until, Workspace};

const CONFIG: &str = "jobs_dir: jobs\n\
     store:\n  url: sqlite://state/kedge.db\n  poll_interval: 50ms\n\
     executor:\n  kind: local\n  local:\n    work_dir: runs\n    pod_backoff: 100ms\n    pod_backoff_max: 1s\n\
     retention:\n  history: 2s\n  payloads: 1s\n  interval: 1h\n\
     shutdown_timeout: 10s\n";

/// A builtin-queue job `name` whose container runs `sh -c SCRIPT`, one attempt.
fn job(name: &str, script: &str) -> String {
    format!(
        "name: {name}\n\
         trigger:\n  queue:\n    builtin: {{}}\n\
         retry:\n  max_attempts: 1\n\
         template:\n  backoffLimit: 0\n  template:\n    spec:\n      restartPolicy: Never\n      \
         containers:\n        - name: main\n          command: [\"sh\", \"-c\", \"{script}\"]\n"
    )
}

/// The table `kedge prune` prints: name → rows.
fn table(stdout: &str) -> BTreeMap<String, u64> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with("TABLE"))
        .skip(1)
        .map(|l| {
            let (name, rest) = l.split_at(22);
            let n = rest.split_whitespace().next().expect("a count");
            (name.trim().to_string(), n.parse().expect("a number"))
        })
        .collect()
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    let mut all: BTreeMap<String, u64> = [
        "work_items",
        "runs",
        "batch_members",
        "dead_letters",
        "cron_fires",
        "work_items.payload",
        "dead_letters.payload",
        "run folders",
    ]
    .into_iter()
    .map(|t| (t.to_string(), 0))
    .collect();
    for (t, n) in pairs {
        all.insert(t.to_string(), *n);
    }
    all
}

#[test]
fn prune_dry_run_counts_then_prune_deletes_old_history_and_keeps_open_dead_letters() {
    let ws = Workspace::new();
    ws.write_config(CONFIG);
    ws.write_job("work", &job("work", "true"));
    ws.write_job("broken", &job("broken", "exit 3"));
    let d = ws.start_daemon();
    let mut done = Vec::new();
    for i in 0..3 {
        let out = ws.ok(&["enqueue", "work", "--data", &format!("{{\"n\":{i}}}")]);
        done.push(out.trim().trim_start_matches("enqueued: run ").to_string());
    }
    ws.ok(&["enqueue", "broken", "--data", "{}"]);
    wait_until(Duration::from_secs(60), "3 succeeded, 1 dead", || {
        let runs = ws.runs();
        let n = |s: &str| runs.iter().filter(|r| r["state"] == s).count();
        n("succeeded") == 3 && n("dead") == 1
    });
    assert!(d.stop().success());
    for run_id in &done {
        assert!(ws.path().join("runs").join(run_id).is_dir(), "{run_id}");
    }

    // Once the work is 2 s old, a dry run counts it and changes nothing.
    let expected = counts(&[("work_items", 3), ("runs", 3), ("run folders", 3)]);
    let mut dry = String::new();
    wait_until(Duration::from_secs(30), "the work to be 2 s old", || {
        dry = ws.ok(&["prune", "--dry-run"]);
        table(&dry) == expected
    });
    assert!(dry.starts_with("dry run: nothing was changed"), "{dry}");
    assert_eq!(ws.runs().len(), 4);
    let json: serde_json::Value =
        serde_json::from_str(&ws.ok(&["prune", "--dry-run", "--json"])).expect("JSON");
    assert_eq!(json["dry_run"], true);
    assert_eq!(json["history"], "2s");
    assert_eq!(json["deleted"]["work_items"], 3);
    assert_eq!(json["deleted"]["run_folders"], 3);

    // The pass deletes exactly that.
    let out = ws.ok(&["prune"]);
    assert!(!out.contains("dry run"), "{out}");
    assert_eq!(table(&out), expected, "{out}");
    let runs = ws.runs();
    assert_eq!(runs.len(), 1, "only the dead one's run stays: {runs:?}");
    assert_eq!(runs[0]["job"], "broken");
    assert_eq!(ws.dead_letters().len(), 1, "the open dead letter stays");
    for run_id in &done {
        assert!(!ws.path().join("runs").join(run_id).exists(), "{run_id}");
    }
    // Nothing left to prune.
    assert_eq!(table(&ws.ok(&["prune", "--dry-run"])), counts(&[]));
    assert_eq!(table(&ws.ok(&["prune"])), counts(&[]));
}

#[test]
fn prune_help_explains_what_goes_and_the_dedup_window() {
    let ws = Workspace::new();
    let help = ws.ok(&["prune", "--help"]);
    for needle in [
        "retention.history",
        "retention.payloads",
        "--dry-run",
        "accepted as new",
        "Never pruned",
    ] {
        assert!(help.contains(needle), "{needle:?} missing from:\n{help}");
    }
}
