//! The `kedge` command line.
//!
//! Exit codes: 0 success; 1 a runtime failure (store unreachable, I/O);
//! 2 bad input (invalid definitions, unknown job, bad `--data`, bad flags).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Diagnostics, Job, LogFormat, Sources};
use crate::executor::LocalExecutor;
use crate::intake::{self, Accepted, IntakeError};
use crate::lifecycle::RunState;
use crate::store::{self, Store};

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
    Run {
        /// Log format [default: the config's log_format, pretty]
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
        /// Where runs run [default: the config's executor.kind, local]
        #[arg(long, value_enum)]
        executor: Option<config::ExecutorKind>,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Print the Kubernetes objects a run of a job would create, as
    /// multi-document YAML (the payload ConfigMap, if any, then the Job).
    ///
    /// A cron job's run is its fire at --at; a queue job's run is one
    /// message, --payload. A sized job is sized as `kedge plan --at` would.
    Render {
        /// The job
        #[arg(long)]
        job: String,
        /// The run's time (RFC 3339) [default: now]
        #[arg(long, value_name = "RFC3339")]
        at: Option<String>,
        /// A queue job's message: JSON text, or @FILE [default: {}]
        #[arg(long, value_name = "JSON")]
        payload: Option<String>,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Check the config and every job definition; print each problem as path:line:column: field: message.
    Validate,
    /// Show the next cron fires of each job (UTC), or with --at, the sizing
    /// decision for a run of a sized job at that time.
    ///
    /// With --at the output (--json) is {"job", "work", "rate_per_pod",
    /// "overhead_s", "parallelism", "completions", "deadline",
    /// "projected_finish", "at_risk", …}: the work (measured by the job's
    /// probe unless --work is given), the rate model learned from the job's
    /// history in the store, and the smallest parallelism that finishes
    /// before the window's deadline with the margin to spare.
    Plan {
        /// Only this job
        #[arg(long)]
        job: Option<String>,
        /// Start from this time instead of now (RFC 3339, e.g. 2026-03-27T00:00:00Z)
        #[arg(long, value_name = "RFC3339")]
        from: Option<String>,
        /// Fires per job
        #[arg(long, default_value_t = 5)]
        count: usize,
        /// Print JSON: an array of {"job", "timezone", "fires": [...]}, or with --at the decision
        #[arg(long)]
        json: bool,
        /// Size a run of --job starting at this time (RFC 3339)
        #[arg(long, value_name = "RFC3339", requires = "job")]
        at: Option<String>,
        /// With --at: the work, instead of running the job's probe
        #[arg(long, requires = "at")]
        work: Option<f64>,
    },
    /// Put a message on a queue job's queue.
    ///
    /// The message is the --data value, the contents of --data @FILE, or
    /// standard input. Jobs with payload.format: json (the default) only take JSON.
    /// A builtin-queue job's message is stored in kedge's store; a broker
    /// job's (redis_list, redis_stream, rabbitmq, postgres) is published to
    /// its broker, where the daemon claims it like any producer's.
    Enqueue {
        /// The job (a queue job)
        job: String,
        /// The message: JSON text, or @FILE to read it from a file
        #[arg(long)]
        data: Option<String>,
        /// Message id; enqueueing the same id twice stores it once [default: a new id]
        #[arg(long)]
        id: Option<String>,
    },
    /// Start a run of a job now, outside its schedule.
    Trigger {
        /// The job
        job: String,
    },
    /// List runs (one row per attempt), newest first.
    Runs {
        /// Only this job
        #[arg(long)]
        job: Option<String>,
        /// Only runs in this state
        #[arg(long, value_enum)]
        state: Option<RunState>,
        /// At most this many
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// Print a JSON array
        #[arg(long)]
        json: bool,
    },
    /// Show a cron job's recorded fires and what kedge decided about each
    /// (launched, skipped by the overlap policy, missed by the catch-up policy, replaced).
    Fires {
        /// The cron job
        job: String,
        /// The latest this many
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print a JSON array
        #[arg(long)]
        json: bool,
    },
    /// Inspect and replay dead letters (work that failed every attempt).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Apply the store's migrations and exit (kedge run also applies them).
    Migrate,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, newest first.
    List {
        /// Only this job
        #[arg(long)]
        job: Option<String>,
        /// Include letters already replayed
        #[arg(long)]
        all: bool,
        /// At most this many
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Print a JSON array
        #[arg(long)]
        json: bool,
    },
    /// Return dead letters to their queue with a fresh retry budget.
    Replay {
        /// Dead letter ids (from `kedge dlq list`)
        ids: Vec<String>,
        /// Replay every open dead letter (of --job, if given)
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// With --all: only this job
        #[arg(long)]
        job: Option<String>,
    },
}

/// Where the Kubernetes executor connects to; both override the config.
#[derive(Debug, Args, Clone, Default)]
pub struct ClusterArgs {
    /// kubeconfig file [default: the config's, else KUBECONFIG, ~/.kube/config, in-cluster]
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of the Jobs [default: the config's, else the kubeconfig context's]
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,
}

impl ClusterArgs {
    /// The config's executor with these flags (and `kind`) applied.
    fn apply(
        &self,
        kind: Option<config::ExecutorKind>,
        executor: &mut config::ExecutorConfig,
    ) -> Result<(), Failure> {
        if kind == Some(config::ExecutorKind::Kubernetes) {
            if let config::ExecutorConfig::Local(_) = executor {
                *executor = config::ExecutorConfig::Kubernetes(Default::default());
            }
        }
        if kind == Some(config::ExecutorKind::Local) {
            if let config::ExecutorConfig::Kubernetes(_) = executor {
                *executor = config::ExecutorConfig::Local(Default::default());
            }
        }
        match executor {
            config::ExecutorConfig::Kubernetes(k) => {
                if let Some(path) = &self.kubeconfig {
                    k.kubeconfig = Some(path.clone());
                }
                if let Some(ns) = &self.namespace {
                    if !config::job::is_dns1123_label(ns) {
                        return Err(Failure::Input(format!(
                            "--namespace: \"{ns}\" is not a valid namespace name (lower-case letters, digits and '-', at most 63)"
                        )));
                    }
                    k.namespace = Some(ns.clone());
                }
                Ok(())
            }
            config::ExecutorConfig::Local(_)
                if self.kubeconfig.is_some() || self.namespace.is_some() =>
            {
                Err(Failure::Input(
                    "--kubeconfig and --namespace need the kubernetes executor (--executor kubernetes, or executor.kind: kubernetes in the config)".into(),
                ))
            }
            config::ExecutorConfig::Local(_) => Ok(()),
        }
    }
}

/// A failure with its exit code.
#[derive(Debug)]
pub enum Failure {
    /// Bad input: exit 2.
    Input(String),
    /// Runtime failure: exit 1.
    Runtime(anyhow::Error),
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
        Err(Failure::Input(msg)) => {
            eprintln!("{msg}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("kedge: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn sources(g: &GlobalArgs) -> Sources {
    Sources {
        config: g.config.clone(),
        jobs: g.jobs.clone(),
        store: g.store.clone(),
    }
}

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

async fn execute(cli: Cli) -> Result<(), Failure> {
    let src = sources(&cli.global);
    match cli.command {
        Command::Run {
            log_format,
            executor,
            cluster,
        } => run_daemon(&src, log_format, executor, &cluster).await,
        Command::Render {
            job,
            at,
            payload,
            cluster,
        } => render(&src, &job, at, payload, &cluster).await,
        Command::Validate => validate(&src),
        Command::Plan {
            job: Some(job),
            at: Some(at),
            work,
            json,
            ..
        } => plan_sizing(&src, &job, &at, work, json).await,
        Command::Plan {
            job,
            from,
            count,
            json,
            ..
        } => plan(&src, job, from, count, json),
        Command::Enqueue { job, data, id } => {
            let loaded = config::load_daemon(&src)?;
            let job = one_job(&loaded, &job)?;
            if job.cron().is_some() {
                return Err(Failure::Input(format!(
                    "job {} is triggered by cron and takes no messages; use `kedge trigger {}` to run it now",
                    job.name, job.name
                )));
            }
            let bytes = read_data(data)?;
            // A broker job's messages go into its broker, where the
            // daemon claims them like any other producer's.
            let broker = match &job.trigger {
                crate::config::job::Trigger::Queue(q) => {
                    crate::sources::AnySource::new(&q.source, "kedge-enqueue")
                        .map(|s| (s, q.source.name()))
                }
                _ => None,
            };
            if let Some((mut outbox, name)) = broker {
                use crate::sources::Outbox;
                intake::check_payload(&job.name, &job.payload, &bytes)
                    .map_err(|e| Failure::Input(format!("--data: {e}")))?;
                let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                outbox.replay(&id, &bytes).await.map_err(|e| {
                    Failure::Runtime(anyhow::anyhow!(
                        "cannot publish to {name}: {}",
                        crate::error_chain(&e)
                    ))
                })?;
                println!("published to {name}");
                return Ok(());
            }
            let store = open_store(&loaded.store_url).await?;
            match intake::enqueue(&store, &job, &bytes, id, None).await {
                Ok(Accepted::New { run_id }) => println!("enqueued: run {run_id}"),
                Ok(Accepted::Duplicate) => {
                    println!("already enqueued (same message id): nothing added")
                }
                Err(IntakeError::Store(e)) => return Err(Failure::Runtime(e.into())),
                Err(e) => return Err(Failure::Input(format!("--data: {e}"))),
            }
            store.close().await;
            Ok(())
        }
        Command::Trigger { job } => {
            let loaded = config::load_daemon(&src)?;
            let job = one_job(&loaded, &job)?;
            let store = open_store(&loaded.store_url).await?;
            match intake::trigger(&store, &job).await {
                Ok(Accepted::New { run_id }) => println!("triggered: run {run_id}"),
                Ok(Accepted::Duplicate) => println!("already triggered"),
                Err(e) => return Err(Failure::Runtime(e.into())),
            }
            store.close().await;
            Ok(())
        }
        Command::Runs {
            job,
            state,
            limit,
            json,
        } => {
            let loaded = config::load_daemon(&src)?;
            let store = open_store(&loaded.store_url).await?;
            let runs = store
                .list_runs(job.as_deref(), state, limit.max(0))
                .await
                .context("listing runs")?;
            let mut batches = std::collections::HashMap::new();
            if json {
                for r in &runs {
                    let members = store
                        .batch_members(&r.run_id)
                        .await
                        .context("listing batch members")?;
                    if !members.is_empty() {
                        batches.insert(r.run_id.clone(), members);
                    }
                }
            }
            store.close().await;
            print_runs(&runs, &batches, json);
            Ok(())
        }
        Command::Fires { job, limit, json } => {
            let loaded = config::load_daemon(&src)?;
            let store = open_store(&loaded.store_url).await?;
            let fires = store.cron_fires(&job).await.context("listing cron fires")?;
            store.close().await;
            let fires = &fires[fires.len().saturating_sub(limit)..];
            if json {
                let rows: Vec<serde_json::Value> = fires
                    .iter()
                    .map(|f| {
                        serde_json::json!({
                            "job": f.job,
                            "fire": ms_to_rfc3339(Some(f.fire_ms)),
                            "outcome": f.outcome,
                            "detail": f.detail,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                println!("{:<25} {:<9} DETAIL", "FIRE", "OUTCOME");
                for f in fires {
                    println!(
                        "{:<25} {:<9} {}",
                        ms_to_rfc3339(Some(f.fire_ms)).unwrap_or_default(),
                        f.outcome,
                        f.detail.as_deref().unwrap_or("")
                    );
                }
            }
            Ok(())
        }
        Command::Dlq { command } => dlq(&src, command).await,
        Command::Migrate => {
            let loaded = config::load_daemon(&src)?;
            let store = open_store(&loaded.store_url).await?;
            store.close().await;
            println!(
                "store at {} is up to date",
                crate::redact::redact(&loaded.store_url)
            );
            Ok(())
        }
    }
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

fn validate(src: &Sources) -> Result<(), Failure> {
    let loaded = config::load(src)?;
    if !loaded.job_problems.is_empty() {
        return Err(loaded.job_problems.into());
    }
    println!(
        "ok: {} job(s) in {}",
        loaded.jobs.len(),
        loaded.daemon.jobs_dir.display()
    );
    Ok(())
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn ms_to_rfc3339(ms: Option<i64>) -> Option<String> {
    ms.and_then(DateTime::<Utc>::from_timestamp_millis)
        .map(rfc3339)
}

fn parse_time(flag: &str, s: &str) -> Result<DateTime<Utc>, Failure> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .map_err(|e| Failure::Input(format!("{flag}: {s:?} is not an RFC 3339 time ({e})")))
}

async fn plan_sizing(
    src: &Sources,
    name: &str,
    at: &str,
    work: Option<f64>,
    json: bool,
) -> Result<(), Failure> {
    let loaded = config::load_daemon(src)?;
    let at = parse_time("--at", at)?;
    let job = one_job(&loaded, name)?;
    let (Some(cfg), Some(deadline)) = (&job.sizing, job.deadline_after(at)) else {
        return Err(Failure::Input(format!(
            "job {name} has no `sizing` and `window`: there is nothing to size"
        )));
    };
    if let Some(w) = work {
        if !(w.is_finite() && w >= 0.0) {
            return Err(Failure::Input(format!(
                "--work: {w} must be a number of 0 or more"
            )));
        }
    }
    let store = open_store(&loaded.store_url).await?;
    let measured = match work {
        Some(w) => crate::dispatcher::sizing::Measured::given(w),
        None => crate::dispatcher::sizing::measure_work(&store, &job, cfg)
            .await
            .context("measuring the work")?,
    };
    let model = crate::dispatcher::sizing::model(&store, &job, cfg)
        .await
        .context("reading the job's history")?;
    store.close().await;
    let max_pods = job.limits.max_pods.unwrap_or(u32::MAX);
    let d = crate::dispatcher::sizing::decide(&job, cfg, model, measured, at, deadline, max_pods);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&d).map_err(anyhow::Error::from)?
        );
    } else {
        println!("job              {}", d.job);
        println!("work             {} {}", d.work, d.unit);
        println!(
            "rate per pod     {:.3} {}/h ({})",
            d.rate_per_pod, d.unit, d.model
        );
        println!("overhead         {:.1}s", d.overhead_s);
        println!(
            "parallelism      {} (completions {})",
            d.parallelism, d.completions
        );
        println!("deadline         {}", d.deadline);
        println!("projected finish {}", d.projected_finish);
        println!("at risk          {}", d.at_risk);
        println!("why              {}", d.reason);
        if let Some(n) = &d.probe_note {
            println!("note             {n}");
        }
    }
    Ok(())
}

fn plan(
    src: &Sources,
    job: Option<String>,
    from: Option<String>,
    count: usize,
    json: bool,
) -> Result<(), Failure> {
    let loaded = config::load(src)?;
    let from = match from {
        None => Utc::now(),
        Some(s) => DateTime::parse_from_rfc3339(&s)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|e| Failure::Input(format!("--from: {s:?} is not an RFC 3339 time ({e})")))?,
    };
    if let Some(name) = &job {
        if !loaded.jobs.iter().any(|j| &j.name == name) {
            one_job(&loaded.daemon, name)?;
        }
    }
    let mut out = Vec::new();
    for j in &loaded.jobs {
        if job.as_ref().is_some_and(|n| n != &j.name) {
            continue;
        }
        let Some(c) = j.cron() else { continue };
        let fires: Vec<String> = c
            .schedule
            .upcoming(from, c.timezone, count)
            .into_iter()
            .map(rfc3339)
            .collect();
        out.push(serde_json::json!({
            "job": j.name,
            "timezone": c.timezone.name(),
            "fires": fires,
        }));
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(anyhow::Error::from)?
        );
    } else {
        for e in &out {
            println!(
                "{} ({})",
                e["job"].as_str().unwrap_or(""),
                e["timezone"].as_str().unwrap_or("")
            );
            for f in e["fires"].as_array().into_iter().flatten() {
                println!("  {}", f.as_str().unwrap_or(""));
            }
        }
        if !loaded.job_problems.is_empty() {
            eprint!("{}", loaded.job_problems);
        }
    }
    Ok(())
}

/// Prints runs; `batches` holds the members of the batch runs among them.
fn print_runs(
    runs: &[store::Run],
    batches: &std::collections::HashMap<String, Vec<store::BatchMember>>,
    json: bool,
) {
    if json {
        let rows: Vec<serde_json::Value> = runs
            .iter()
            .map(|r| {
                serde_json::json!({
                    "job": r.job,
                    "run_id": r.run_id,
                    "attempt": r.attempt,
                    "state": r.state,
                    "trigger": r.trigger,
                    "source": r.source,
                    "message_id": r.message_id,
                    "scheduled_at": ms_to_rfc3339(Some(r.scheduled_ms)),
                    "started_at": ms_to_rfc3339(r.started_ms),
                    "finished_at": ms_to_rfc3339(r.finished_ms),
                    "launches": r.launches,
                    "error": r.error,
                    "deadline": ms_to_rfc3339(r.deadline_ms),
                    "batch": batches.get(&r.run_id).map(|members| members.iter().map(|m| serde_json::json!({
                        "index": m.index,
                        "message_id": m.message_id,
                        "state": m.state,
                    })).collect::<Vec<_>>()),
                    "sizing": r.sizing.as_ref().map(|s| serde_json::json!({
                        "work": s.work,
                        "parallelism": s.parallelism,
                        "completions": s.completions,
                        "projected_finish": ms_to_rfc3339(Some(s.projected_finish_ms)),
                        "at_risk": s.at_risk,
                        "note": s.note,
                    })),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return;
    }
    println!(
        "{:<40} {:<24} {:>3} {:<10} {:<25} {:<25} ERROR",
        "RUN", "JOB", "TRY", "STATE", "SCHEDULED", "FINISHED"
    );
    for r in runs {
        println!(
            "{:<40} {:<24} {:>3} {:<10} {:<25} {:<25} {}",
            r.run_id,
            r.job,
            r.attempt,
            r.state,
            ms_to_rfc3339(Some(r.scheduled_ms)).unwrap_or_default(),
            ms_to_rfc3339(r.finished_ms).unwrap_or_else(|| "-".into()),
            r.error.as_deref().unwrap_or("")
        );
    }
}

/// Publishes a dead letter's message back into its broker source. The
/// work item is marked `replayed` first, so the source's delivery of it
/// revives the item rather than being dropped as a duplicate; if the
/// publish fails the item is dead again and the letter stays open.
async fn replay_to_source(
    store: &Store,
    outbox: &mut crate::sources::AnySource,
    d: &store::DeadLetter,
) -> Result<(), Failure> {
    use crate::sources::Outbox;
    let Some(letter) = store
        .begin_source_replay(&d.id, store.clock().now_ms())
        .await
        .context("replaying")?
    else {
        return Err(Failure::Input(format!(
            "dlq replay: dead letter {} was replayed meanwhile",
            d.id
        )));
    };
    let payload: Vec<u8> = match letter.payload.as_deref() {
        Some(p) => match p.strip_prefix("base64:") {
            Some(b) => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .unwrap_or_else(|_| p.as_bytes().to_vec())
            }
            None => p.as_bytes().to_vec(),
        },
        None => Vec::new(),
    };
    if let Err(e) = outbox.replay(&letter.message_id, &payload).await {
        let _ = store
            .abort_source_replay(&letter.work_item_id, store.clock().now_ms())
            .await;
        return Err(Failure::Runtime(anyhow::anyhow!(
            "dlq replay: cannot return {} to {}: {}",
            d.id,
            d.source,
            crate::error_chain(&e)
        )));
    }
    store
        .finish_source_replay(&d.id, store.clock().now_ms())
        .await
        .context("replaying")?;
    Ok(())
}

async fn dlq(src: &Sources, command: DlqCommand) -> Result<(), Failure> {
    let loaded = config::load_daemon(src)?;
    let store = open_store(&loaded.store_url).await?;
    let result = match command {
        DlqCommand::List {
            job,
            all,
            limit,
            json,
        } => {
            let letters = store
                .dead_letters(job.as_deref(), all, limit.max(0))
                .await
                .context("listing dead letters")?;
            if json {
                let rows: Vec<serde_json::Value> = letters
                    .iter()
                    .map(|d| {
                        serde_json::json!({
                            "id": d.id,
                            "job": d.job,
                            "source": d.source,
                            "message_id": d.message_id,
                            "payload": d.payload,
                            "reason": d.reason,
                            "attempts": d.attempts,
                            "last_error": d.last_error,
                            "created_at": ms_to_rfc3339(Some(d.created_ms)),
                            "replayed_at": ms_to_rfc3339(d.replayed_ms),
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                println!(
                    "{:<36} {:<24} {:<25} REASON / LAST ERROR",
                    "ID", "JOB", "DEAD SINCE"
                );
                for d in &letters {
                    println!(
                        "{:<36} {:<24} {:<25} {} / {}",
                        d.id,
                        d.job,
                        ms_to_rfc3339(Some(d.created_ms)).unwrap_or_default(),
                        d.reason,
                        d.last_error.as_deref().unwrap_or("")
                    );
                }
            }
            Ok(())
        }
        DlqCommand::Replay { ids, all, job } => {
            if ids.is_empty() && !all {
                return Err(Failure::Input(
                    "dlq replay: name dead letter ids, or --all".into(),
                ));
            }
            let letters = store
                .dead_letters(job.as_deref(), false, i64::MAX)
                .await
                .context("listing dead letters")?;
            let chosen: Vec<_> = if all {
                letters
            } else {
                let mut chosen = Vec::new();
                for id in &ids {
                    match letters.iter().find(|d| &d.id == id) {
                        Some(d) => chosen.push(d.clone()),
                        None => {
                            return Err(Failure::Input(format!(
                                "dlq replay: no open dead letter with id {id}"
                            )))
                        }
                    }
                }
                chosen
            };
            let (jobs, _) = config::load_jobs(&loaded);
            let mut replayed = 0;
            for d in chosen {
                // A broker message goes back into its broker (when the job
                // still reads from that source); everything else is queued
                // again in the store.
                let broker = jobs
                    .iter()
                    .find(|j| j.name == d.job)
                    .and_then(|j| match &j.trigger {
                        crate::config::job::Trigger::Queue(q) if q.source.name() == d.source => {
                            crate::sources::AnySource::new(&q.source, "kedge-dlq-replay")
                        }
                        _ => None,
                    });
                if let Some(mut outbox) = broker {
                    replay_to_source(&store, &mut outbox, &d).await?;
                    println!("replayed {} into {}", d.id, d.source);
                    replayed += 1;
                    continue;
                }
                let last = store
                    .last_attempt(&d.work_item_id)
                    .await
                    .context("reading attempts")?;
                let next = last + 1;
                let trigger = if d.source == "cron" {
                    crate::lifecycle::TriggerKind::Cron
                } else {
                    crate::lifecycle::TriggerKind::Queue
                };
                let run_id =
                    crate::lifecycle::attempt_run_name(&d.job, trigger, &d.message_id, next);
                if store
                    .replay_dead_letter(&d.id, &run_id, next, store.clock().now_ms())
                    .await
                    .context("replaying")?
                {
                    println!("replayed {} as run {run_id}", d.id);
                    replayed += 1;
                }
            }
            println!("{replayed} dead letter(s) replayed");
            Ok(())
        }
    };
    store.close().await;
    result
}

async fn run_daemon(
    src: &Sources,
    log_format: Option<LogFormat>,
    kind: Option<config::ExecutorKind>,
    cluster: &ClusterArgs,
) -> Result<(), Failure> {
    let mut daemon = config::load_daemon(src)?;
    // The executor decides what a valid job is (the local one needs
    // commands), so the flags apply before the jobs are read.
    cluster.apply(kind, &mut daemon.executor)?;
    let (jobs, job_problems) = config::load_jobs(&daemon);
    let loaded = config::Loaded {
        daemon,
        jobs,
        job_problems,
    };
    init_logging(log_format.unwrap_or(loaded.daemon.log_format));
    for d in &loaded.job_problems.0 {
        tracing::error!(problem = %d, "job definition rejected; the other jobs keep running");
    }
    let cfg = loaded.daemon.clone();
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received");
        signal.cancel();
    });
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    match &cfg.executor {
        config::ExecutorConfig::Local(local) => {
            let store = open_store(&cfg.store_url).await?;
            let instance = store
                .instance_id()
                .await
                .context("reading the store's instance id")?;
            let executor = LocalExecutor::new(local.clone(), instance, tx);
            serve(cfg, loaded.jobs, store, executor, rx, shutdown).await
        }
        config::ExecutorConfig::Kubernetes(k) => {
            use crate::executor::kubernetes::{self, lease::LeaderLease};
            let (client, namespace) = kubernetes::client(k).await.map_err(Failure::Runtime)?;
            let identity = kubernetes::identity(k);
            let lease = LeaderLease::new(
                client.clone(),
                &namespace,
                &k.lease_name,
                &identity,
                k.lease_duration,
            );
            tracing::info!(%namespace, %identity, lease = %k.lease_name, "waiting to lead (only the Lease holder launches)");
            if !lease.acquire(&shutdown).await {
                tracing::info!("stopped before becoming the leader");
                return Ok(());
            }
            // Losing the Lease stops this replica like a signal would; the
            // exit status then says so.
            let lost = CancellationToken::new();
            let holding = CancellationToken::new();
            let renew = {
                let (holding, lost) = (holding.clone(), lost.clone());
                tokio::spawn(async move { lease.hold(holding, lost).await })
            };
            let stop = shutdown.clone();
            let lost_watch = lost.clone();
            tokio::spawn(async move {
                lost_watch.cancelled().await;
                stop.cancel();
            });
            let store = open_store(&cfg.store_url).await?;
            let instance = store
                .instance_id()
                .await
                .context("reading the store's instance id")?;
            let executor = crate::executor::KubernetesExecutor::new(
                client,
                &namespace,
                k.clone(),
                instance,
                identity,
                tx,
            );
            let result = serve(cfg, loaded.jobs, store, executor, rx, shutdown).await;
            holding.cancel();
            let _ = renew.await;
            result?;
            if lost.is_cancelled() {
                return Err(Failure::Runtime(anyhow::anyhow!(
                    "lost the leader Lease; stopped launching (another replica leads now)"
                )));
            }
            Ok(())
        }
    }
}

/// Runs the daemon with one executor until `shutdown`.
async fn serve<E: crate::executor::Executor>(
    cfg: config::DaemonConfig,
    jobs: Vec<Job>,
    store: Store,
    executor: E,
    outcomes: tokio::sync::mpsc::Receiver<crate::executor::Outcome>,
    shutdown: CancellationToken,
) -> Result<(), Failure> {
    let count = jobs.len();
    let cron = jobs.iter().filter(|j| j.cron().is_some()).count();
    let store_url = crate::redact::redact(&cfg.store_url);
    let kind = cfg.executor.kind();
    let daemon = crate::daemon::Daemon {
        config: cfg,
        jobs,
        store,
        executor,
        outcomes,
    };
    daemon
        .run(shutdown, || {
            tracing::info!(jobs = count, cron, store = %store_url, executor = ?kind, "kedge ready");
        })
        .await
        .context("the daemon stopped on a store error")?;
    Ok(())
}

/// `kedge render`: the objects one run of `name` would create.
async fn render(
    src: &Sources,
    name: &str,
    at: Option<String>,
    payload: Option<String>,
    cluster: &ClusterArgs,
) -> Result<(), Failure> {
    use crate::executor::kubernetes::{self, objects};
    use crate::lifecycle::{attempt_run_name, TriggerKind};
    let mut loaded = config::load_daemon(src)?;
    cluster.apply(Some(config::ExecutorKind::Kubernetes), &mut loaded.executor)?;
    let config::ExecutorConfig::Kubernetes(k) = &loaded.executor else {
        unreachable!("apply() made it kubernetes");
    };
    let at = match at {
        Some(t) => parse_time("--at", &t)?,
        None => Utc::now(),
    };
    let job = one_job(&loaded, name)?;
    let (trigger, message_id, body) = match &job.trigger {
        config::Trigger::Cron(_) => {
            if payload.is_some() {
                return Err(Failure::Input(format!(
                    "--payload: job {name} is triggered by cron and takes no messages"
                )));
            }
            (TriggerKind::Cron, at.timestamp_millis().to_string(), None)
        }
        config::Trigger::Queue(_) => {
            let bytes = read_data(Some(payload.unwrap_or_else(|| "{}".into())))?;
            let body = intake::check_payload(&job.name, &job.payload, &bytes)
                .map_err(|e| Failure::Input(format!("--payload: {e}")))?;
            (
                TriggerKind::Queue,
                "rendered".to_string(),
                Some(body.to_string()),
            )
        }
    };
    let store = open_store(&loaded.store_url).await?;
    let instance = store
        .instance_id()
        .await
        .context("reading the store's instance id")?;
    let deadline = job.deadline_after(at);
    let run = store::Run {
        run_id: attempt_run_name(&job.name, trigger, &message_id, 1),
        work_item_id: String::new(),
        job: job.name.clone(),
        attempt: 1,
        state: crate::lifecycle::RunState::Pending,
        trigger,
        scheduled_ms: at.timestamp_millis(),
        started_ms: None,
        finished_ms: None,
        launches: 0,
        error: None,
        source: trigger.as_str().into(),
        message_id,
        payload: body.clone(),
        deadline_ms: deadline.map(|d| d.timestamp_millis()),
        attempt_base: 0,
        sizing: None,
    };
    let sized = match (&job.sizing, deadline) {
        (Some(cfg), Some(deadline)) => {
            let measured = crate::dispatcher::sizing::measure_work(&store, &job, cfg)
                .await
                .context("measuring the work")?;
            let model = crate::dispatcher::sizing::model(&store, &job, cfg)
                .await
                .context("reading the job's history")?;
            let max_pods = job.limits.max_pods.unwrap_or(u32::MAX);
            let d = crate::dispatcher::sizing::decide(
                &job, cfg, model, measured, at, deadline, max_pods,
            );
            Some(crate::dispatcher::sizing::apply(&job, &d, at))
        }
        _ => None,
    };
    store.close().await;
    let job = sized.as_ref().unwrap_or(&job);
    let batched = matches!(&job.trigger, config::Trigger::Queue(q) if q.batch.is_some());
    let launch = if batched {
        crate::executor::render::render_batch(job, &run, vec![body])
    } else {
        crate::executor::render(job, &run)
    };
    let placement = objects::Placement {
        namespace: k.namespace.clone().unwrap_or_else(|| "default".into()),
        instance,
        identity: kubernetes::identity(k),
        ttl_seconds_after_finished: k.ttl_seconds_after_finished.min(i32::MAX as u32) as i32,
    };
    let objs = objects::objects(&launch, &placement);
    let mut out = String::new();
    if let Some(cm) = &objs.config_map {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(cm).map_err(anyhow::Error::from)?);
    }
    out.push_str("---\n");
    out.push_str(&serde_saphyr::to_string(&objs.job).map_err(anyhow::Error::from)?);
    print!("{out}");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("KEDGE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
