//! The `kedge` command line: parsing and printing only. Each command group
//! has one file; the work itself is done by the module that owns it.
//!
//! - `run` — `kedge run`: load and validate, build the executor (the
//!   Kubernetes one elected on a Lease, [`crate::executor::kubernetes::elect`]),
//!   run the [`crate::daemon`] until a signal.
//! - `validate` — `kedge validate`.
//! - `plan` — `kedge plan` (next fires, or a sizing decision from
//!   [`crate::dispatcher::sizing::preview`]) and `kedge render`
//!   ([`crate::dispatcher::preview`]).
//! - `queue` — `kedge enqueue` ([`crate::intake::destination`]: to the
//!   job's broker or the store) and `kedge trigger`.
//! - `runs` — `kedge runs` and `kedge fires`: the store's records.
//! - `dlq` — `kedge dlq list | replay` ([`crate::finalizer::replay`]).
//! - `operator` — `kedge pause | resume | hold | release | ice | unice |
//!   backfill | rerun | audit` ([`crate::operator`]).
//! - `import` — `kedge import cronjob | keda | autosys` ([`crate::import`]).
//! - `migrate` — `kedge migrate`.
//! - `schema` — `kedge schema` ([`crate::config::schema`]).
//! - `prune` — `kedge prune [--dry-run]` ([`crate::retention`]).
//! - `calendar` — `kedge calendar show` ([`crate::config::calendar`]).
//! - `cluster` — `--kubeconfig` / `--namespace`, shared by run and render.
//!
//! Exit codes: 0 success; 1 a runtime failure (store unreachable, I/O);
//! 2 bad input (invalid definitions, unknown job, bad `--data`, bad flags).

mod calendar;
mod cluster;
mod dlq;
mod graph;
mod import;
mod migrate;
mod operator;
mod plan;
mod prune;
mod queue;
mod run;
mod runs;
mod schema;
mod validate;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Parser, Subcommand};

use crate::config::{self, Diagnostics, Job, Sources};
use crate::operator::Action;
use crate::store::{self, Store};

pub use cluster::ClusterArgs;
pub use dlq::DlqCommand;

const ABOUT: &str = "kedge turns events into Kubernetes Jobs.

It watches cron calendars and queues, creates one Job per fire or message,
tracks it to completion, retries or dead-letters it, and keeps every decision
in a state store. Without flags it uses the embedded setup: the local executor
(jobs run as processes on this machine), SQLite in .kedge/, and the job
definitions in jobs/.";

#[derive(Debug, Parser)]
#[command(name = "kedge", version, about = ABOUT, long_about = ABOUT)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// Daemon config file [default: config/kedge.yaml if present, else the embedded default]
    #[arg(long, global = true, env = "KEDGE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory of job definitions (*.yaml) [default: the config's jobs_dir, jobs/]
    #[arg(long, global = true, env = "KEDGE_JOBS", value_name = "DIR")]
    pub jobs: Option<PathBuf>,
    /// State store URL: sqlite://PATH, sqlite::memory: or postgres://USER@HOST/DB [default: the config's store]
    #[arg(long, global = true, env = "KEDGE_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// Directory of business calendars (*.yaml, one calendar each) [default: the config's calendars_dir, calendars/]
    #[arg(long, global = true, env = "KEDGE_CALENDARS", value_name = "DIR")]
    pub calendars: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: fire cron jobs, take queued messages, launch and track runs.
    ///
    /// Stops gracefully on SIGINT or SIGTERM: running processes are stopped
    /// and their runs go back to pending, to be launched again at the next start.
    ///
    /// With --executor kubernetes, each run is a Kubernetes Job; replicas
    /// elect one leader through a Lease and only the leader launches, and a
    /// graceful stop lets running Jobs run on for the next leader to adopt.
    Run(run::RunArgs),
    /// Print the Kubernetes objects a run of a job would create, as
    /// multi-document YAML (the payload ConfigMap, if any, then the Job).
    ///
    /// A cron job's run is its fire at --at; a queue job's run is one
    /// message, --payload. A sized job is sized as `kedge plan --at` would.
    Render(plan::RenderArgs),
    /// Check the config and every job definition; print each problem as path:line:column: field: message.
    Validate,
    /// Show the next cron fires of each job (UTC), or with --to a forecast
    /// of one job, or with --at the sizing decision for a run of a sized job
    /// at that time.
    ///
    /// Fires follow the job's calendar rules (calendar, exclude_calendar,
    /// business_days, shift, blackout). With --job J --from A --to B the
    /// forecast lists every fire in [A, B), run, deferred or skipped, with
    /// the rule that placed it ("cron 30 2 * * * on bank working day",
    /// "shifted next from 2026-12-25 (holiday)", "business day -1 of 2026-12").
    ///
    /// With --at the output (--json) is {"job", "work", "rate_per_pod",
    /// "overhead_s", "parallelism", "completions", "deadline",
    /// "projected_finish", "at_risk", …}: the work (measured by the job's
    /// probe unless --work is given), the rate model learned from the job's
    /// history in the store, and the smallest parallelism that finishes
    /// before the window's deadline with the margin to spare.
    Plan(plan::PlanArgs),
    /// Put a message on a queue job's queue.
    ///
    /// The message is the --data value, the contents of --data @FILE, or
    /// standard input. Jobs with payload.format: json (the default) only take JSON.
    /// A builtin-queue job's message is stored in kedge's store; a broker
    /// job's (redis_list, redis_stream, rabbitmq, postgres) is published to
    /// its broker, where the daemon claims it like any producer's.
    Enqueue(queue::EnqueueArgs),
    /// Start a run of a job now, outside its schedule.
    Trigger {
        /// The job
        job: String,
    },
    /// List runs (one row per attempt), newest first.
    ///
    /// Jobs an operator paused, held or iced are named above the table,
    /// with who, since when and why (`job_state` on each run with --json).
    Runs(runs::RunsArgs),
    /// Print the jobs' dependency graph (`trigger.after`), upstreams first.
    ///
    /// Text: one line per job, `job ← its after expression`. Dot: Graphviz
    /// (`kedge graph --format dot | dot -Tsvg > graph.svg`), an edge from
    /// each upstream to the job waiting for it, labelled with the conditions.
    Graph(graph::GraphArgs),
    /// Business calendars (calendars/*.yaml): `kedge calendar show NAME`.
    Calendar {
        #[command(subcommand)]
        command: calendar::CalendarCommand,
    },
    /// Show a cron job's recorded fires and what kedge decided about each
    /// (launched, skipped by the overlap policy, a blackout or because the
    /// job was paused, held or iced, missed by the catch-up policy,
    /// replaced); a shifted or deferred fire says why.
    Fires(runs::FiresArgs),
    /// Inspect and replay dead letters (work that failed every attempt).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Pause a job: nothing new of it launches until kedge resume.
    ///
    /// Running runs run to the end. A queue job's messages wait in the
    /// store; a cron fire during the pause is recorded `skipped: paused`
    /// (see kedge fires). The state survives restarts and shows in kedge
    /// runs, /healthz and the metrics. Recorded in the audit log with the
    /// OS user and --reason. A running daemon sees it within milliseconds.
    Pause(operator::ControlArgs),
    /// Resume a paused job; the fires skipped while paused are caught up as
    /// the job's catchup says.
    ///
    /// catchup: none runs none of them, latest the newest, all every one
    /// (oldest first); none older than starting_deadline runs. Runs that
    /// waited in the store launch.
    Resume(operator::ControlArgs),
    /// Put a job on hold (AutoSys ON_HOLD): it does not run, and the jobs
    /// that depend on it wait.
    ///
    /// Cron fires are recorded `skipped: held`; waiting runs stay in the store.
    Hold(operator::ControlArgs),
    /// Release a held job: it runs at once if its condition holds.
    ///
    /// For a cron job: when a fire came while it was held, the newest such
    /// fire runs now (once, whatever its age). Runs that waited launch.
    Release(operator::ControlArgs),
    /// Put a job on ice (AutoSys ON_ICE): it does not run, and the jobs that
    /// depend on it treat it as succeeded.
    ///
    /// Cron fires are recorded `skipped: iced` and are never caught up.
    Ice(operator::ControlArgs),
    /// Take a job off ice: it waits for its next occurrence (fires skipped
    /// while iced do not run).
    Unice(operator::ControlArgs),
    /// Create the fires a cron job would have had in [--from, --to) and run them.
    ///
    /// Idempotent: a fire already recorded (run, or running) is not created
    /// again, so running the same backfill twice creates nothing new; fires
    /// the scheduler skipped or missed are created. --rerun failed also runs
    /// fires whose work ended dead or cancelled again, --rerun all every
    /// finished one, each as a new attempt. The fires are written in one
    /// transaction: an interrupted backfill wrote nothing and can be run
    /// again. At most --max-active of its runs run at once, enforced by the
    /// daemon's dispatcher across restarts.
    Backfill(operator::BackfillArgs),
    /// Run a finished run's work again as a new attempt (same work item and
    /// payload, a fresh retry budget).
    ///
    /// Refused while the run, or a newer attempt of the same work, is
    /// pending or running. Its open dead letter, if any, is closed.
    Rerun(operator::RerunArgs),
    /// List operator actions (pause, resume, hold, release, ice, unice,
    /// backfill, rerun): when, who, what, on which job or run, and why.
    Audit(operator::AuditArgs),
    /// Convert Kubernetes CronJobs, KEDA ScaledJobs or AutoSys JIL jobs into kedge job files.
    ///
    /// Writes one job file per imported object into --out (never over an
    /// existing file without --force) and prints a report: for every input
    /// document what was mapped, each field that could not be and why, and
    /// what to do after loading. Check the files with `kedge validate --jobs DIR`.
    Import {
        #[command(subcommand)]
        command: import::ImportCommand,
    },
    /// Apply the store's migrations and exit (kedge run also applies them).
    Migrate,
    /// Print the JSON Schema of a job definition, the daemon config or a calendar.
    ///
    /// The schemas are derived from the types kedge's parser reads, and are
    /// checked in as deploy/schema/job.schema.json, config.schema.json and
    /// calendar.schema.json.
    /// Editors with YAML language support (yaml-language-server: VS Code's
    /// YAML extension, Neovim, Helix, JetBrains) complete and check a file
    /// whose first line names its schema, as
    /// `# yaml-language-server: $schema=../deploy/schema/job.schema.json`.
    ///
    /// A schema checks field names, types and values; `kedge validate`
    /// checks everything else (cron expressions, time zones, environment
    /// variables) and is the final word.
    Schema(schema::SchemaArgs),
    /// Delete finished history now, as the daemon does every retention.interval.
    ///
    /// Finished work items (succeeded, cancelled, dead) older than
    /// retention.history (default 30d) are deleted with their runs, batch
    /// members, cron fires and dead letters, and the local executor's run
    /// folders with their runs; dead letters replayed or forwarded to their
    /// broker go after retention.history too. Payloads of succeeded work are
    /// cleared after retention.payloads (default 7d). Never pruned: pending
    /// or running runs, queued work, open (unreplayed, unforwarded) dead
    /// letters, a batch while any member must stay, each cron job's latest
    /// fire.
    ///
    /// A message redelivered after its work item was pruned is accepted as
    /// new: retention.history is the dedup window.
    ///
    /// Prints the rows deleted or cleared per table (--dry-run: what would
    /// be, changing nothing). Safe while the daemon runs: it works in small
    /// transactions.
    Prune(prune::PruneArgs),
}

/// A failure with its exit code.
#[derive(Debug)]
pub enum Failure {
    /// Bad input: exit 2.
    Input(String),
    /// Runtime failure: exit 1.
    Runtime(anyhow::Error),
}

impl Failure {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Input(_) => 2,
            Failure::Runtime(_) => 1,
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

impl From<Diagnostics> for Failure {
    fn from(d: Diagnostics) -> Self {
        Failure::Input(d.to_string().trim_end().to_string())
    }
}

/// Runs a parsed command line; returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kedge: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            match &f {
                Failure::Input(msg) => eprintln!("{msg}"),
                Failure::Runtime(e) => eprintln!("kedge: {e:#}"),
            }
            ExitCode::from(f.exit_code())
        }
    }
}

/// Hands each command to its file.
async fn execute(cli: Cli) -> Result<(), Failure> {
    let src = sources(&cli.global);
    match cli.command {
        Command::Run(args) => run::run(&src, args).await,
        Command::Render(args) => plan::render(&src, args).await,
        Command::Validate => validate::validate(&src),
        Command::Plan(args) => plan::plan(&src, args).await,
        Command::Enqueue(args) => queue::enqueue(&src, args).await,
        Command::Trigger { job } => queue::trigger(&src, &job).await,
        Command::Runs(args) => runs::runs(&src, args).await,
        Command::Fires(args) => runs::fires(&src, args).await,
        Command::Calendar { command } => calendar::calendar(&src, command),
        Command::Graph(args) => graph::graph(&src, args),
        Command::Dlq { command } => dlq::dlq(&src, command).await,
        Command::Pause(args) => operator::change(&src, Action::Pause, args).await,
        Command::Resume(args) => operator::change(&src, Action::Resume, args).await,
        Command::Hold(args) => operator::change(&src, Action::Hold, args).await,
        Command::Release(args) => operator::change(&src, Action::Release, args).await,
        Command::Ice(args) => operator::change(&src, Action::Ice, args).await,
        Command::Unice(args) => operator::change(&src, Action::Unice, args).await,
        Command::Backfill(args) => operator::backfill(&src, args).await,
        Command::Rerun(args) => operator::rerun(&src, args).await,
        Command::Audit(args) => operator::audit(&src, args).await,
        Command::Import { command } => import::import(command),
        Command::Migrate => migrate::migrate(&src).await,
        Command::Schema(args) => schema::schema(args),
        Command::Prune(args) => prune::prune(&src, args).await,
    }
}

fn sources(g: &GlobalArgs) -> Sources {
    Sources {
        config: g.config.clone(),
        jobs: g.jobs.clone(),
        store: g.store.clone(),
        calendars: g.calendars.clone(),
    }
}

/// Connects to the store at `url` and brings its schema up to date.
async fn open_store(url: &str) -> Result<Store, Failure> {
    let store = Store::connect(url).await.map_err(|e| match e {
        store::StoreError::UnsupportedUrl(_) => Failure::Input(format!("--store: {e}")),
        e => Failure::Runtime(anyhow::Error::new(e)),
    })?;
    store
        .migrate()
        .await
        .with_context(|| format!("migrating the store at {}", crate::redact::redact(url)))?;
    Ok(store)
}

/// Loads the one job `name` from the jobs directory, with its own problems
/// (not other files') when it is invalid.
fn one_job(cfg: &config::DaemonConfig, name: &str) -> Result<Job, Failure> {
    let (jobs, problems) = config::load_jobs(cfg);
    if let Some(j) = jobs.into_iter().find(|j| j.name == name) {
        return Ok(j);
    }
    let mentions: Vec<String> = problems
        .0
        .iter()
        .filter(|d| {
            d.file
                .as_ref()
                .and_then(|f| f.file_stem())
                .is_some_and(|s| s == name)
        })
        .map(|d| d.to_string())
        .collect();
    if !mentions.is_empty() {
        return Err(Failure::Input(format!(
            "job {name} is invalid:\n{}",
            mentions.join("\n")
        )));
    }
    let (jobs, _) = config::load_jobs(cfg);
    let names: Vec<String> = jobs.into_iter().map(|j| j.name).collect();
    Err(Failure::Input(format!(
        "unknown job {name:?} in {} (defined: {})",
        cfg.jobs_dir.display(),
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    )))
}

/// A message given on the command line: the text, `@FILE`'s contents, or
/// (when `None`) standard input.
fn read_data(data: Option<String>) -> Result<Vec<u8>, Failure> {
    match data {
        Some(d) if d.starts_with('@') => {
            let path = &d[1..];
            std::fs::read(path)
                .map_err(|e| Failure::Input(format!("--data @{path}: cannot read: {e}")))
        }
        Some(d) => Ok(d.into_bytes()),
        None => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).map_err(|e| {
                Failure::Input(format!("cannot read the message from standard input: {e}"))
            })?;
            Ok(buf)
        }
    }
}

/// A time as printed: RFC 3339 in UTC, `Z`, fractions only when present.
fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A stored time (Unix milliseconds) as printed; `None` for `None`, and
/// for a time outside chrono's range (never one kedge's clock wrote).
fn ms_to_rfc3339(ms: Option<i64>) -> Option<String> {
    ms.and_then(DateTime::<Utc>::from_timestamp_millis)
        .map(rfc3339)
}

/// Reads `flag`'s value `s` as an RFC 3339 time.
fn parse_time(flag: &str, s: &str) -> Result<DateTime<Utc>, Failure> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .map_err(|e| Failure::Input(format!("{flag}: {s:?} is not an RFC 3339 time ({e})")))
}

/// A JSON value as printed by `--json` (pretty).
fn pretty_json<T: serde::Serialize>(v: &T) -> Result<String, Failure> {
    Ok(serde_json::to_string_pretty(v).map_err(anyhow::Error::from)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `kedge ARGS`.
    pub(super) fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kedge").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_before_or_after_the_command() {
        let cli = parse(&["--store", "sqlite::memory:", "validate", "--jobs", "j"]).unwrap();
        assert_eq!(cli.global.store.as_deref(), Some("sqlite::memory:"));
        assert_eq!(cli.global.jobs, Some(PathBuf::from("j")));
        assert!(matches!(cli.command, Command::Validate));
        let src = sources(&cli.global);
        assert_eq!(src.store.as_deref(), Some("sqlite::memory:"));
    }

    #[test]
    fn usage_errors_are_clap_errors() {
        use clap::error::ErrorKind;
        let kind = |args: &[&str]| parse(args).unwrap_err().kind();
        assert_eq!(
            kind(&[]),
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        );
        assert_eq!(kind(&["launch"]), ErrorKind::InvalidSubcommand);
        assert_eq!(kind(&["validate", "--verbose"]), ErrorKind::UnknownArgument);
        assert_eq!(kind(&["trigger"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(kind(&["migrate", "extra"]), ErrorKind::UnknownArgument);
        // Usage errors exit 2, like bad input.
        assert_eq!(parse(&["launch"]).unwrap_err().exit_code(), 2);
        assert_eq!(Failure::Input(String::new()).exit_code(), 2);
        assert_eq!(Failure::Runtime(anyhow::anyhow!("x")).exit_code(), 1);
    }

    #[test]
    fn schema_takes_a_kind_or_a_directory() {
        use crate::config::schema::SchemaKind;
        use clap::error::ErrorKind;
        let Command::Schema(args) = parse(&["schema", "job"]).unwrap().command else {
            panic!("not schema")
        };
        assert_eq!(
            format!("{args:?}"),
            "SchemaArgs { kind: Some(Job), write: None }"
        );
        assert!(parse(&["schema", "--write", "d"]).is_ok());
        let kind = |args: &[&str]| parse(args).unwrap_err().kind();
        assert_eq!(kind(&["schema"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(kind(&["schema", "calender"]), ErrorKind::InvalidValue);
        assert!(parse(&["schema", "calendar"]).is_ok());
        assert_eq!(
            kind(&["schema", "job", "--write", "d"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(SchemaKind::ALL.len(), 3);
    }

    #[test]
    fn trigger_takes_the_job_by_position() {
        let cli = parse(&["trigger", "nightly"]).unwrap();
        assert!(matches!(cli.command, Command::Trigger { job } if job == "nightly"));
    }

    #[test]
    fn times_print_in_utc_and_parse_from_rfc3339() {
        let t = parse_time("--at", "2026-03-27T01:00:00+01:00").unwrap();
        assert_eq!(rfc3339(t), "2026-03-27T00:00:00Z");
        assert_eq!(
            ms_to_rfc3339(Some(1500)).as_deref(),
            Some("1970-01-01T00:00:01.500Z")
        );
        assert_eq!(ms_to_rfc3339(None), None);
        let Err(Failure::Input(msg)) = parse_time("--from", "tomorrow") else {
            panic!("not an input error")
        };
        assert!(
            msg.starts_with("--from: \"tomorrow\" is not an RFC 3339 time"),
            "{msg}"
        );
    }

    #[test]
    fn data_is_text_or_a_file() {
        assert_eq!(read_data(Some("{}".into())).unwrap(), b"{}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.json");
        std::fs::write(&file, "[1]").unwrap();
        assert_eq!(
            read_data(Some(format!("@{}", file.display()))).unwrap(),
            b"[1]"
        );
        let Err(Failure::Input(msg)) = read_data(Some("@/nonexistent/m.json".into())) else {
            panic!("not an input error")
        };
        assert!(
            msg.starts_with("--data @/nonexistent/m.json: cannot read:"),
            "{msg}"
        );
    }
}
