//! `kedge import cronjob|keda` through the built binary, on the samples in
//! `tests/import_samples/` (written from the Kubernetes and KEDA
//! documentation's examples): files written, accepted by `kedge validate`,
//! the report naming what was not mapped; existing files kept unless
//! `--force`; bad input named by file and document.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use support::Workspace;

fn sample(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/import_samples")
        .join(name)
        .display()
        .to_string()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The environment variables the imported KEDA jobs' url_env name, as an
/// operator would set them before loading.
const KEDA_ENV: [(&str, &str); 2] = [
    ("RABBITMQ_HOST", "amqp://guest:guest@127.0.0.1:5672/%2f"),
    ("REDIS_LIST_WORKER_REDIS_URL", "redis://127.0.0.1:6379/0"),
];

#[test]
fn cronjobs_become_job_files_that_validate_and_the_report_names_what_was_left() {
    let ws = Workspace::new();
    let report = ws.ok(&[
        "import",
        "cronjob",
        &sample("cronjob-hello.yaml"),
        "--out",
        "imported",
    ]);
    let hello = read(ws.path().join("imported/hello.yaml"));
    assert!(
        hello.starts_with("# yaml-language-server: $schema=../deploy/schema/job.schema.json\n"),
        "{hello}"
    );
    for line in [
        "name: hello",
        "cron: \"* * * * *\"",
        "timezone: Etc/UTC",
        "overlap: forbid",
        "starting_deadline: 200s",
        "restartPolicy: OnFailure",
    ] {
        assert!(hello.contains(line), "{line:?} missing from:\n{hello}");
    }
    let nightly = read(ws.path().join("imported/nightly-report.yaml"));
    assert!(nightly.contains("timezone: Europe/Berlin"), "{nightly}");
    assert!(nightly.contains("overlap: replace"), "{nightly}");

    let checked = ws.ok(&["validate", "--jobs", "imported"]);
    assert_eq!(checked, "ok: 2 job(s) in imported\n");
    // The schedule is read as Kubernetes read it: 02:30 Berlin on weekdays.
    let plan = ws.ok(&["plan", "--jobs", "imported"]);
    let nightly: Vec<&str> = plan
        .lines()
        .skip_while(|l| *l != "nightly-report (Europe/Berlin)")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert_eq!(nightly.len(), 5, "{plan}");
    for fire in nightly {
        let at = chrono::DateTime::parse_from_rfc3339(fire.trim()).expect("an RFC 3339 fire");
        let local = at.with_timezone(&chrono_tz::Europe::Berlin);
        assert_eq!(local.format("%H:%M").to_string(), "02:30", "{plan}");
        use chrono::Datelike;
        assert!(local.weekday().number_from_monday() <= 5, "{plan}");
    }

    for expected in [
        "cronjob-hello.yaml#1 CronJob hello → hello.yaml",
        "cronjob-hello.yaml#2 ConfigMap hello-settings: skipped: not a CronJob",
        "not mapped: spec.successfulJobsHistoryLimit: 3: the Kubernetes executor keeps finished Jobs per daemon",
        "not mapped: spec.jobTemplate.metadata:",
        "to do: the CronJob was suspended: run `kedge pause nightly-report",
        "2 job file(s) written to imported",
    ] {
        assert!(report.contains(expected), "{expected:?} missing from:\n{report}");
    }
}

#[test]
fn scaled_jobs_become_queue_jobs_and_metric_triggers_are_reported() {
    let ws = Workspace::new();
    let report = ws.ok(&[
        "import",
        "keda",
        &sample("keda-rabbitmq.yaml"),
        &sample("keda-redis.yaml"),
        &sample("keda-prometheus.yaml"),
        "--out",
        "imported",
    ]);
    let rabbit = read(ws.path().join("imported/rabbitmq-consumer.yaml"));
    for line in ["url_env: RABBITMQ_HOST", "queue: hello", "max_active: 30"] {
        assert!(rabbit.contains(line), "{line:?} missing from:\n{rabbit}");
    }
    let redis = read(ws.path().join("imported/redis-list-worker.yaml"));
    assert!(redis.contains("list: mylist"), "{redis}");
    assert!(
        !ws.path()
            .join("imported/prometheus-scaledjob.yaml")
            .exists(),
        "a ScaledJob with only a metric trigger must not be written"
    );

    let mut validate = ws.kedge();
    validate.args(["validate", "--jobs", "imported"]);
    for (k, v) in KEDA_ENV {
        validate.env(k, v);
    }
    let out = validate.output().expect("run kedge");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(stdout, "ok: 2 job(s) in imported\n");

    for expected in [
        "ScaledJob prometheus-scaledjob: skipped: no trigger kedge can read as a queue",
        "not mapped: spec.triggers[0] (prometheus): a metric trigger: kedge's metric triggers (trigger.metric) are not built yet",
        "not mapped: spec.scalingStrategy:",
        "not mapped: spec.pollingInterval: 10s",
        "not mapped: spec.rollout:",
        "not mapped: spec.triggers[0].authenticationRef: TriggerAuthentication keda-trigger-auth-redis-secret",
        "TriggerAuthentication keda-trigger-auth-redis-secret: skipped: not a ScaledJob",
        "to do: set REDIS_LIST_WORKER_REDIS_URL in kedge's environment to redis://redis-master.default.svc.cluster.local:6379/0",
        "one Job per message with the message in KEDGE_PAYLOAD",
    ] {
        assert!(report.contains(expected), "{expected:?} missing from:\n{report}");
    }
}

#[test]
fn an_existing_file_is_kept_unless_force() {
    let ws = Workspace::new();
    let args = [
        "import",
        "cronjob",
        &sample("cronjob-hello.yaml"),
        "--out",
        "imported",
    ];
    ws.ok(&args);
    let path = ws.path().join("imported/hello.yaml");
    std::fs::write(&path, "# edited by hand\n").unwrap();
    std::fs::remove_file(ws.path().join("imported/nightly-report.yaml")).unwrap();

    let out = ws.run(&args);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("would overwrite imported/hello.yaml: use --force"),
        "{stderr}"
    );
    assert_eq!(read(path.clone()), "# edited by hand\n");
    assert!(
        !ws.path().join("imported/nightly-report.yaml").exists(),
        "a refused import writes nothing"
    );

    let mut forced = args.to_vec();
    forced.push("--force");
    ws.ok(&forced);
    assert!(read(path).contains("name: hello"));
}

#[test]
fn bad_input_names_the_file_and_the_document() {
    let ws = Workspace::new();
    std::fs::write(
        ws.path().join("bad.yaml"),
        "kind: ConfigMap\nmetadata: {name: c}\n---\napiVersion: batch/v1\nkind: CronJob\nmetadata: {name: broken}\nspec:\n  schedule: [not, a, string]\n  jobTemplate: {spec: {template: {spec: {containers: []}}}}\n",
    )
    .unwrap();
    let out = ws.run(&["import", "cronjob", "bad.yaml", "--out", "imported"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stderr.starts_with("bad.yaml: document 2 (CronJob broken): spec.schedule: "),
        "{stderr}"
    );
    assert!(stderr.contains("nothing written"), "{stderr}");
    assert!(!ws.path().join("imported").exists());

    // Every bad input is named, not only the first.
    let out = ws.run(&[
        "import",
        "cronjob",
        "bad.yaml",
        "missing.yaml",
        "--out",
        "imported",
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bad.yaml: document 2"), "{stderr}");
    assert!(stderr.contains("missing.yaml: cannot read: "), "{stderr}");

    std::fs::write(
        ws.path().join("syntax.yaml"),
        "kind: CronJob\nspec: [a, b\n",
    )
    .unwrap();
    let out = ws.run(&["import", "keda", "syntax.yaml", "--out", "imported"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with("syntax.yaml:"), "{stderr}");
}

#[test]
fn autosys_command_jobs_become_jobs_and_conditions_are_reported() {
    let ws = Workspace::new();
    let report = ws.ok(&[
        "import",
        "autosys",
        &sample("autosys.jil"),
        "--out",
        "imported",
        "--image",
        "busybox:1.36",
    ]);
    let post = read(ws.path().join("imported/eod-post.yaml"));
    for line in [
        "cron: 15 21,23 * * mon,tue,wed,thu,fri",
        "timezone: US/Eastern",
        "max_attempts: 2",
        "activeDeadlineSeconds: 5400",
        "image: busybox:1.36",
    ] {
        assert!(post.contains(line), "{line:?} missing from:\n{post}");
    }
    assert!(!ws.path().join("imported/eod-box.yaml").exists());
    assert_eq!(
        ws.ok(&["validate", "--jobs", "imported"]),
        "ok: 2 job(s) in imported\n"
    );
    for expected in [
        "insert_job EOD_box: skipped: a box job",
        "not mapped: condition: success(EOD_watch) & success(EOD_load): job dependencies",
        "not mapped: std_out_file: /tmp/EOD_post.out",
        "mapped: (no date_conditions) → trigger.queue.builtin",
        "AutoSys global variables",
    ] {
        assert!(
            report.contains(expected),
            "{expected:?} missing from:\n{report}"
        );
    }

    let out = ws.run(&[
        "import",
        "cronjob",
        &sample("cronjob-hello.yaml"),
        "--out",
        "other",
        "--image",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--image is for `kedge import autosys` only")
    );
}
