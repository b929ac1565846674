//! Hot reload: a running daemon re-reads its job files and config file when
//! they change (inotify, through the `notify` crate), on `SIGHUP`, and on
//! `POST /-/reload`, without a restart and without losing or doubling a
//! message.
//!
//! # Expected flow
//!
//! 1. A change is noticed. File events are gathered until the files have
//!    been quiet for [`SETTLE`] (an editor writes, renames, then chmods),
//!    then one reload runs.
//! 2. The config file is read again. Only what can change safely while
//!    running applies at once: `max_active_runs` and `pools`. Every other
//!    field (store, executor, http, retention, …) is logged as taking
//!    effect at the next restart. A config file that does not validate is
//!    reported and the one in force stays.
//! 3. The calendars directory and the jobs directory are read again through
//!    [`crate::config::reload::read_jobs`]: a broken file keeps its jobs'
//!    **last good version** in force; a removed file takes its jobs away
//!    (their waiting runs stay in the store and run if the job comes back).
//! 4. If anything changed, the new [`InForce`] is published: the dispatcher
//!    launches with it from its next pass, and
//!    [`crate::triggers::supervisor`] restarts the trigger tasks of the
//!    jobs that changed.
//! 5. The outcome goes to the log (one line per added, changed, removed or
//!    kept job, and each problem as `file:line:column: field: message`), to
//!    `/healthz` (`config`), and to `/metrics`
//!    (`kedge_config_reload_errors_total`,
//!    `kedge_config_last_reload_successful`).
//!
//! A file is always read whole before it is parsed, and a job changes
//! version only between dispatch passes, so no message runs against a
//! half-read file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::reload::{ReloadReport, ReloadRequest};
use crate::config::{self, DaemonConfig, Diagnostics, Job, JobsByName, Sources};
use crate::health::Health;

/// File events closer together than this are one change.
pub const SETTLE: Duration = Duration::from_millis(250);

/// The definitions in force: what the dispatcher and the triggers run.
#[derive(Debug, Clone)]
pub struct InForce {
    pub config: DaemonConfig,
    pub jobs: JobsByName,
    /// Bumped by each reload that changed something (0 at start).
    pub generation: u64,
}

/// Where a running daemon reads its definitions again from.
#[derive(Debug, Clone)]
pub struct ReloadFrom {
    /// The config file and the command-line overrides of jobs dir and store.
    pub sources: Sources,
    /// The config as read from the file at start, before flags that only
    /// `kedge run` takes (`--executor`, cluster flags): a field is "changed"
    /// when the file's value differs from this.
    pub started_with: DaemonConfig,
    /// Watch the files (inotify). Off: reload on `SIGHUP` and
    /// `POST /-/reload` only.
    pub watch: bool,
}

/// The reload task's state.
pub struct Reloader {
    from: ReloadFrom,
    in_force: watch::Sender<Arc<InForce>>,
    health: Health,
    /// Restart-only fields already reported (each is logged once).
    reported: BTreeSet<String>,
}

impl Reloader {
    pub fn new(from: ReloadFrom, in_force: watch::Sender<Arc<InForce>>, health: Health) -> Self {
        Reloader {
            from,
            in_force,
            health,
            reported: BTreeSet::new(),
        }
    }

    /// Reloads on file changes, `SIGHUP` and `requests` until `shutdown`.
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<ReloadRequest>,
        shutdown: CancellationToken,
    ) {
        let (file_tx, mut files) = mpsc::channel::<()>(64);
        // Kept alive for as long as the loop runs.
        let _watcher = if self.from.watch {
            self.watch_files(file_tx)
        } else {
            None
        };
        let mut hangups = hangup_signals();
        loop {
            let answer = tokio::select! {
                _ = shutdown.cancelled() => return,
                Some(()) = files.recv() => {
                    settle(&mut files).await;
                    tracing::info!("job or config files changed; reloading");
                    None
                }
                Some(()) = recv_hangup(&mut hangups) => {
                    tracing::info!("SIGHUP received; reloading");
                    None
                }
                Some(reply) = requests.recv() => {
                    tracing::info!("reload requested over HTTP");
                    Some(reply)
                }
            };
            let report = self.reload_once();
            if let Some(reply) = answer {
                // The asker may have gone (a timed-out client): nothing to tell.
                let _ = reply.send(report);
            }
        }
    }

    /// Reads everything again and publishes what changed.
    pub fn reload_once(&mut self) -> ReloadReport {
        let current = self.in_force.borrow().clone();
        let mut report = ReloadReport::default();
        let mut config = match config::load_daemon(&self.from.sources) {
            Ok(file) => {
                report.restart_needed = restart_only_changes(&self.from.started_with, &file);
                live_config(&current.config, &file)
            }
            Err(problems) => {
                report.problems.extend(lines(&problems));
                current.config.clone()
            }
        };
        // Calendars are read again with the jobs (the config file may be
        // broken; the calendars directory in force is read regardless).
        config.calendars = Arc::new(config::calendar::load_dir(&config.calendars_dir));
        let calendars_changed =
            format!("{:?}", config.calendars) != format!("{:?}", current.config.calendars);
        let read = config::reload::read_jobs(
            &config,
            current.jobs.values().map(|j| j.as_ref()),
            &config::env_var,
        );
        report.problems.extend(lines(&read.problems));
        report.kept = read.kept;
        let jobs: JobsByName = read
            .jobs
            .into_iter()
            .map(|j| (j.name.clone(), Arc::new(j)))
            .collect();
        diff(&current.jobs, &jobs, &mut report);
        let config_changed = config.max_active_runs != current.config.max_active_runs
            || config.pools != current.config.pools
            || calendars_changed;
        let changed = config_changed
            || !(report.added.is_empty() && report.changed.is_empty() && report.removed.is_empty());
        report.generation = current.generation + u64::from(changed);
        if changed {
            self.in_force.send_replace(Arc::new(InForce {
                config,
                jobs,
                generation: report.generation,
            }));
        }
        self.log(&report);
        self.health.reloaded(&report);
        report
    }

    fn log(&mut self, report: &ReloadReport) {
        for (what, names) in [
            ("added", &report.added),
            ("changed", &report.changed),
            ("removed", &report.removed),
        ] {
            for job in names {
                tracing::info!(%job, generation = report.generation, "job {what}");
            }
        }
        for job in &report.kept {
            tracing::warn!(%job, "job file is invalid; the last good version stays in force");
        }
        for problem in &report.problems {
            tracing::error!(%problem, "reload problem");
        }
        for field in &report.restart_needed {
            if self.reported.insert(field.clone()) {
                tracing::warn!(%field, "config field changed; it takes effect at the next restart");
            }
        }
        self.reported
            .retain(|f| report.restart_needed.iter().any(|r| r == f));
    }

    /// Watches the jobs directory and the config file's directory (a file
    /// replaced by rename, as editors and ConfigMap volumes do, is seen
    /// only by watching its directory). `None` when watching cannot start:
    /// reported, and SIGHUP still works.
    fn watch_files(&self, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
        use notify::{RecursiveMode, Watcher};
        let jobs_dir = self.in_force.borrow().config.jobs_dir.clone();
        let calendars_dir = self.in_force.borrow().config.calendars_dir.clone();
        let config_file = self.from.sources.config.clone().or_else(|| {
            let p = PathBuf::from(config::DEFAULT_CONFIG_PATH);
            p.exists().then_some(p)
        });
        let relevant = Relevant {
            jobs_dir: absolute(&jobs_dir),
            calendars_dir: absolute(&calendars_dir),
            config_file: config_file.as_deref().map(absolute),
        };
        let handler = move |event: notify::Result<notify::Event>| match event {
            Ok(e) if relevant.matches(&e) => {
                // Full: a reload is already coming.
                let _ = tx.try_send(());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "file watch error; SIGHUP still reloads"),
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch the job files; reload with SIGHUP or POST /-/reload");
                return None;
            }
        };
        let mut dirs = vec![jobs_dir];
        // No calendars directory is no calendars: nothing to watch.
        if calendars_dir.is_dir() {
            dirs.push(calendars_dir);
        }
        if let Some(parent) = config_file.as_deref().map(parent_dir) {
            dirs.push(parent);
        }
        dirs.dedup();
        for dir in dirs {
            if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
                tracing::error!(dir = %dir.display(), error = %e,
                    "cannot watch; reload with SIGHUP or POST /-/reload");
            }
        }
        Some(watcher)
    }
}

/// Which file events concern the definitions.
struct Relevant {
    jobs_dir: PathBuf,
    calendars_dir: PathBuf,
    config_file: Option<PathBuf>,
}

impl Relevant {
    fn matches(&self, e: &notify::Event) -> bool {
        if matches!(e.kind, notify::EventKind::Access(_)) {
            return false;
        }
        e.paths.iter().any(|p| {
            p.parent() == Some(self.jobs_dir.as_path())
                || p.parent() == Some(self.calendars_dir.as_path())
                || self.config_file.as_deref() == Some(p.as_path())
                // A ConfigMap volume swaps its `..data` symlink.
                || p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".."))
        })
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn parent_dir(p: &Path) -> PathBuf {
    match absolute(p).parent() {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("."),
    }
}

/// Waits until no file event came for [`SETTLE`].
async fn settle(files: &mut mpsc::Receiver<()>) {
    while let Ok(Some(())) = tokio::time::timeout(SETTLE, files.recv()).await {}
}

fn hangup_signals() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; reload with POST /-/reload");
            None
        }
    }
}

async fn recv_hangup(s: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

fn lines(problems: &Diagnostics) -> Vec<String> {
    problems.0.iter().map(|d| d.to_string()).collect()
}

/// The config in force after a reload: `current`, with the fields that
/// apply while running taken from the file.
fn live_config(current: &DaemonConfig, file: &DaemonConfig) -> DaemonConfig {
    DaemonConfig {
        max_active_runs: file.max_active_runs,
        pools: file.pools.clone(),
        ..current.clone()
    }
}

/// The restart-only fields whose value in the file differs from the one
/// the daemon started with.
fn restart_only_changes(started: &DaemonConfig, file: &DaemonConfig) -> Vec<String> {
    let fields: [(&str, String, String); 11] = [
        ("jobs_dir", dbg(&started.jobs_dir), dbg(&file.jobs_dir)),
        (
            "calendars_dir",
            dbg(&started.calendars_dir),
            dbg(&file.calendars_dir),
        ),
        ("guards", dbg(&started.guards), dbg(&file.guards)),
        ("store", dbg(&started.store_url), dbg(&file.store_url)),
        (
            "poll_interval",
            dbg(&started.poll_interval),
            dbg(&file.poll_interval),
        ),
        ("executor", dbg(&started.executor), dbg(&file.executor)),
        (
            "log_format",
            dbg(&started.log_format),
            dbg(&file.log_format),
        ),
        (
            "shutdown_timeout",
            dbg(&started.shutdown_timeout),
            dbg(&file.shutdown_timeout),
        ),
        ("http", dbg(&started.http_listen), dbg(&file.http_listen)),
        ("retention", dbg(&started.retention), dbg(&file.retention)),
        ("telemetry", dbg(&started.telemetry), dbg(&file.telemetry)),
    ];
    fields
        .into_iter()
        .filter(|(_, a, b)| a != b)
        .map(|(name, _, _)| name.to_string())
        .collect()
}

fn dbg(v: &impl std::fmt::Debug) -> String {
    format!("{v:?}")
}

/// Fills `report`'s added / changed / removed from the two job sets.
fn diff(old: &JobsByName, new: &JobsByName, report: &mut ReloadReport) {
    let version = |j: &Job| format!("{j:?}");
    for (name, job) in new {
        match old.get(name) {
            None => report.added.push(name.clone()),
            Some(o) if version(o) != version(job) => report.changed.push(name.clone()),
            Some(_) => {}
        }
    }
    report.removed = old
        .keys()
        .filter(|n| !new.contains_key(*n))
        .cloned()
        .collect();
    report.added.sort();
    report.changed.sort();
    report.removed.sort();
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: &str = "trigger:\n  queue:\n    builtin: {}\ntemplate:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{ name: m, command: [\"true\"] }]\n";

    struct Setup {
        dir: tempfile::TempDir,
        reloader: Reloader,
        rx: watch::Receiver<Arc<InForce>>,
    }

    fn setup(config_text: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let jobs = dir.path().join("jobs");
        std::fs::create_dir(&jobs).unwrap();
        std::fs::write(jobs.join("a.yaml"), format!("name: a\n{JOB}")).unwrap();
        let cfg = dir.path().join("kedge.yaml");
        std::fs::write(&cfg, config_text).unwrap();
        let sources = Sources {
            config: Some(cfg),
            jobs: Some(jobs),
            store: None,
            calendars: None,
        };
        let started = config::load_daemon(&sources).unwrap();
        let (loaded, _) = config::load_jobs(&started);
        let (tx, rx) = watch::channel(Arc::new(InForce {
            config: started.clone(),
            jobs: loaded
                .into_iter()
                .map(|j| (j.name.clone(), Arc::new(j)))
                .collect(),
            generation: 0,
        }));
        let from = ReloadFrom {
            sources,
            started_with: started,
            watch: false,
        };
        Setup {
            dir,
            reloader: Reloader::new(from, tx, Health::default()),
            rx,
        }
    }

    #[test]
    fn nothing_changed_publishes_nothing() {
        let mut s = setup("limits: { max_active_runs: 4 }\n");
        let r = s.reloader.reload_once();
        assert_eq!(r, ReloadReport::default());
        assert!(!s.rx.has_changed().unwrap());
    }

    #[test]
    fn added_changed_and_removed_jobs_are_published_in_one_generation() {
        let mut s = setup("limits: { max_active_runs: 4 }\n");
        let jobs = s.dir.path().join("jobs");
        std::fs::write(jobs.join("b.yaml"), format!("name: b\n{JOB}")).unwrap();
        std::fs::write(jobs.join("a.yaml"), format!("name: a\npriority: 3\n{JOB}")).unwrap();
        let r = s.reloader.reload_once();
        assert_eq!(
            (r.added.clone(), r.changed.clone()),
            (vec!["b".into()], vec!["a".into()])
        );
        assert_eq!(r.generation, 1);
        assert!(s.rx.has_changed().unwrap());
        assert_eq!(s.rx.borrow_and_update().jobs["a"].priority, 3);

        std::fs::remove_file(jobs.join("b.yaml")).unwrap();
        let r = s.reloader.reload_once();
        assert_eq!(r.removed, ["b"]);
        assert_eq!(r.generation, 2);
    }

    #[test]
    fn the_config_applies_limits_live_and_names_the_fields_that_need_a_restart() {
        let mut s = setup("limits: { max_active_runs: 4 }\n");
        std::fs::write(
            s.dir.path().join("kedge.yaml"),
            "limits: { max_active_runs: 9 }\npools: { db: 2 }\nstore: { poll_interval: 7s }\n",
        )
        .unwrap();
        let r = s.reloader.reload_once();
        assert_eq!(r.restart_needed, ["poll_interval"]);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let now = s.rx.borrow_and_update().clone();
        assert_eq!(now.config.max_active_runs, Some(9));
        assert_eq!(now.config.pools.get("db"), Some(&2));
        assert_ne!(
            now.config.poll_interval,
            Duration::from_secs(7),
            "poll_interval waits for a restart"
        );
    }

    #[test]
    fn a_broken_config_file_keeps_the_config_in_force_and_says_where() {
        let mut s = setup("limits: { max_active_runs: 4 }\n");
        std::fs::write(
            s.dir.path().join("kedge.yaml"),
            "limits: { max_active_runs: lots }\n",
        )
        .unwrap();
        let r = s.reloader.reload_once();
        assert!(!r.ok());
        assert!(r.problems[0].contains("kedge.yaml:1:"), "{:?}", r.problems);
        assert!(!s.rx.has_changed().unwrap());
    }

    #[test]
    fn a_broken_job_file_keeps_its_job_and_is_reported() {
        let mut s = setup("limits: { max_active_runs: 4 }\n");
        std::fs::write(s.dir.path().join("jobs/a.yaml"), "name: a\ntrigger: {\n").unwrap();
        let r = s.reloader.reload_once();
        assert_eq!(r.kept, ["a"]);
        assert!(r.problems[0].contains("a.yaml:"), "{:?}", r.problems);
        assert!(r.changed.is_empty() && r.removed.is_empty());
    }

    #[test]
    fn only_definition_events_in_the_watched_places_count() {
        let dir = tempfile::tempdir().unwrap();
        let rel = Relevant {
            jobs_dir: dir.path().join("jobs"),
            calendars_dir: dir.path().join("calendars"),
            config_file: Some(dir.path().join("kedge.yaml")),
        };
        let ev = |p: PathBuf| notify::Event::new(notify::EventKind::Any).add_path(p);
        assert!(rel.matches(&ev(dir.path().join("jobs/a.yaml"))));
        assert!(rel.matches(&ev(dir.path().join("calendars/bank.yaml"))));
        assert!(rel.matches(&ev(dir.path().join("kedge.yaml"))));
        assert!(rel.matches(&ev(dir.path().join("..data"))));
        assert!(!rel.matches(&ev(dir.path().join("notes.txt"))));
        let read = notify::Event::new(notify::EventKind::Access(notify::event::AccessKind::Any))
            .add_path(dir.path().join("jobs/a.yaml"));
        assert!(!rel.matches(&read));
    }
}
