//! `kedge validate` (and `kedge plan`) on bad input, through the built binary.
//!
//! The corpus is `tests/bad_definitions/`: each `NAME.yaml` is one job file
//! with one kind of problem (a few have several on purpose), and each
//! sub-directory is a set of files that are wrong together (duplicate names).
//! Next to each entry, `ENTRY.expected` holds the exact stderr of
//! `kedge validate` when the entry is the only content of `jobs/` in a fresh
//! workspace, so paths print as `jobs/NAME.yaml`.
//!
//! A changed message fails the test. After checking the new output by hand,
//! `KEDGE_BLESS=1 cargo test --test validate_cli` rewrites the `.expected`
//! files (then review the diff before committing).

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use support::Workspace;

/// Named by fixtures that need a variable that is not set.
const UNSET_VAR: &str = "KEDGE_TEST_SURELY_UNSET_VAR";

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad_definitions")
}

/// One corpus entry: a job file or a directory of job files.
struct Fixture {
    /// `NAME.yaml` or the directory name.
    name: String,
    /// The files to put in `jobs/`.
    files: Vec<PathBuf>,
    /// `ENTRY.expected`.
    expected_path: PathBuf,
}

impl Fixture {
    fn expected(&self) -> String {
        std::fs::read_to_string(&self.expected_path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (every fixture needs its expected output; see the top of this file)",
                self.expected_path.display()
            )
        })
    }
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read fixture dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn fixtures() -> Vec<Fixture> {
    let dir = corpus_dir();
    let mut out: Vec<Fixture> = std::fs::read_dir(&dir)
        .expect("read tests/bad_definitions")
        .map(|e| e.expect("dir entry").path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            let files = if p.is_dir() {
                yaml_files(&p)
            } else if name.ends_with(".yaml") {
                vec![p.clone()]
            } else {
                return None;
            };
            Some(Fixture {
                expected_path: dir.join(format!("{name}.expected")),
                name,
                files,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// A workspace whose `jobs/` holds exactly `files`.
fn workspace_with(files: &[PathBuf]) -> Workspace {
    let ws = Workspace::new();
    for f in files {
        std::fs::copy(f, ws.path().join("jobs").join(f.file_name().unwrap()))
            .expect("copy fixture");
    }
    ws
}

fn kedge(ws: &Workspace, args: &[&str]) -> Output {
    ws.kedge()
        .env_remove(UNSET_VAR)
        .args(args)
        .output()
        .expect("run kedge")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_bad_definition_gets_exit_2_and_exactly_its_expected_messages() {
    let bless = std::env::var_os("KEDGE_BLESS").is_some();
    let all = fixtures();
    assert!(
        all.len() >= 24,
        "the corpus shrank to {} entries",
        all.len()
    );
    let mut failures = Vec::new();
    for fx in &all {
        let ws = workspace_with(&fx.files);
        let out = kedge(&ws, &["validate"]);
        let stderr = text(&out.stderr);
        if bless && !stderr.contains("panicked") {
            std::fs::write(&fx.expected_path, &stderr).expect("write .expected");
        }
        let expected = fx.expected();
        if out.status.code() != Some(2) {
            failures.push(format!(
                "{}: exit code {:?}, expected 2\nstdout: {}\nstderr: {stderr}",
                fx.name,
                out.status.code(),
                text(&out.stdout)
            ));
        } else if stderr != expected {
            failures.push(format!(
                "{}: stderr differs from {}\n--- expected\n{expected}--- got\n{stderr}---",
                fx.name,
                fx.expected_path.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n\n{}",
        failures.len(),
        all.len(),
        failures.join("\n\n")
    );
}

#[test]
fn every_expected_file_belongs_to_a_fixture_and_names_only_its_files() {
    let all = fixtures();
    let names: Vec<String> = all.iter().map(|f| format!("{}.expected", f.name)).collect();
    for entry in std::fs::read_dir(corpus_dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".expected") {
            assert!(names.contains(&name), "{name} has no fixture next to it");
        }
    }
    for fx in &all {
        let expected = fx.expected();
        assert!(
            !expected.trim().is_empty(),
            "{}: empty expectation",
            fx.name
        );
        for line in expected.lines() {
            let ok = fx.files.iter().any(|f| {
                let prefix = format!("jobs/{}:", f.file_name().unwrap().to_string_lossy());
                line.starts_with(&prefix)
            });
            assert!(
                ok,
                "{}: line does not name one of its files: {line}",
                fx.name
            );
        }
    }
}

#[test]
fn validate_never_panics_on_any_fixture_nor_does_plan() {
    for fx in fixtures() {
        let ws = workspace_with(&fx.files);
        for args in [&["validate"][..], &["plan", "--count", "1"][..]] {
            let out = kedge(&ws, args);
            let stderr = text(&out.stderr);
            assert!(
                !stderr.contains("panicked") && out.status.code().is_some_and(|c| c <= 2),
                "{}: kedge {args:?} crashed ({:?}):\n{stderr}",
                fx.name,
                out.status
            );
        }
    }
}

#[test]
fn all_bad_files_in_one_directory_are_reported_in_one_run() {
    // Every fixture side by side: each file's problems appear, in file-name
    // order, exactly as when it is alone (one bad file never hides another).
    let all = fixtures();
    let files: Vec<PathBuf> = all.iter().flat_map(|f| f.files.clone()).collect();
    let ws = workspace_with(&files);
    let out = kedge(&ws, &["validate"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");

    let mut expected: Vec<(String, String)> = all
        .iter()
        .flat_map(|f| {
            f.expected()
                .lines()
                .map(|l| (l.split(':').next().unwrap().to_string(), l.to_string()))
                .collect::<Vec<_>>()
        })
        .collect();
    // Stable: the lines of one file keep their order.
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    let expected: Vec<&str> = expected.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(stderr.lines().collect::<Vec<_>>(), expected);
}

#[test]
fn a_file_with_many_problems_reports_all_of_them_at_once() {
    let ws = workspace_with(&[corpus_dir().join("many_problems.yaml")]);
    let out = kedge(&ws, &["validate"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let fields: Vec<&str> = stderr
        .lines()
        .map(|l| l.split(':').nth(3).unwrap_or("").trim())
        .collect();
    assert_eq!(
        fields,
        [
            "name",
            "trigger.cron",
            "trigger.timezone",
            "trigger.starting_deadline",
            "retry.max_attempts",
            "retry.backoff",
            "limits.max_active",
            "env_from_host[0]",
            "template.completions",
            "template.activeDeadlineSeconds",
            "template.template.spec.restartPolicy",
            "template.template.spec.containers[0].name",
            "template.template.spec.containers[0].command",
        ],
        "one line per problem, top to bottom:\n{stderr}"
    );
}

#[test]
fn the_repository_jobs_and_config_validate() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(support::kedge_bin())
        .current_dir(repo)
        .env_remove("KEDGE_CONFIG")
        .env_remove("KEDGE_JOBS")
        .env_remove("KEDGE_STORE")
        .arg("validate")
        .output()
        .expect("run kedge");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    let jobs = yaml_files(&repo.join("jobs")).len();
    assert_eq!(stdout, format!("ok: {jobs} job(s) in jobs\n"));
}

#[test]
fn the_kubernetes_config_example_validates_and_needs_its_store_secret() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let validate = |store: Option<&str>| {
        let mut c = std::process::Command::new(support::kedge_bin());
        c.current_dir(repo)
            .env_remove("KEDGE_STORE")
            .env("KEDGE_CONFIG", "config/kubernetes.yaml")
            .env("KEDGE_JOBS", "jobs")
            .arg("validate");
        match store {
            Some(url) => c.env("KEDGE_STORE_URL", url),
            None => c.env_remove("KEDGE_STORE_URL"),
        };
        c.output().expect("run kedge")
    };
    let ok = validate(Some("postgres://kedge@db/kedge"));
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    let missing = validate(None);
    assert_eq!(missing.status.code(), Some(2));
    let stderr = text(&missing.stderr);
    assert!(
        stderr.contains("config/kubernetes.yaml") && stderr.contains("KEDGE_STORE_URL"),
        "{stderr}"
    );
}

#[test]
fn plan_lists_the_good_jobs_and_reports_the_bad_file() {
    let ws = workspace_with(&[corpus_dir().join("cron_out_of_range.yaml")]);
    ws.write_job(
        "hourly",
        r#"name: hourly
trigger:
  cron: "0 * * * *"
template:
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: main
          command: ["true"]
"#,
    );
    let out = kedge(
        &ws,
        &["plan", "--from", "2026-03-27T00:30:00Z", "--count", "2"],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout,
        "hourly (UTC)\n  2026-03-27T01:00:00Z\n  2026-03-27T02:00:00Z\n"
    );
    let expected = std::fs::read_to_string(corpus_dir().join("cron_out_of_range.yaml.expected"))
        .expect("expected file");
    assert_eq!(stderr, expected);
}

#[test]
fn daemon_config_problems_are_reported_the_same_way() {
    let ws = Workspace::new();
    ws.write_config(
        "# The store URL comes from the environment in production.\n\
         jobs_dir: jobs\n\
         store:\n  url_env: KEDGE_TEST_SURELY_UNSET_VAR\n  poll_interval: 200ms\n\
         limits:\n  max_active_runs: 0\n\
         shutdown_timeout: forever\n",
    );
    let out = kedge(&ws, &["validate"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "config/kedge.yaml:4:3: store.url_env: environment variable KEDGE_TEST_SURELY_UNSET_VAR is not set\n\
         config/kedge.yaml:7:3: limits.max_active_runs: must be at least 1 (0 would never run anything)\n\
         config/kedge.yaml:8:1: shutdown_timeout: \"forever\" is not a duration (examples: 500ms, 30s, 15m, 1h30m)\n"
    );

    // A shape error (here an unknown field and a unit-less duration) is
    // reported with its field and position too.
    ws.write_config("jobs_dir: jobs\nstore:\n  pol_interval: 200ms\nshutdown_timeout: 30\n");
    let out = kedge(&ws, &["validate"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "config/kedge.yaml:3:3: store.pol_interval: unknown field `pol_interval`\n\
         config/kedge.yaml:4:1: shutdown_timeout: invalid type: integer `30`, expected a duration with a unit, such as 30s, 15m or 1h30m\n"
    );
}
