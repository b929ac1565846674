//! The Kubernetes executor: Job create throughput, the client-side rate
//! limit, message → Job-create latency through the real daemon, the
//! daemon's memory while it tracks 10,000 Jobs, its CPU time per Job at a
//! fixed rate, and cron lateness with 1,000 schedules firing together. Ends
//! with one summary table of every figure issue 6 asks for, against its
//! goal.
//!
//! `cargo run --release --example k8s_bench [-- --jobs N --rounds R
//! --limited M --latency-messages L --tracked T --cron-jobs C --cpu-secs S
//! --kedge PATH]` (defaults: N = 2000, R = 3, M = 230, L = 500, T = 10000,
//! C = 1000, S = 15).
//!
//! Everything runs against kube-sim, the in-repo API server stand-in,
//! started in this process on loopback (on its own tokio runtime). Every
//! pass gets a fresh stand-in, so no pass pays for another's objects.
//!
//! 1. Create throughput (stand-in with `job_controller: false`, a bare API
//!    server, so no simulated controller competes for the CPU), R rounds:
//!    - baseline: a bare `kube::Client` loop POSTing N minimal Jobs (one
//!      busybox container) one after another;
//!    - the same loop POSTing the Jobs kedge renders (labels, annotations,
//!      `KEDGE_*` env), to separate object size from kedge's own work;
//!    - kedge: `KubernetesExecutor::launch` of N launches rendered with
//!      `kedge::executor::render` from a job loaded by kedge's config
//!      loader, one after another (as the dispatcher launches), with the
//!      rate limit effectively off;
//!    - the dispatcher's store work alone: `due_runs` + `claim_run` per run
//!      on a fresh SQLite store (no API calls).
//! 2. The rate limit: M launches with `api_qps: 20`, `api_burst: 30`
//!    (KEDA's operator default), against the ideal token bucket
//!    (burst + qps × elapsed Jobs in the elapsed time).
//! 3. Daemon drain: N messages stored before `kedge run` starts; Jobs/s from
//!    its first create to its last (create times recorded by the stand-in).
//! 4. Latency, message → Job create, L messages at 20/s: `target/<profile>/kedge
//!    run` (builtin queue, `poll_interval: 1s`, the default, as a backstop;
//!    rate limit at its defaults) with each message written to its store the
//!    way `kedge enqueue` does (`kedge::intake::enqueue`, which wakes the
//!    daemon through its socket), against a baseline task that
//!    receives each message on a channel and POSTs its Job at once. Both
//!    latencies are the stand-in's create-record time minus the send time,
//!    on this process's monotonic clock.
//! 5. Memory: the daemon (`limits.max_active_runs: 20000`, rate limit off)
//!    idle, then tracking T running Jobs: VmRSS and VmHWM from
//!    `/proc/PID/status`. The stand-in's Job controller is on here (the
//!    only pass where it is): every Job has a Running pod.
//! 6. CPU per Job at a fixed 20 Jobs/s for S seconds: the daemon as in 4,
//!    utime + stime from `/proc/PID/stat` from the first enqueue until the
//!    stand-in has every Job, divided by the Jobs; against the bare
//!    channel → POST loop of 4 run in a child process (this binary with
//!    `--bare-loop`, measuring itself with getrusage(RUSAGE_SELF) around
//!    the loop), so the stand-in's CPU, which is in this process, is in
//!    neither figure.
//! 7. Cron lateness: `kedge run` with C cron jobs (`*/10 * * * * *`,
//!    `overlap: allow`, rate limit off); for two fires, each run's Job
//!    create (the stand-in's record) − its fire, and its claim
//!    (`started_ms` − `scheduled_ms` from the store); against C tokio timers
//!    in this process set with `sleep_until` for the same wall-clock
//!    second, lateness = wake − target.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use chrono::Utc;
use k8s_openapi::api::batch::v1::Job as K8sJob;
use kedge::config::{Job, KubernetesConfig, Sources};
use kedge::executor::kubernetes::objects::{self, Placement};
use kedge::executor::{render, Executor, KubernetesExecutor, Launch, Outcome};
use kedge::intake::{self, Accepted};
use kedge::lifecycle::{run_name, RunKey, RunState, TriggerKind};
use kedge::store::{Run, Store};
use kube::api::{Api, PostParams};
use kube_sim::{KubeSim, SimConfig};
use tokio::sync::mpsc;

/// KEDA's operator default for its Kubernetes client (`--kube-api-qps`,
/// `--kube-api-burst`).
const KEDA_QPS: u32 = 20;
const KEDA_BURST: u32 = 30;
/// "Off": more than any pass can use.
const UNLIMITED: u32 = 1_000_000;
/// How long any one wait may take before the bench gives up.
const WAIT_LIMIT: Duration = Duration::from_secs(240);

struct Args {
    jobs: usize,
    rounds: usize,
    limited: usize,
    latency_messages: usize,
    rate: f64,
    tracked: usize,
    cron_jobs: usize,
    cpu_secs: f64,
    kedge: Option<PathBuf>,
}

fn args() -> Result<Args> {
    let mut a = Args {
        jobs: 2000,
        rounds: 3,
        limited: 230,
        latency_messages: 500,
        rate: 20.0,
        tracked: 10_000,
        cron_jobs: 1000,
        cpu_secs: 15.0,
        kedge: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--jobs" => a.jobs = value()?.parse().context("--jobs")?,
            "--rounds" => a.rounds = value()?.parse().context("--rounds")?,
            "--limited" => a.limited = value()?.parse().context("--limited")?,
            "--latency-messages" => {
                a.latency_messages = value()?.parse().context("--latency-messages")?
            }
            "--rate" => a.rate = value()?.parse().context("--rate")?,
            "--tracked" => a.tracked = value()?.parse().context("--tracked")?,
            "--cron-jobs" => a.cron_jobs = value()?.parse().context("--cron-jobs")?,
            "--cpu-secs" => a.cpu_secs = value()?.parse().context("--cpu-secs")?,
            "--kedge" => a.kedge = Some(PathBuf::from(value()?)),
            other => bail!(
                "unknown argument {other:?} (use --jobs, --rounds, --limited, --latency-messages, --rate, --tracked, --cron-jobs, --cpu-secs, --kedge)"
            ),
        }
    }
    ensure!(
        a.jobs > 0
            && a.rounds > 0
            && a.limited > 0
            && a.latency_messages > 0
            && a.tracked > 0
            && a.cron_jobs > 0
            && a.cpu_secs > 0.0
            && a.rate > 0.0,
        "counts and the rate must be positive"
    );
    Ok(a)
}

#[tokio::main]
async fn main() -> Result<()> {
    // The CPU pass's baseline runs the bare loop in a child: this binary
    // again, with `--bare-loop KUBECONFIG COUNT RATE`.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--bare-loop") {
        ensure!(argv.len() == 5, "--bare-loop KUBECONFIG COUNT RATE");
        return bare_loop_child(Path::new(&argv[2]), argv[3].parse()?, argv[4].parse()?).await;
    }
    let args = args()?;
    let kedge_bin = match &args.kedge {
        Some(p) => p.clone(),
        None => build_kedge()?,
    };
    let started = Instant::now();
    let n = args.jobs;
    let job_bytes = job_sizes().await?;
    eprintln!(
        "k8s_bench: {n} Jobs per throughput pass, {} rounds; minimal Job {} bytes, kedge's {} bytes of JSON",
        args.rounds, job_bytes.0, job_bytes.1
    );

    // 1. Create throughput, interleaved rounds.
    let (mut base, mut base_rendered, mut exec, mut store_only) = (vec![], vec![], vec![], vec![]);
    for round in 1..=args.rounds {
        base.push(baseline_creates(n, false).await?);
        base_rendered.push(baseline_creates(n, true).await?);
        exec.push(executor_creates(n, UNLIMITED, UNLIMITED).await?.rate);
        store_only.push(store_claims(n).await?);
        eprintln!(
            "round {round}: baseline {:.0}/s, baseline with kedge's Jobs {:.0}/s, executor {:.0}/s, store only {:.0}/s",
            base[round - 1],
            base_rendered[round - 1],
            exec[round - 1],
            store_only[round - 1]
        );
    }
    let (base, base_rendered, exec, store_only) = (
        median(&base),
        median(&base_rendered),
        median(&exec),
        median(&store_only),
    );

    // 2. The rate limit.
    let limited = executor_creates(args.limited, KEDA_QPS, KEDA_BURST).await?;
    let secs = limited.took.as_secs_f64();
    let ideal = (KEDA_BURST as f64 + KEDA_QPS as f64 * secs) / secs;
    eprintln!(
        "rate-limited: {} launches in {secs:.2} s = {:.1}/s, ideal bucket {ideal:.1}/s",
        args.limited, limited.rate
    );

    // 3. Daemon drain.
    let drain = daemon_drain(&kedge_bin, n).await?;
    eprintln!("daemon drain: {drain:.0} Jobs/s");

    // 4. Latency.
    let lat_base = baseline_latency(args.latency_messages, args.rate).await?;
    eprintln!("baseline latency: {lat_base:?}");
    let lat_kedge = daemon_latency(&kedge_bin, args.latency_messages, args.rate).await?;
    eprintln!("daemon latency: {lat_kedge:?}");

    // 6. CPU per Job at a fixed rate.
    let cpu_jobs = (args.cpu_secs * args.rate).round() as usize;
    let cpu_base = baseline_cpu(cpu_jobs, args.rate).await?;
    eprintln!("baseline CPU: {cpu_base:?}");
    let cpu_kedge = daemon_cpu(&kedge_bin, cpu_jobs, args.rate).await?;
    eprintln!("daemon CPU: {cpu_kedge:?}");

    // 5. Memory.
    let mem = daemon_memory(&kedge_bin, args.tracked).await?;
    eprintln!("memory: {mem:?}");

    // 7. Cron lateness.
    let timers = timer_lateness(args.cron_jobs, 2).await?;
    eprintln!("timer lateness: {timers:?}");
    let cron = daemon_cron(&kedge_bin, args.cron_jobs).await?;
    eprintln!("cron lateness: {cron:?}");

    println!();
    println!(
        "| measure | result | ratio |\n|---|---|---|\n\
         | create baseline: bare kube::Client, minimal Job ({n}, median of {r}) | {base:.0} Jobs/s | 1.00× |\n\
         | bare kube::Client, kedge's rendered Jobs | {base_rendered:.0} Jobs/s | {:.2}× baseline |\n\
         | `KubernetesExecutor::launch`, limit off | {exec:.0} Jobs/s | {:.2}× baseline, {:.2}× same-Job loop |\n\
         | dispatcher store work alone (`due_runs` + `claim_run`, no API) | {store_only:.0} runs/s | {:.2}× baseline |\n\
         | `kedge run` drain, {n} stored messages → Jobs | {drain:.0} Jobs/s | {:.2}× baseline |\n\
         | `launch`, api_qps {KEDA_QPS} / api_burst {KEDA_BURST}, {m} Jobs in {secs:.2} s | {:.1} Jobs/s | {:.3}× ideal bucket ({ideal:.1}/s) |\n\
         | message → create, baseline (channel → POST), p50 / p99 | {:.1} / {:.1} ms | 1.00× |\n\
         | message → create, `kedge run` (builtin queue, woken by the writer), p50 / p99 | {:.1} / {:.1} ms | {:.1}× / {:.1}× baseline |\n\
         | daemon RSS idle (before enqueueing) | {:.1} MiB | 1.00× |\n\
         | daemon peak RSS (VmHWM), {t} Jobs tracked, each with a Running pod | {:.1} MiB | {:.2}× idle |\n\
         | daemon RSS at the end (VmRSS), {t} Jobs tracked | {:.1} MiB | {:.2}× idle |\n\
         | per 1,000 tracked Jobs, (VmHWM − idle) / {k} | {:.2} MiB | |",
        base_rendered / base,
        exec / base,
        exec / base_rendered,
        store_only / base,
        drain / base,
        limited.rate,
        limited.rate / ideal,
        lat_base.p50,
        lat_base.p99,
        lat_kedge.p50,
        lat_kedge.p99,
        lat_kedge.p50 / lat_base.p50,
        lat_kedge.p99 / lat_base.p99,
        mem.idle_rss,
        mem.hwm,
        mem.hwm / mem.idle_rss,
        mem.rss,
        mem.rss / mem.idle_rss,
        (mem.hwm - mem.idle_rss) / (args.tracked as f64 / 1000.0),
        r = args.rounds,
        m = args.limited,
        t = args.tracked,
        k = args.tracked as f64 / 1000.0,
    );
    println!(
        "\nlatency detail: baseline mean {:.1} max {:.1} ms; kedge mean {:.1} max {:.1} ms ({} messages at {}/s)",
        lat_base.mean,
        lat_base.max,
        lat_kedge.mean,
        lat_kedge.max,
        args.latency_messages,
        args.rate
    );
    println!(
        "memory detail: {} messages stored and their Jobs created in {:.1} s",
        args.tracked, mem.created_after
    );
    println!(
        "cpu detail: baseline {:.3} s CPU over {:.1} s for {} Jobs (child process, getrusage); kedge {:.3} s CPU over {:.1} s for {} Jobs (/proc/PID/stat)",
        cpu_base.cpu, cpu_base.window, cpu_base.jobs, cpu_kedge.cpu, cpu_kedge.window, cpu_kedge.jobs
    );
    println!(
        "cron detail: {} jobs × 2 fires; fire → claim p50 / p99 / max {:.0} / {:.0} / {:.0} ms, fire → Job created mean {:.0} max {:.0} ms, last claim of each fire {:?} ms after it; timers mean {:.2} max {:.2} ms",
        args.cron_jobs,
        cron.lat.p50,
        cron.lat.p99,
        cron.lat.max,
        cron.created.mean,
        cron.created.max,
        cron.spread,
        timers.mean,
        timers.max
    );

    // The summary: every figure issue 6 asks for, against its goal.
    let met = |ok: bool| if ok { "yes" } else { "**no**" };
    // 100 MB (decimal) in MiB.
    let rss_goal_mib = 100e6 / (1024.0 * 1024.0);
    let hwm_at_10k = mem.idle_rss + (mem.hwm - mem.idle_rss) * 10_000.0 / args.tracked as f64;
    println!(
        "\nsummary\n\n\
         | figure | kedge | baseline | ratio | goal | met? |\n|---|---|---|---|---|---|\n\
         | message → create p50 / p99 ({lm} at {rt}/s; `kedge run`, builtin queue woken by the writer vs bare channel → POST) | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {:.1}× / {:.1}× | p99 < 50 ms | {} |\n\
         | Jobs/s unthrottled (`kedge run` drain of {n} vs bare kube::Client loop) | {drain:.0} | {base:.0} | {:.2}× | ≥ 0.5× | {} |\n\
         | Jobs/s at api_qps {KEDA_QPS} / api_burst {KEDA_BURST} ({m} launches vs ideal token bucket) | {:.1} | {ideal:.1} | {:.3}× | within 5% | {} |\n\
         | daemon CPU per Job at a fixed {rt} Jobs/s ({cj} Jobs; bare loop in a child process) | {:.2} ms | {:.2} ms | {:.1}× | — | — |\n\
         | cron lateness p50 / p99, fire → Job created, {cn} schedules firing in the same second (2 fires; vs {cn} tokio timers) | {:.0} / {:.0} ms | {:.2} / {:.2} ms | {:.0}× / {:.0}× | p99 < 1 s | {} |\n\
         | peak RSS per 1,000 tracked Jobs, each with a Running pod ((VmHWM − idle) / {k}; baseline: idle RSS) | {:.2} MiB (VmHWM {:.1} MiB at {t}) | {:.1} MiB idle | {:.2}× idle | < 100 MB at 10,000 | {} |",
        lat_kedge.p50,
        lat_kedge.p99,
        lat_base.p50,
        lat_base.p99,
        lat_kedge.p50 / lat_base.p50,
        lat_kedge.p99 / lat_base.p99,
        met(lat_kedge.p99 < 50.0),
        drain / base,
        met(drain / base >= 0.5),
        limited.rate,
        limited.rate / ideal,
        met((limited.rate / ideal - 1.0).abs() <= 0.05),
        cpu_kedge.ms_per_job(),
        cpu_base.ms_per_job(),
        cpu_kedge.ms_per_job() / cpu_base.ms_per_job(),
        cron.created.p50,
        cron.created.p99,
        timers.p50,
        timers.p99,
        cron.created.p50 / timers.p50,
        cron.created.p99 / timers.p99,
        met(cron.created.p99 < 1000.0),
        (mem.hwm - mem.idle_rss) / (args.tracked as f64 / 1000.0),
        mem.hwm,
        mem.idle_rss,
        mem.hwm / mem.idle_rss,
        met(hwm_at_10k < rss_goal_mib),
        lm = args.latency_messages,
        rt = args.rate,
        m = args.limited,
        cj = cpu_jobs,
        cn = args.cron_jobs,
        t = args.tracked,
        k = args.tracked as f64 / 1000.0,
    );
    println!("\nwhole bench: {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Builds `target/<profile>/kedge` with the cargo running this example and
/// returns its path.
fn build_kedge() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/examples/k8s_bench → target/<profile>/kedge
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("cannot tell the target dir from {}", exe.display()))?;
    let bin = profile_dir.join("kedge");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "--bin", "kedge", "--manifest-path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    eprintln!("building {} …", bin.display());
    let status = cmd.status().context("running cargo build --bin kedge")?;
    ensure!(status.success(), "cargo build --bin kedge failed: {status}");
    ensure!(bin.exists(), "{} was not built", bin.display());
    Ok(bin)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

// ----- the stand-in ------------------------------------------------------------

/// A kube-sim on its own runtime, so its Job controller (which works in
/// long synchronous passes) never stalls the bench's own tasks.
struct Cluster {
    sim: Option<KubeSim>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Cluster {
    async fn start(job_controller: bool) -> Result<Cluster> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kube-sim")
            .enable_all()
            .build()?;
        let sim = rt
            .spawn(KubeSim::start(SimConfig {
                job_controller,
                time_scale: 0.01,
                ..Default::default()
            }))
            .await??;
        Ok(Cluster {
            sim: Some(sim),
            rt: Some(rt),
        })
    }

    fn sim(&self) -> &KubeSim {
        self.sim.as_ref().expect("the stand-in runs until drop")
    }

    /// Successful Job creates: name → when the stand-in answered.
    fn created(&self) -> HashMap<String, Instant> {
        self.sim()
            .creates_of("jobs")
            .into_iter()
            .filter(|r| r.created())
            .map(|r| (r.name, r.at))
            .collect()
    }

    async fn client(&self) -> Result<kube::Client> {
        let kc = kube::config::Kubeconfig::from_yaml(&self.sim().kubeconfig_yaml())?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        drop(self.sim.take());
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A minimal Job: one busybox container, `restartPolicy: Never`.
fn minimal_job(name: &str) -> Result<K8sJob> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": { "name": name },
        "spec": {
            "backoffLimit": 0,
            "template": { "spec": {
                "restartPolicy": "Never",
                "containers": [{ "name": "main", "image": "busybox" }]
            }}
        }
    }))?)
}

// ----- kedge's job and launches --------------------------------------------

/// A workspace like the e2e tests': `config/kedge.yaml` (absolute paths, so
/// this process and the daemon agree), `jobs/bench.yaml`, `kubeconfig`.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new(kubeconfig: &str, qps: u32, burst: u32, outcome: &str) -> Result<Workspace> {
        let dir = tempfile::tempdir()?;
        let w = dir.path();
        std::fs::create_dir_all(w.join("config"))?;
        std::fs::create_dir_all(w.join("jobs"))?;
        std::fs::create_dir_all(w.join("state"))?;
        std::fs::write(w.join("kubeconfig"), kubeconfig)?;
        std::fs::write(
            w.join("config/kedge.yaml"),
            format!(
                "jobs_dir: {w}/jobs\n\
                 store:\n  url: sqlite://{w}/state/kedge.db\n  poll_interval: 1s\n\
                 executor:\n  kind: kubernetes\n  kubernetes:\n    kubeconfig: {w}/kubeconfig\n    namespace: default\n    \
                 api_qps: {qps}\n    api_burst: {burst}\n\
                 limits:\n  max_active_runs: 20000\n\
                 shutdown_timeout: 10s\n",
                w = w.display()
            ),
        )?;
        std::fs::write(
            w.join("jobs/bench.yaml"),
            format!(
                "name: bench\n\
                 trigger:\n  queue:\n    builtin: {{}}\n\
                 template:\n  backoffLimit: 0\n  template:\n    metadata:\n      annotations:\n        kube-sim/outcome: \"{outcome}\"\n    \
                 spec:\n      restartPolicy: Never\n      containers:\n        - name: main\n          image: busybox\n"
            ),
        )?;
        Ok(Workspace { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn store_url(&self) -> String {
        format!("sqlite://{}/state/kedge.db", self.path().display())
    }

    /// The bench job, through kedge's config loader.
    fn job(&self) -> Result<Job> {
        let loaded = kedge::config::load(&Sources {
            config: Some(self.path().join("config/kedge.yaml")),
            jobs: None,
            store: None,
            calendars: None,
        })
        .map_err(|d| anyhow!("bench config:\n{d}"))?;
        ensure!(
            loaded.job_problems.is_empty(),
            "bench job:\n{}",
            loaded.job_problems
        );
        loaded
            .jobs
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("no job"))
    }

    async fn store(&self) -> Result<Store> {
        let store = Store::connect(&self.store_url()).await?;
        store.migrate().await?;
        Ok(store)
    }
}

fn payload(i: usize) -> String {
    format!("{{\"order\":{i},\"note\":\"k8s bench\"}}")
}

/// Run `i` of `job`, as the dispatcher hands it to `render`.
fn run(job: &Job, tag: &str, i: usize) -> Run {
    let message_id = format!("{tag}-{i}");
    Run {
        run_id: run_name(&job.name, RunKey::Message(&message_id), 1),
        work_item_id: format!("wi-{message_id}"),
        job: job.name.clone(),
        attempt: 1,
        state: RunState::Running,
        trigger: TriggerKind::Queue,
        scheduled_ms: Utc::now().timestamp_millis(),
        started_ms: None,
        finished_ms: None,
        launches: 0,
        first_launch_ms: None,
        error: None,
        source: "builtin".into(),
        message_id,
        payload: Some(payload(i)),
        deadline_ms: None,
        attempt_base: 0,
        sizing: None,
        backfill_id: None,
    }
}

fn launches(job: &Job, tag: &str, n: usize) -> Vec<Launch> {
    (0..n).map(|i| render(job, &run(job, tag, i))).collect()
}

fn placement(instance: &str) -> Placement {
    Placement {
        namespace: "default".into(),
        instance: instance.into(),
        identity: "k8s-bench".into(),
        ttl_seconds_after_finished: 86_400,
    }
}

fn tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// Serialized sizes of the baseline's Job and of kedge's.
async fn job_sizes() -> Result<(usize, usize)> {
    let ws = Workspace::new("", UNLIMITED, UNLIMITED, "hang")?;
    let job = ws.job()?;
    let l = render(&job, &run(&job, "size", 0));
    let ours = objects::objects(&l, &placement("size")).job;
    Ok((
        serde_json::to_vec(&minimal_job(&l.run_id)?)?.len(),
        serde_json::to_vec(&ours)?.len(),
    ))
}

// ----- 1. create throughput ---------------------------------------------------

/// A bare `kube::Client` loop: N POSTs one after another. With
/// `rendered`, the Jobs are exactly what kedge's executor would send
/// (built before the clock starts).
async fn baseline_creates(n: usize, rendered: bool) -> Result<f64> {
    let c = Cluster::start(false).await?;
    let jobs_api: Api<K8sJob> = Api::namespaced(c.client().await?, "default");
    let t = tag();
    let bodies: Vec<K8sJob> = if rendered {
        let ws = Workspace::new("", UNLIMITED, UNLIMITED, "hang")?;
        let job = ws.job()?;
        let at = placement(&format!("base-{t}"));
        launches(&job, &t, n)
            .iter()
            .map(|l| objects::objects(l, &at).job)
            .collect()
    } else {
        (0..n)
            .map(|i| minimal_job(&format!("base-{t}-{i}")))
            .collect::<Result<_>>()?
    };
    let pp = PostParams::default();
    let start = Instant::now();
    for b in &bodies {
        jobs_api.create(&pp, b).await?;
    }
    let took = start.elapsed();
    ensure!(
        c.created().len() == n,
        "baseline: not every Job was created"
    );
    Ok(rate(n, took))
}

struct Creates {
    rate: f64,
    took: Duration,
}

/// `KubernetesExecutor::launch` of N rendered launches, one after another,
/// with the given rate limit. The executor's watcher runs meanwhile, as in
/// the daemon.
async fn executor_creates(n: usize, qps: u32, burst: u32) -> Result<Creates> {
    let c = Cluster::start(false).await?;
    let ws = Workspace::new(&c.sim().kubeconfig_yaml(), qps, burst, "hang")?;
    let job = ws.job()?;
    let cfg = KubernetesConfig {
        kubeconfig: Some(ws.path().join("kubeconfig")),
        namespace: Some("default".into()),
        api_qps: qps,
        api_burst: burst,
        ..Default::default()
    };
    let (client, namespace) = kedge::executor::kubernetes::client(&cfg).await?;
    let (tx, _outcomes) = mpsc::channel::<Outcome>(1024);
    let t = tag();
    let exec = KubernetesExecutor::new(
        client,
        &namespace,
        cfg,
        format!("bench-{t}"),
        "k8s-bench".into(),
        tx,
    );
    let todo = launches(&job, &t, n);
    let start = Instant::now();
    for l in todo {
        exec.launch(l).await?;
    }
    let took = start.elapsed();
    exec.shutdown().await;
    ensure!(
        c.created().len() == n,
        "executor: not every Job was created"
    );
    Ok(Creates {
        rate: rate(n, took),
        took,
    })
}

/// The store side of a launch alone: N stored messages, then what the
/// dispatcher does per run before it calls the executor — `due_runs` (256
/// per pass) and `claim_run` for each — on a fresh SQLite store.
async fn store_claims(n: usize) -> Result<f64> {
    let ws = Workspace::new("", UNLIMITED, UNLIMITED, "hang")?;
    let job = ws.job()?;
    let store = ws.store().await?;
    let t = tag();
    for i in 0..n {
        intake::enqueue(
            &store,
            &job,
            payload(i).as_bytes(),
            Some(format!("{t}-{i}")),
            None,
        )
        .await?;
    }
    let start = Instant::now();
    let mut claimed = 0;
    while claimed < n {
        let now = Utc::now().timestamp_millis();
        let due = store.due_runs(now, 256).await?;
        ensure!(!due.is_empty(), "store: only {claimed} of {n} due");
        for r in &due {
            if store
                .claim_run(&r.run_id, Utc::now().timestamp_millis())
                .await?
            {
                claimed += 1;
            }
        }
    }
    let took = start.elapsed();
    store.close().await;
    Ok(rate(n, took))
}

// ----- the daemon -------------------------------------------------------------

/// A background `kedge run`, stopped (SIGTERM, then SIGKILL) on drop.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    async fn start(bin: &Path, ws: &Workspace) -> Result<Daemon> {
        let log = ws.path().join("daemon.log");
        let child = Command::new(bin)
            .current_dir(ws.path())
            .env_remove("KEDGE_CONFIG")
            .env_remove("KEDGE_JOBS")
            .env_remove("KEDGE_STORE")
            .env("KEDGE_LOG", "info")
            .args(["run", "--log-format", "json"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting kedge run")?;
        let mut d = Daemon { child, log };
        let start = Instant::now();
        while !d.log().contains("kedge ready") {
            ensure!(
                start.elapsed() < Duration::from_secs(30),
                "the daemon did not get ready:\n{}",
                d.log()
            );
            if let Some(s) = d.child.try_wait()? {
                bail!("the daemon exited ({s}):\n{}", d.log());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(d)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// (VmRSS, VmHWM) in MiB.
    fn memory(&self) -> Result<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| -> Result<f64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .ok_or_else(|| anyhow!("no {name} in /proc/PID/status"))?;
            let kb: f64 = line
                .split_whitespace()
                .nth(1)
                .ok_or_else(|| anyhow!("bad {name} line"))?
                .parse()?;
            Ok(kb / 1024.0)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` every `every` until it holds; fails after [`WAIT_LIMIT`]
/// with `what` and the last progress line.
async fn wait_for(
    what: &str,
    every: Duration,
    mut cond: impl FnMut() -> Result<(bool, String)>,
) -> Result<()> {
    let start = Instant::now();
    loop {
        let (done, progress) = cond()?;
        if done {
            return Ok(());
        }
        ensure!(
            start.elapsed() < WAIT_LIMIT,
            "timed out waiting for {what}: {progress}"
        );
        tokio::time::sleep(every).await;
    }
}

// ----- 3. daemon drain ----------------------------------------------------------

/// N messages stored before the daemon starts (rate limit off); Jobs/s from
/// the first create the stand-in recorded to the last.
async fn daemon_drain(bin: &Path, n: usize) -> Result<f64> {
    let c = Cluster::start(false).await?;
    let ws = Workspace::new(&c.sim().kubeconfig_yaml(), UNLIMITED, UNLIMITED, "hang")?;
    let job = ws.job()?;
    let store = ws.store().await?;
    let t = tag();
    for i in 0..n {
        intake::enqueue(
            &store,
            &job,
            payload(i).as_bytes(),
            Some(format!("{t}-{i}")),
            None,
        )
        .await?;
    }
    store.close().await;
    let daemon = Daemon::start(bin, &ws).await?;
    wait_for(
        "the daemon to create every Job",
        Duration::from_millis(100),
        || {
            let k = c.created().len();
            Ok((k >= n, format!("{k} of {n} created")))
        },
    )
    .await?;
    drop(daemon);
    let mut at: Vec<Instant> = c.created().into_values().collect();
    at.sort();
    ensure!(at.len() == n, "drain: {} Jobs for {n} messages", at.len());
    // n − 1 intervals between the first create and the last.
    Ok((n - 1) as f64 / (at[n - 1] - at[0]).as_secs_f64())
}

// ----- 4. latency -----------------------------------------------------------------

#[derive(Debug)]
struct Latency {
    p50: f64,
    p99: f64,
    mean: f64,
    max: f64,
}

fn latency_of(
    sent: &HashMap<String, Instant>,
    created: &HashMap<String, Instant>,
) -> Result<Latency> {
    let lat: Vec<f64> = sent
        .iter()
        .map(|(name, at)| {
            let c = created
                .get(name)
                .ok_or_else(|| anyhow!("no Job created for {name}"))?;
            Ok(c.saturating_duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect::<Result<_>>()?;
    Ok(summarize(lat))
}

/// p50, p99 (nearest rank), mean and max of samples in ms.
fn summarize(mut lat: Vec<f64>) -> Latency {
    lat.sort_by(f64::total_cmp);
    // Nearest rank.
    let pct = |p: f64| lat[((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1];
    Latency {
        p50: pct(0.50),
        p99: pct(0.99),
        mean: lat.iter().sum::<f64>() / lat.len() as f64,
        max: lat[lat.len() - 1],
    }
}

/// A task receives each message on a channel and POSTs its Job at once.
async fn baseline_latency(m: usize, per_sec: f64) -> Result<Latency> {
    let c = Cluster::start(false).await?;
    let jobs_api: Api<K8sJob> = Api::namespaced(c.client().await?, "default");
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let poster = tokio::spawn(async move {
        let pp = PostParams::default();
        while let Some(name) = rx.recv().await {
            jobs_api.create(&pp, &minimal_job(&name)?).await?;
        }
        anyhow::Ok(())
    });
    let t = tag();
    // Warm-up: the connection is open before the clock matters.
    tx.send(format!("warm-{t}"))?;
    let spacing = Duration::from_secs_f64(1.0 / per_sec);
    let mut sent = HashMap::with_capacity(m);
    let t0 = tokio::time::Instant::now() + Duration::from_millis(200);
    for i in 0..m {
        tokio::time::sleep_until(t0 + spacing * i as u32).await;
        let name = format!("lat-{t}-{i}");
        sent.insert(name.clone(), Instant::now());
        tx.send(name)?;
    }
    drop(tx);
    poster.await??;
    latency_of(&sent, &c.created())
}

/// Messages written to the daemon's store as `kedge enqueue` writes them;
/// the write wakes the daemon (its socket beside the SQLite file), which
/// launches at once.
async fn daemon_latency(bin: &Path, m: usize, per_sec: f64) -> Result<Latency> {
    let c = Cluster::start(false).await?;
    // The rate limit at its defaults (50/s, burst 100): above 20 msg/s.
    let defaults = KubernetesConfig::default();
    let ws = Workspace::new(
        &c.sim().kubeconfig_yaml(),
        defaults.api_qps,
        defaults.api_burst,
        "hang",
    )?;
    let job = ws.job()?;
    let daemon = Daemon::start(bin, &ws).await?;
    let store = ws.store().await?;
    let t = tag();
    // Warm-up: one message through, so the client's connection is open.
    let warm = match intake::enqueue(&store, &job, b"{}", Some(format!("warm-{t}")), None).await? {
        Accepted::New { run_id } => run_id,
        Accepted::Duplicate => bail!("warm-up message stored twice"),
    };
    wait_for("the warm-up Job", Duration::from_millis(25), || {
        Ok((c.created().contains_key(&warm), String::new()))
    })
    .await?;
    let spacing = Duration::from_secs_f64(1.0 / per_sec);
    let mut sent = HashMap::with_capacity(m);
    let t0 = tokio::time::Instant::now() + Duration::from_millis(200);
    for i in 0..m {
        tokio::time::sleep_until(t0 + spacing * i as u32).await;
        let at = Instant::now();
        let accepted = intake::enqueue(
            &store,
            &job,
            payload(i).as_bytes(),
            Some(format!("{t}-{i}")),
            None,
        )
        .await?;
        let Accepted::New { run_id } = accepted else {
            bail!("message {i} stored twice");
        };
        sent.insert(run_id, at);
    }
    wait_for("every message's Job", Duration::from_millis(50), || {
        let k = c.created().len();
        Ok((k > m, format!("{k} of {} created", m + 1)))
    })
    .await?;
    store.close().await;
    drop(daemon);
    latency_of(&sent, &c.created())
}

// ----- 5. memory --------------------------------------------------------------------

#[derive(Debug)]
struct Memory {
    idle_rss: f64,
    hwm: f64,
    rss: f64,
    created_after: f64,
}

/// The daemon idle, then with T running Jobs tracked, each with a Running
/// pod (the stand-in's Job controller on, `kube-sim/outcome: hang`), so the
/// daemon's Job and pod watchers hold what they would in a real cluster.
async fn daemon_memory(bin: &Path, t: usize) -> Result<Memory> {
    let c = Cluster::start(true).await?;
    let ws = Workspace::new(&c.sim().kubeconfig_yaml(), UNLIMITED, UNLIMITED, "hang")?;
    let job = ws.job()?;
    let daemon = Daemon::start(bin, &ws).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle_rss, idle_hwm) = daemon.memory()?;
    eprintln!("memory: idle VmRSS {idle_rss:.1} MiB, VmHWM {idle_hwm:.1} MiB");

    let store = ws.store().await?;
    let tg = tag();
    let start = Instant::now();
    for i in 0..t {
        intake::enqueue(
            &store,
            &job,
            payload(i).as_bytes(),
            Some(format!("{tg}-{i}")),
            None,
        )
        .await?;
    }
    eprintln!(
        "memory: {t} messages stored in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    wait_for("every Job created", Duration::from_millis(500), || {
        let k = c.created().len();
        Ok((k >= t, format!("{k} of {t} created")))
    })
    .await?;
    let created_after = start.elapsed().as_secs_f64();
    eprintln!("memory: {t} Jobs created after {created_after:.1} s");
    // (A pod starts Pending; the simulated kubelet makes it Running.)
    wait_for(
        "a Running pod for every Job",
        Duration::from_secs(1),
        || {
            let running = c
                .sim()
                .objects("pods", "default")
                .iter()
                .filter(|p| p["status"]["phase"] == "Running")
                .count();
            Ok((running >= t, format!("{running} of {t} pods Running")))
        },
    )
    .await?;
    eprintln!(
        "memory: {t} pods Running after {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let running: i64 = store
        .active_counts()
        .await?
        .into_iter()
        .map(|(_, running, _)| running)
        .sum();
    ensure!(
        running as usize == t,
        "the store has {running} running runs, expected {t}"
    );
    store.close().await;
    // Let the daemon's watcher take in the last status changes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss, hwm) = daemon.memory()?;
    drop(daemon);
    Ok(Memory {
        idle_rss,
        hwm,
        rss,
        created_after,
    })
}

// ----- 6. CPU per Job at a fixed rate ------------------------------------------------

/// utime + stime of a process from `/proc/PID/stat`, in seconds.
fn proc_cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at
    // field 3 (state); utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .ok_or_else(|| anyhow!("bad /proc/{pid}/stat"))?
        .1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    ensure!(f.len() > 12, "short /proc/{pid}/stat");
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ensure!(hz > 0, "sysconf(_SC_CLK_TCK) failed");
    Ok(ticks / hz as f64)
}

/// This process's user + system CPU time, in seconds.
fn self_cpu_secs() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe {
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[derive(Debug)]
struct Cpu {
    /// CPU seconds over the window.
    cpu: f64,
    jobs: usize,
    window: f64,
}

impl Cpu {
    fn ms_per_job(&self) -> f64 {
        self.cpu * 1000.0 / self.jobs as f64
    }
}

/// The child side of the CPU baseline: a `kube::Client` task receives each
/// name on a channel and POSTs its Job at once, COUNT names at RATE/s.
/// Prints `cpu_secs S window_secs W` (getrusage(RUSAGE_SELF) from just
/// before the first send to just after the last POST; the connection is
/// opened by a warm-up POST before that).
async fn bare_loop_child(kubeconfig: &Path, count: usize, per_sec: f64) -> Result<()> {
    let kc = kube::config::Kubeconfig::from_yaml(&std::fs::read_to_string(kubeconfig)?)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let jobs_api: Api<K8sJob> = Api::namespaced(kube::Client::try_from(config)?, "default");
    let pp = PostParams::default();
    let t = tag();
    jobs_api
        .create(&pp, &minimal_job(&format!("warm-{t}"))?)
        .await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let poster = tokio::spawn(async move {
        while let Some(name) = rx.recv().await {
            jobs_api.create(&pp, &minimal_job(&name)?).await?;
        }
        anyhow::Ok(())
    });
    let spacing = Duration::from_secs_f64(1.0 / per_sec);
    let cpu0 = self_cpu_secs();
    let start = Instant::now();
    let t0 = tokio::time::Instant::now();
    for i in 0..count {
        tokio::time::sleep_until(t0 + spacing * i as u32).await;
        tx.send(format!("cpu-{t}-{i}"))?;
    }
    drop(tx);
    poster.await??;
    let cpu = self_cpu_secs() - cpu0;
    println!(
        "cpu_secs {cpu} window_secs {}",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The baseline: the bare channel → POST loop in a child process (this
/// binary with `--bare-loop`), so its CPU is not mixed with the stand-in's,
/// which runs in this process.
async fn baseline_cpu(count: usize, per_sec: f64) -> Result<Cpu> {
    let c = Cluster::start(false).await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, c.sim().kubeconfig_yaml())?;
    let out = tokio::process::Command::new(std::env::current_exe()?)
        .arg("--bare-loop")
        .arg(&kubeconfig)
        .arg(count.to_string())
        .arg(per_sec.to_string())
        .stderr(Stdio::inherit())
        .output()
        .await
        .context("running the bare loop child")?;
    ensure!(out.status.success(), "bare loop child: {}", out.status);
    let text = String::from_utf8(out.stdout)?;
    let f: Vec<&str> = text.split_whitespace().collect();
    ensure!(
        f.len() == 4 && f[0] == "cpu_secs" && f[2] == "window_secs",
        "bare loop child said {text:?}"
    );
    ensure!(
        c.created().len() == count + 1,
        "bare loop: {} Jobs for {count} messages + 1 warm-up",
        c.created().len()
    );
    Ok(Cpu {
        cpu: f[1].parse()?,
        jobs: count,
        window: f[3].parse()?,
    })
}

/// `kedge run` (builtin queue, poll 1 s, rate limit at its defaults, as
/// in the latency pass) fed COUNT messages at RATE/s; the daemon's
/// utime + stime from `/proc/PID/stat` from just before the first enqueue
/// to the moment the stand-in has every Job.
async fn daemon_cpu(bin: &Path, count: usize, per_sec: f64) -> Result<Cpu> {
    let c = Cluster::start(false).await?;
    let defaults = KubernetesConfig::default();
    let ws = Workspace::new(
        &c.sim().kubeconfig_yaml(),
        defaults.api_qps,
        defaults.api_burst,
        "hang",
    )?;
    let job = ws.job()?;
    let daemon = Daemon::start(bin, &ws).await?;
    let pid = daemon.child.id();
    let store = ws.store().await?;
    let t = tag();
    let warm = match intake::enqueue(&store, &job, b"{}", Some(format!("warm-{t}")), None).await? {
        Accepted::New { run_id } => run_id,
        Accepted::Duplicate => bail!("warm-up message stored twice"),
    };
    wait_for("the warm-up Job", Duration::from_millis(25), || {
        Ok((c.created().contains_key(&warm), String::new()))
    })
    .await?;
    let spacing = Duration::from_secs_f64(1.0 / per_sec);
    let cpu0 = proc_cpu_secs(pid)?;
    let start = Instant::now();
    let t0 = tokio::time::Instant::now();
    for i in 0..count {
        tokio::time::sleep_until(t0 + spacing * i as u32).await;
        intake::enqueue(
            &store,
            &job,
            payload(i).as_bytes(),
            Some(format!("{t}-{i}")),
            None,
        )
        .await?;
    }
    wait_for("every message's Job", Duration::from_millis(10), || {
        let k = c.created().len();
        Ok((k > count, format!("{k} of {} created", count + 1)))
    })
    .await?;
    let cpu = proc_cpu_secs(pid)? - cpu0;
    let window = start.elapsed().as_secs_f64();
    store.close().await;
    drop(daemon);
    Ok(Cpu {
        cpu,
        jobs: count,
        window,
    })
}

// ----- 7. cron lateness ---------------------------------------------------------------

/// Lateness (ms) of `n` tokio timers all set, with `sleep_until`, for the
/// same wall-clock second, `fires` times: wake time − target, both wall
/// clock, as kedge's scheduler computes its sleeps.
async fn timer_lateness(n: usize, fires: usize) -> Result<Latency> {
    let mut lat = Vec::with_capacity(n * fires);
    for _ in 0..fires {
        let now = Utc::now();
        let target_ms = (now.timestamp_millis() / 1000 + 2) * 1000;
        let target = chrono::DateTime::from_timestamp_millis(target_ms)
            .ok_or_else(|| anyhow!("bad target"))?;
        let deadline = tokio::time::Instant::now() + (target - now).to_std()?;
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                tokio::spawn(async move {
                    tokio::time::sleep_until(deadline).await;
                    Utc::now()
                })
            })
            .collect();
        for task in tasks {
            let woke = task.await?;
            lat.push((woke - target).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0);
        }
    }
    Ok(summarize(lat))
}

#[derive(Debug)]
struct CronLateness {
    /// The run's claim (`started_ms`, just before its POST) − the fire.
    lat: Latency,
    /// The Job's create on the stand-in − the fire: what a user sees.
    created: Latency,
    /// Milliseconds from the fire to the last run's start, per fire.
    spread: Vec<f64>,
}

/// `kedge run` with N cron jobs (`*/10 * * * * *`, `overlap: allow`), rate
/// limit off, stand-in Job controller off (the Jobs never finish, so every
/// fire launches). Two fires at least 2 s after the daemon is ready are
/// measured: lateness = the run's `started_ms` (its claim, just before the
/// POST) − its `scheduled_ms` (the fire), read from the store.
async fn daemon_cron(bin: &Path, n: usize) -> Result<CronLateness> {
    const PERIOD_MS: i64 = 10_000;
    let c = Cluster::start(false).await?;
    let ws = Workspace::new(
        &c.sim().kubeconfig_yaml(),
        UNLIMITED,
        UNLIMITED,
        "duration=1s",
    )?;
    std::fs::remove_file(ws.path().join("jobs/bench.yaml"))?;
    for i in 0..n {
        std::fs::write(
            ws.path().join(format!("jobs/cron-{i:04}.yaml")),
            format!(
                "name: cron-{i:04}\n\
                 trigger:\n  cron: \"*/10 * * * * *\"\n  overlap: allow\n\
                 template:\n  backoffLimit: 0\n  template:\n    metadata:\n      annotations:\n        kube-sim/outcome: \"duration=1s\"\n    \
                 spec:\n      restartPolicy: Never\n      containers:\n        - name: main\n          image: busybox\n"
            ),
        )?;
    }
    let daemon = Daemon::start(bin, &ws).await?;
    // The stand-in stamps creates on this process's monotonic clock; this
    // pair turns them into wall-clock milliseconds, as fires are.
    let (anchor, anchor_ms) = (Instant::now(), Utc::now().timestamp_millis());
    let ready_ms = anchor_ms;
    let mut first = (ready_ms / PERIOD_MS + 1) * PERIOD_MS;
    if first - ready_ms < 2000 {
        first += PERIOD_MS;
    }
    let fires = [first, first + PERIOD_MS];
    eprintln!(
        "cron: {n} jobs, daemon ready; measuring the fires {:.1} s and {:.1} s from now",
        (fires[0] - ready_ms) as f64 / 1000.0,
        (fires[1] - ready_ms) as f64 / 1000.0
    );
    let store = ws.store().await?;
    let started_of = |runs: &[Run]| -> Vec<(i64, i64)> {
        runs.iter()
            .filter(|r| fires.contains(&r.scheduled_ms))
            .filter_map(|r| r.started_ms.map(|s| (r.scheduled_ms, s)))
            .collect()
    };
    let mut fire_of_run = HashMap::new();
    let deadline =
        Instant::now() + Duration::from_millis((fires[1] - ready_ms) as u64) + WAIT_LIMIT;
    let measured = loop {
        let runs = store.list_runs(None, None, 100_000).await?;
        let got = started_of(&runs);
        if got.len() >= 2 * n {
            for r in runs.iter().filter(|r| fires.contains(&r.scheduled_ms)) {
                fire_of_run.insert(r.run_id.clone(), r.scheduled_ms);
            }
            break got;
        }
        ensure!(
            Instant::now() < deadline,
            "cron: only {} of {} runs started",
            got.len(),
            2 * n
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Every measured run's Job is created (the POST follows the claim).
    let created = loop {
        let created = c.created();
        let lat: Vec<f64> = fire_of_run
            .iter()
            .filter_map(|(run, fire)| {
                let at = created.get(run)?;
                let at_ms = anchor_ms as f64 + at.duration_since(anchor).as_secs_f64() * 1000.0;
                Some(at_ms - *fire as f64)
            })
            .collect();
        if lat.len() == 2 * n {
            break lat;
        }
        ensure!(
            Instant::now() < deadline,
            "cron: only {} of {} Jobs created",
            lat.len(),
            2 * n
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    store.close().await;
    drop(daemon);
    ensure!(
        measured.len() == 2 * n,
        "cron: {} runs for {} fires",
        measured.len(),
        2 * n
    );
    let spread = fires
        .iter()
        .map(|f| {
            measured
                .iter()
                .filter(|(s, _)| s == f)
                .map(|(s, st)| (st - s) as f64)
                .fold(f64::MIN, f64::max)
        })
        .collect();
    Ok(CronLateness {
        lat: summarize(measured.iter().map(|(s, st)| (st - s) as f64).collect()),
        created: summarize(created),
        spread,
    })
}
