//! Property-based fuzzing (proptest) of the three places hostile input
//! enters kedge: job definition files, cron expressions, and message
//! payloads at intake. cargo-fuzz needs a nightly toolchain this project
//! does not have; proptest runs on stable and in `cargo test`.
//!
//! Each target asserts what must hold for *any* input: no panic, and an
//! answer of the documented shape (a diagnostic that names file, line and
//! column; a schedule whose next fire is in the future; a work item or a
//! dead letter with a known reason).
//!
//! Longer runs: `PROPTEST_CASES=20000 cargo test --release --test fuzz`.

use std::path::Path;

use chrono::{TimeZone, Utc};
use kedge::config::daemon::{validate, DaemonConfig};
use kedge::config::job::Trigger;
use kedge::config::load_job_file;
use kedge::intake::prepare;
use kedge::sources::{Delivery, Receipt};
use kedge::store::Intake;
use kedge::triggers::cron::Schedule;
use proptest::prelude::*;

fn daemon() -> DaemonConfig {
    validate(Default::default(), &|_| None).expect("default daemon config")
}

/// The example job files, the seeds the mutations start from.
fn seeds() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs");
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .expect("jobs/")
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).expect("read seed"))
        .collect();
    out.sort();
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, String),
    Delete(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (
            any::<usize>(),
            prop::sample::select(vec![
                ":",
                "- ",
                "{",
                "}",
                "[",
                "]",
                "\n  ",
                "\t",
                "'",
                "\"",
                "&a ",
                "*a",
                "!!str ",
                "---\n",
                "~",
                "null",
                "-1",
                "1e999",
                "@",
                "#",
                "\u{feff}",
                "\u{0}",
                "✓",
                "cron: ",
                "queue: ",
                "batch: ",
                "template: ",
                "sizing: ",
                "<<: *a",
            ])
            .prop_map(str::to_string)
        )
            .prop_map(|(i, s)| Mutation::Insert(i, s)),
        (any::<usize>(), 0usize..40).prop_map(|(i, n)| Mutation::Delete(i, n)),
    ]
}

fn apply(text: &str, muts: &[Mutation]) -> Vec<u8> {
    let mut b = text.as_bytes().to_vec();
    for m in muts {
        let len = b.len().max(1);
        match m {
            Mutation::Truncate(i) => b.truncate(i % len),
            Mutation::Flip(i, x) => {
                if !b.is_empty() {
                    let i = i % b.len();
                    b[i] ^= x;
                }
            }
            Mutation::Insert(i, s) => {
                let i = i % (b.len() + 1);
                b.splice(i..i, s.bytes());
            }
            Mutation::Delete(i, n) => {
                if !b.is_empty() {
                    let i = i % b.len();
                    let end = (i + n).min(b.len());
                    b.drain(i..end);
                }
            }
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig {
        // 384 in the test suite; PROPTEST_CASES for a longer hunt.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(384),
        ..ProptestConfig::default()
    })]

    /// Any mutation of a valid job file loads or is rejected with
    /// diagnostics that each name the file, a line and a column.
    #[test]
    fn job_files_never_panic_and_errors_are_located(
        seed in 0usize..16,
        muts in prop::collection::vec(mutation(), 1..6),
    ) {
        let seeds = seeds();
        let text = apply(&seeds[seed % seeds.len()], &muts);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fuzz.yaml");
        std::fs::write(&file, &text).unwrap();
        let daemon = daemon();
        if let Err(diags) = load_job_file(&file, &daemon, &|_| Some("x".into())) {
            let shown = diags.to_string();
            prop_assert!(!shown.trim().is_empty(), "an error without a message");
            for line in shown.lines().filter(|l| !l.trim().is_empty()) {
                let rest = line.strip_prefix(&format!("{}:", file.display()));
                prop_assert!(rest.is_some(), "not located in the file: {line}");
                let mut parts = rest.unwrap().splitn(3, ':');
                let l = parts.next().unwrap_or("");
                let c = parts.next().unwrap_or("");
                prop_assert!(l.parse::<u32>().is_ok() && c.parse::<u32>().is_ok(),
                    "no line:column in: {line}");
            }
        }
    }

    /// Any text: the cron parser answers Ok or Err; a parsed schedule's
    /// next fire (in zones with DST and a 30-minute shift) is after `now`.
    #[test]
    fn cron_expressions_never_panic(
        fields in prop::collection::vec(
            prop::string::string_regex("[0-9*/,\\-a-zA-Z@?LW#]{0,8}").unwrap(), 0..8),
        secs in 0i64..4_102_444_800,
    ) {
        let expr = fields.join(" ");
        if let Ok(s) = Schedule::parse(&expr) {
            let now = Utc.timestamp_opt(secs, 0).unwrap();
            for tz in [chrono_tz::UTC, chrono_tz::Europe::Berlin,
                       chrono_tz::America::New_York, chrono_tz::Australia::Lord_Howe] {
                if let Some(next) = s.next_after(now, tz) {
                    prop_assert!(next > now, "{expr}: {next} is not after {now}");
                }
            }
        }
    }

    /// Any bytes and headers offered at intake become a work item or a
    /// dead letter with one of the documented reasons; never a panic.
    #[test]
    fn payload_intake_never_panics(
        body in prop::collection::vec(any::<u8>(), 0..300),
        json_like in "\\{\"deadline\":(\"[0-9T:\\-Z.+]{0,30}\"|-?[0-9]{1,20}|true|null)\\}",
        use_json in any::<bool>(),
        header in "[ -~]{0,30}",
    ) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("q.yaml");
        std::fs::write(&file, "name: q\ntrigger:\n  queue:\n    rabbitmq: { url: \"amqp://x\", queue: q }\n    deadline: { header: x-deadline }\n\
            payload: { max_bytes: 200 }\n\
            template:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{ name: m, command: [\"true\"] }]\n").unwrap();
        let (job, _) = load_job_file(&file, &daemon(), &|_| None).expect("job");
        let Trigger::Queue(q) = job.trigger.clone() else { unreachable!() };
        let body = if use_json { json_like.into_bytes() } else { body };
        let d = Delivery {
            message_id: "m".into(),
            body,
            headers: vec![("x-deadline".into(), header)],
            redelivered: false,
            receipt: Receipt::Rabbitmq { delivery_tag: 1 },
        };
        let (item, how) = prepare(&job, &q, "rabbitmq:q", &d, Utc::now());
        match how {
            Intake::Run => prop_assert!(item.payload.is_some()),
            Intake::AwaitBatch => prop_assert!(false, "no batch configured"),
            Intake::Dead { reason, error } => {
                prop_assert!(["not_utf8", "not_json", "too_large", "bad_deadline", "expired"]
                    .contains(&reason.as_str()), "unknown reason {reason}");
                prop_assert!(!error.is_empty());
                prop_assert!(item.payload.is_some(), "a dead letter keeps its payload");
            }
        }
    }
}
