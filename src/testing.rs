//! Builders for unit tests: a job from its YAML, an empty store in memory.

use crate::config::Job;
use crate::store::Store;

/// The job `yaml` defines (a job file's text), validated against the
/// embedded daemon config. Panics on a problem: the test's YAML is wrong.
pub fn job(yaml: &str) -> Job {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("job.yaml");
    std::fs::write(&file, yaml).expect("write the job file");
    let daemon =
        crate::config::daemon::validate(Default::default(), &|_| None).expect("daemon config");
    let (job, _) = crate::config::load_job_file(&file, &daemon, &|_| None).expect("a valid job");
    job
}

/// Job `name` with `trigger` (the lines under `trigger:`, indented) and
/// messages of at most 64 bytes; its one container runs `true`.
pub fn job_with_trigger(name: &str, trigger: &[&str]) -> Job {
    let mut lines = vec![format!("name: {name}"), "trigger:".to_string()];
    lines.extend(trigger.iter().map(|l| l.to_string()));
    lines.extend(
        [
            "payload: { max_bytes: 64 }",
            "template:",
            "  template:",
            "    spec:",
            "      restartPolicy: Never",
            "      containers: [{ name: m, command: [\"true\"] }]",
        ]
        .map(String::from),
    );
    job(&(lines.join("\n") + "\n"))
}

/// A builtin-queue job `name`; `extra` are more lines under
/// `trigger.queue` (indented by four spaces).
pub fn queue_job(name: &str, extra: &[&str]) -> Job {
    let mut trigger = vec!["  queue:", "    builtin: {}"];
    trigger.extend_from_slice(extra);
    job_with_trigger(name, &trigger)
}

/// An empty, migrated SQLite store in memory.
pub async fn store() -> Store {
    let store = Store::connect("sqlite::memory:").await.expect("connect");
    store.migrate().await.expect("migrate");
    store
}
