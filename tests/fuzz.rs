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
//! Each target runs for a fixed time, `FUZZ_SECONDS` (2 s in the test
//! suite). Longer runs: `FUZZ_SECONDS=300 cargo test --release --test fuzz
//! -- --nocapture --test-threads 1` (prints the cases run per target).
//! A failure found this way becomes a regression test beside the target.

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
use proptest::test_runner::TestCaseError;

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

/// Runs `check` on values of `strategy` for this target's time budget:
/// `FUZZ_SECONDS` (default 2) per target. A failure is shrunk by proptest
/// and reported with the minimal input.
fn fuzz<S: Strategy>(name: &str, strategy: S, check: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let budget = std::time::Duration::from_secs_f64(
        std::env::var("FUZZ_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2.0),
    );
    let start = std::time::Instant::now();
    let mut cases: u64 = 0;
    while cases == 0 || start.elapsed() < budget {
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 64,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        if let Err(e) = runner.run(&strategy, &check) {
            panic!("fuzz target {name} failed: {e}");
        }
        cases += 64;
    }
    eprintln!(
        "fuzz {name}: {cases} cases in {:.1}s, no failure",
        start.elapsed().as_secs_f64()
    );
}

/// Any mutation of a valid job file loads or is rejected with
/// diagnostics that each name the file, a line and a column.
#[test]
fn job_files_never_panic_and_errors_are_located() {
    let seeds = seeds();
    let daemon = daemon();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fuzz.yaml");
    fuzz(
        "job_files",
        (0usize..16, prop::collection::vec(mutation(), 1..6)),
        |(seed, muts)| {
            let text = apply(&seeds[seed % seeds.len()], &muts);
            std::fs::write(&file, &text).unwrap();
            if let Err(diags) = load_job_file(&file, &daemon, &|_| Some("x".into())) {
                let shown = diags.to_string();
                prop_assert!(!shown.trim().is_empty(), "an error without a message");
                for line in shown.lines().filter(|l| !l.trim().is_empty()) {
                    let rest = line.strip_prefix(&format!("{}:", file.display()));
                    prop_assert!(rest.is_some(), "not located in the file: {line}");
                    let mut parts = rest.unwrap().splitn(3, ':');
                    let l = parts.next().unwrap_or("");
                    let c = parts.next().unwrap_or("");
                    prop_assert!(
                        l.parse::<u32>().is_ok() && c.parse::<u32>().is_ok(),
                        "no line:column in: {line}"
                    );
                }
            }
            Ok(())
        },
    );
}

/// In zones with DST and a 30-minute shift, a schedule's next fire after
/// `secs` is later than it, and the fire after that later still.
fn fires_in_order(expr: &str, s: &Schedule, secs: i64) -> Result<(), TestCaseError> {
    let now = Utc.timestamp_opt(secs, 0).unwrap();
    for tz in [
        chrono_tz::UTC,
        chrono_tz::Europe::Berlin,
        chrono_tz::America::New_York,
        chrono_tz::Australia::Lord_Howe,
    ] {
        if let Some(next) = s.next_after(now, tz) {
            prop_assert!(next > now, "{expr} in {tz}: {next} is not after {now}");
            if let Some(after) = s.next_after(next, tz) {
                prop_assert!(after > next, "{expr} in {tz}: {after} is not after {next}");
            }
        }
    }
    Ok(())
}

/// Any text: the cron parser answers Ok or Err; a parsed schedule fires
/// in order ([`fires_in_order`]).
#[test]
fn cron_expressions_never_panic() {
    fuzz(
        "cron",
        (
            prop::collection::vec(
                prop::string::string_regex("[0-9*/,\\-a-zA-Z@?LW#]{0,8}").unwrap(),
                0..8,
            ),
            0i64..4_102_444_800,
        ),
        |(fields, secs)| {
            let expr = fields.join(" ");
            match Schedule::parse(&expr) {
                Ok(s) => fires_in_order(&expr, &s, secs),
                Err(_) => Ok(()),
            }
        },
    );
}

/// One field of a cron expression from cron's own grammar (`*`, values,
/// ranges, steps of `*` or a range, lists, names), values drawn from `lo..=hi` plus a
/// little past it so some are out of range. Random text above seldom
/// parses; this mostly does.
fn cron_field(lo: u32, hi: u32, names: &'static [&'static str]) -> BoxedStrategy<String> {
    let v = lo..hi + 2;
    let n = 1u32..(hi - lo + 2).max(2);
    let mut atoms = vec![
        Just("*".to_string()).boxed(),
        v.clone().prop_map(|v| v.to_string()).boxed(),
        (v.clone(), v.clone())
            .prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b)))
            .boxed(),
        n.clone().prop_map(|n| format!("*/{n}")).boxed(),
        (v.clone(), v, n)
            .prop_map(|(a, b, n)| format!("{}-{}/{n}", a.min(b), a.max(b)))
            .boxed(),
    ];
    if !names.is_empty() {
        atoms.push(prop::sample::select(names).prop_map(str::to_string).boxed());
    }
    prop::collection::vec(prop::strategy::Union::new(atoms), 1..4)
        .prop_map(|a| a.join(","))
        .boxed()
}

/// Five fields (minute first) or six (second first).
fn cron_expression() -> impl Strategy<Value = String> {
    const MONTHS: &[&str] = &["jan", "dec", "feb-apr", "JUN"];
    const DAYS: &[&str] = &["mon", "fri", "sun", "mon-fri", "sat,sun", "TUE"];
    let five = (
        cron_field(0, 59, &[]),
        cron_field(0, 23, &[]),
        cron_field(1, 31, &[]),
        cron_field(1, 12, MONTHS),
        cron_field(0, 7, DAYS),
    );
    prop_oneof![
        five.clone()
            .prop_map(|(m, h, d, mo, w)| format!("{m} {h} {d} {mo} {w}")),
        (cron_field(0, 59, &[]), five)
            .prop_map(|(s, (m, h, d, mo, w))| format!("{s} {m} {h} {d} {mo} {w}")),
    ]
}

/// Well-formed expressions (5 or 6 fields): a parsed schedule's next fire
/// is after `now` in every zone, and the fire after it is later still.
/// At least a tenth of the cases must parse, so the check is not vacuous.
#[test]
fn structured_cron_expressions_fire_in_order() {
    let parsed = std::sync::atomic::AtomicU64::new(0);
    let seen = std::sync::atomic::AtomicU64::new(0);
    fuzz(
        "cron_structured",
        (cron_expression(), 0i64..4_102_444_800),
        |(expr, secs)| {
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Ok(s) = Schedule::parse(&expr) else {
                return Ok(());
            };
            parsed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            fires_in_order(&expr, &s, secs)
        },
    );
    let (parsed, seen) = (parsed.into_inner(), seen.into_inner());
    eprintln!("fuzz cron_structured: {parsed} of {seen} expressions parsed");
    assert!(
        parsed * 10 >= seen,
        "only {parsed} of {seen} structured expressions parsed: the generator no longer exercises the scheduler"
    );
}

/// Any bytes and headers offered at intake become a work item or a dead
/// letter with one of the documented reasons; never a panic.
#[test]
fn payload_intake_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("q.yaml");
    std::fs::write(&file, "name: q\ntrigger:\n  queue:\n    rabbitmq: { url: \"amqp://x\", queue: q }\n    deadline: { header: x-deadline }\n\
        payload: { max_bytes: 200 }\n\
        template:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{ name: m, command: [\"true\"] }]\n").unwrap();
    let (job, _) = load_job_file(&file, &daemon(), &|_| None).expect("job");
    let Trigger::Queue(q) = job.trigger.clone() else {
        unreachable!()
    };
    fuzz(
        "payload_intake",
        (
            prop::collection::vec(any::<u8>(), 0..300),
            "\\{\"deadline\":(\"[0-9T:\\-Z.+]{0,30}\"|-?[0-9]{1,20}|true|null)\\}",
            any::<bool>(),
            "[ -~]{0,30}",
        ),
        |(body, json_like, use_json, header)| {
            let body = if use_json {
                json_like.into_bytes()
            } else {
                body
            };
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
                    prop_assert!(
                        [
                            "not_utf8",
                            "not_json",
                            "too_large",
                            "bad_deadline",
                            "expired"
                        ]
                        .contains(&reason.as_str()),
                        "unknown reason {reason}"
                    );
                    prop_assert!(!error.is_empty());
                    prop_assert!(item.payload.is_some(), "a dead letter keeps its payload");
                }
            }
            Ok(())
        },
    );
}

/// Any message id, any attempt (dlq replays push attempts past 99) and any
/// cron fire time give a run name Kubernetes takes as a Job name: DNS-1123,
/// at most 63 characters, for every job name validation accepts.
#[test]
fn run_names_are_always_valid_job_names() {
    use kedge::config::job::is_dns1123_label;
    use kedge::lifecycle::JOB_NAME_MAX;
    use kedge::lifecycle::{run_name, RunKey};
    fuzz(
        "run_names",
        (
            prop::string::string_regex(&format!(
                "[a-z]([a-z0-9-]{{0,{}}}[a-z0-9])?",
                JOB_NAME_MAX - 2
            ))
            .unwrap(),
            any::<String>(),
            any::<i64>(),
            1u32..u32::MAX,
            any::<bool>(),
        ),
        |(job, id, secs, attempt, cron)| {
            let key = if cron {
                RunKey::CronFire(secs.rem_euclid(1 << 40))
            } else {
                RunKey::Message(&id)
            };
            let name = run_name(&job, key, attempt);
            prop_assert!(is_dns1123_label(&name), "{name:?} from job {job:?}");
            prop_assert!(name.len() <= 63, "{name} is {} characters", name.len());
            prop_assert_eq!(&name, &run_name(&job, key, attempt), "not deterministic");
            Ok(())
        },
    );
}
