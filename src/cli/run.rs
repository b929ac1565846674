//! `kedge run`: load and validate, build the executor, run the daemon until
//! a signal (or, on Kubernetes, until this replica loses the Lease).

use anyhow::Context;
use clap::Args;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{open_store, ClusterArgs, Failure};
use crate::config::{self, DaemonConfig, ExecutorKind, Job, LogFormat, Sources};
use crate::executor::{kubernetes, Executor, LocalExecutor, Outcome};
use crate::reload::ReloadFrom;
use crate::store::Store;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Log format [default: the config's log_format, pretty]
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Where runs run [default: the config's executor.kind, local]
    #[arg(long, value_enum)]
    pub executor: Option<ExecutorKind>,
    /// Do not watch the job and config files for changes. Definitions are
    /// still reloaded on SIGHUP and on `POST /-/reload` (with `http.listen`)
    #[arg(long)]
    pub no_watch: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// `kedge run`.
pub(super) async fn run(src: &Sources, args: RunArgs) -> Result<(), Failure> {
    let result = run_daemon(src, args).await;
    if crate::telemetry::enabled() {
        // Blocking: the exporter's HTTP client must not run on a runtime thread.
        if let Err(e) = tokio::task::spawn_blocking(crate::telemetry::stop).await {
            tracing::warn!(error = %e, "cannot flush the last traces");
        }
    }
    result
}

/// Starts exporting traces to `otlp` (off the runtime's threads). A
/// failure is logged; kedge runs on without traces.
async fn start_traces(otlp: crate::config::daemon::OtlpConfig) {
    let endpoint = otlp.endpoint.clone();
    match tokio::task::spawn_blocking(move || crate::telemetry::start(&otlp)).await {
        Ok(Ok(())) => tracing::info!(%endpoint, "exporting traces (OTLP/HTTP)"),
        Ok(Err(e)) => {
            tracing::error!(%endpoint, error = %e, "cannot export traces; running without")
        }
        Err(e) => tracing::error!(%endpoint, error = %e, "cannot export traces; running without"),
    }
}

async fn run_daemon(src: &Sources, args: RunArgs) -> Result<(), Failure> {
    let mut daemon = config::load_daemon(src)?;
    let reload = ReloadFrom {
        sources: src.clone(),
        started_with: daemon.clone(),
        watch: !args.no_watch,
    };
    // The executor decides what a valid job is (the local one needs
    // commands), so the flags apply before the jobs are read.
    args.cluster.apply(args.executor, &mut daemon.executor)?;
    let (jobs, job_problems) = config::load_jobs(&daemon);
    init_logging(args.log_format.unwrap_or(daemon.log_format));
    if let Some(otlp) = &daemon.telemetry {
        start_traces(otlp.clone()).await;
    }
    for d in &job_problems.0 {
        tracing::error!(problem = %d, "job definition rejected; the other jobs keep running");
    }
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received");
        signal.cancel();
    });
    let (tx, rx) = mpsc::channel(1024);
    match &daemon.executor {
        config::ExecutorConfig::Local(local) => {
            let store = open_store(&daemon.store_url).await?;
            let instance = instance_id(&store).await?;
            let executor = LocalExecutor::new(local.clone(), instance, tx);
            let loaded = Loaded {
                jobs,
                job_problems,
                reload,
            };
            serve(daemon, loaded, store, executor, rx, shutdown).await
        }
        config::ExecutorConfig::Kubernetes(k) => {
            let k = k.clone();
            // Only the Lease holder opens the store and launches.
            let Some(leader) = kubernetes::elect(&k, &shutdown)
                .await
                .map_err(Failure::Runtime)?
            else {
                return Ok(());
            };
            let store = open_store(&daemon.store_url).await?;
            let instance = instance_id(&store).await?;
            let executor = leader.executor(k, instance, tx);
            let loaded = Loaded {
                jobs,
                job_problems,
                reload,
            };
            let served = serve(daemon, loaded, store, executor, rx, shutdown).await;
            let stepped_down = leader.step_down().await;
            served?;
            stepped_down.map_err(|lost| Failure::Runtime(lost.into()))
        }
    }
}

async fn instance_id(store: &Store) -> Result<String, Failure> {
    Ok(store
        .instance_id()
        .await
        .context("reading the store's instance id")?)
}

/// The definitions read at start, and where to read them again.
struct Loaded {
    jobs: Vec<Job>,
    job_problems: config::Diagnostics,
    reload: ReloadFrom,
}

/// Runs the daemon with one executor until `shutdown`.
async fn serve<E: Executor>(
    cfg: DaemonConfig,
    loaded: Loaded,
    store: Store,
    executor: E,
    outcomes: mpsc::Receiver<Outcome>,
    shutdown: CancellationToken,
) -> Result<(), Failure> {
    let Loaded {
        jobs,
        job_problems,
        reload,
    } = loaded;
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
        reload: Some(reload),
        job_problems: job_problems.0.iter().map(|d| d.to_string()).collect(),
    };
    daemon
        .run(shutdown, || {
            tracing::info!(jobs = count, cron, store = %store_url, executor = ?kind, "kedge ready");
        })
        .await
        .context("the daemon stopped on a store error")?;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut term) => term.recv().await,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; stop kedge with SIGINT");
                std::future::pending().await
            }
        }
    };
    // A handler that cannot be installed must not read as a signal: that
    // would stop the daemon the moment it started.
    let int = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT; stop kedge with SIGTERM");
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = term => {}
        _ = int => {}
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("KEDGE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Fails only when a subscriber is already installed (a second `run` in
    // one process, as in tests); that one keeps logging.
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::super::{tests::parse, Command};
    use super::*;

    fn run_args(args: &[&str]) -> RunArgs {
        match parse(args).unwrap().command {
            Command::Run(a) => a,
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn run_defaults_to_the_config() {
        let a = run_args(&["run"]);
        assert_eq!(a.log_format, None);
        assert_eq!(a.executor, None);
        assert!(a.cluster.kubeconfig.is_none() && a.cluster.namespace.is_none());
    }

    #[test]
    fn run_takes_the_executor_and_cluster_flags() {
        let a = run_args(&[
            "run",
            "--log-format",
            "json",
            "--executor",
            "kubernetes",
            "--namespace",
            "jobs",
            "--kubeconfig",
            "kc",
        ]);
        assert_eq!(a.log_format, Some(LogFormat::Json));
        assert_eq!(a.executor, Some(ExecutorKind::Kubernetes));
        assert_eq!(a.cluster.namespace.as_deref(), Some("jobs"));
        let e = parse(&["run", "--executor", "nomad"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue);
    }
}
