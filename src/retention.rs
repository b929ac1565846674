//! Retention: the store does not grow for ever. Finished history is deleted
//! after `retention.history`, payloads of succeeded work are cleared after
//! `retention.payloads`, and local run folders go with their runs.
//!
//! # Expected flow
//!
//! The daemon runs a [`Pruner::pass`] at start and then every
//! `retention.interval` ([`Pruner::run`]); `kedge prune` runs one by hand
//! and `kedge prune --dry-run` a [`Pruner::preview`]. A pass reads "now"
//! from the store's [`crate::clock::Clock`] once, then works through the
//! tables in batches of [`BATCH`] rows, each batch a transaction of its own
//! with a short pause after it, so dispatch and intake (which share
//! SQLite's one connection) are never held up for more than one batch:
//!
//! 1. prunable work items with their runs, batch members, dead letters and
//!    cron fires (`store::retention` has the exact rules), then the local
//!    folders of the runs deleted;
//! 2. dead letters closed (replayed, or forwarded to their broker) before
//!    the history cutoff whose work item stays;
//! 3. cron fires recorded before the cutoff whose work item is gone, except
//!    each job's latest (the scheduler resumes from it);
//! 4. payloads of work items that succeeded before the payloads cutoff, and
//!    of dead letters replayed before it.
//!
//! # Guarantees
//!
//! - Nothing unfinished is pruned: a work item that is `queued` or
//!   `replayed`, a run that is `pending` or `running`, a dead letter neither
//!   replayed nor forwarded, and a batch while any member must stay.
//! - A pass that fails part-way (the store unreachable) leaves whole
//!   batches deleted and the rest for the next pass.
//!
//! # Caveats
//!
//! - **The dedup window is `history`.** Intake recognises a redelivered
//!   message by its stored work item; once that is pruned, a redelivery of
//!   the same message id is accepted as new and runs again.
//! - Sizing learns its rate model from the runs still kept.
//! - A replayed dead letter sent back to a broker source is forgotten
//!   after `history` like any closed letter; one forwarded to its broker's
//!   dead-letter target lives on there, not in `kedge dlq list`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::daemon::RetentionConfig;
use crate::store::{Pruned, Store, StoreError};

/// Rows per statement (and per transaction): small enough that a batch
/// holds the store for milliseconds.
pub const BATCH: i64 = 500;

/// The pause after each batch, so queued dispatch and intake statements
/// get the store first.
const PAUSE: Duration = Duration::from_millis(5);

/// What a pass deleted (or a preview would), per table, and the local run
/// folders removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub rows: Pruned,
    pub run_folders: u64,
}

impl Report {
    /// True when the pass changed nothing.
    pub fn is_empty(&self) -> bool {
        *self == Report::default()
    }
}

/// Prunes one store under one [`RetentionConfig`].
#[derive(Debug, Clone)]
pub struct Pruner {
    store: Store,
    policy: RetentionConfig,
    /// The local executor's `work_dir` (run folders are `<work_dir>/<run
    /// id>`); `None` when runs are Kubernetes Jobs.
    run_dir: Option<PathBuf>,
}

impl Pruner {
    pub fn new(store: Store, policy: RetentionConfig, run_dir: Option<PathBuf>) -> Pruner {
        Pruner {
            store,
            policy,
            run_dir,
        }
    }

    /// The history and payloads cutoffs now (Unix ms): rows older go.
    fn cutoffs(&self) -> (i64, i64) {
        let now = self.store.clock().now_ms();
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        (
            now.saturating_sub(ms(self.policy.history)),
            now.saturating_sub(ms(self.policy.payloads)),
        )
    }

    /// One pass (see the module docs). Stops between batches when `stop`
    /// is cancelled, returning what was done so far.
    pub async fn pass(&self, stop: &CancellationToken) -> Result<Report, StoreError> {
        let (history, payloads) = self.cutoffs();
        let store = &self.store;
        let mut report = Report::default();
        loop {
            if stop.is_cancelled() {
                return Ok(report);
            }
            let batch = store.prune_items(history, BATCH).await?;
            report.rows += batch.counts;
            report.run_folders += self.remove_folders(&batch.run_ids).await;
            if batch.counts.work_items < BATCH as u64 {
                break;
            }
            tokio::time::sleep(PAUSE).await;
        }
        let rows = &mut report.rows;
        rows.dead_letters += drain(stop, || store.prune_dead_letters(history, BATCH)).await?;
        rows.cron_fires += drain(stop, || store.prune_cron_fires(history, BATCH)).await?;
        rows.work_item_payloads += drain(stop, || store.clear_payloads(payloads, BATCH)).await?;
        rows.dead_letter_payloads +=
            drain(stop, || store.clear_letter_payloads(payloads, BATCH)).await?;
        Ok(report)
    }

    /// What a pass would do now, changing nothing.
    pub async fn preview(&self) -> Result<Report, StoreError> {
        let (history, payloads) = self.cutoffs();
        let rows = self.store.prune_preview(history, payloads).await?;
        let mut run_folders = 0;
        if let Some(dir) = &self.run_dir {
            // A stat per run, on the CLI's own runtime: nothing else waits.
            self.store
                .each_prunable_run(history, |run_id| {
                    if folder(dir, run_id).is_some_and(|f| f.is_dir()) {
                        run_folders += 1;
                    }
                })
                .await?;
        }
        Ok(Report { rows, run_folders })
    }

    /// Runs a pass now and then every `interval` until `shutdown`, logging
    /// what each pruned. A failed pass is logged and tried again at the
    /// next interval.
    pub async fn run(self, shutdown: CancellationToken) {
        self.run_reporting(shutdown, watch::Sender::new(0)).await
    }

    /// [`Pruner::run`], counting finished passes on `passes`.
    pub async fn run_reporting(self, shutdown: CancellationToken, passes: watch::Sender<u64>) {
        loop {
            match self.pass(&shutdown).await {
                Ok(r) if r.is_empty() => tracing::debug!("retention: nothing to prune"),
                Ok(r) => tracing::info!(
                    work_items = r.rows.work_items,
                    runs = r.rows.runs,
                    batch_members = r.rows.batch_members,
                    dead_letters = r.rows.dead_letters,
                    cron_fires = r.rows.cron_fires,
                    payloads_cleared = r.rows.work_item_payloads + r.rows.dead_letter_payloads,
                    run_folders = r.run_folders,
                    "retention: pruned finished history"
                ),
                Err(e) => tracing::error!(
                    error = %crate::error_chain(&e),
                    retry_in = ?self.policy.interval,
                    "retention: pruning failed"
                ),
            }
            passes.send_modify(|n| *n += 1);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.policy.interval) => {}
            }
        }
    }

    /// Removes the local folders of deleted runs; returns how many there
    /// were. A run without a folder (launched on Kubernetes, or removed by
    /// hand) is not an error; a folder that cannot be removed is logged and
    /// left (its run is gone already, so it is not tried again).
    async fn remove_folders(&self, run_ids: &[String]) -> u64 {
        let Some(dir) = &self.run_dir else {
            return 0;
        };
        let mut removed = 0;
        for run_id in run_ids {
            let Some(path) = folder(dir, run_id) else {
                tracing::warn!(run = %run_id, "retention: not a plain run id; its folder is left alone");
                continue;
            };
            match tokio::fs::remove_dir_all(&path).await {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(
                    folder = %path.display(),
                    error = %e,
                    "retention: cannot remove a pruned run's folder; remove it by hand"
                ),
            }
        }
        removed
    }
}

/// `<dir>/<run_id>`, when the run id is one path component (run ids are
/// DNS-1123 names, but they come from the store).
fn folder(dir: &Path, run_id: &str) -> Option<PathBuf> {
    let plain = !run_id.is_empty()
        && run_id != "."
        && run_id != ".."
        && !run_id.contains(['/', '\\', '\0']);
    plain.then(|| dir.join(run_id))
}

/// Runs `batch` until it changes fewer than [`BATCH`] rows (or `stop`),
/// pausing between; returns the rows changed.
async fn drain<F, Fut>(stop: &CancellationToken, mut batch: F) -> Result<u64, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, StoreError>>,
{
    let mut total = 0;
    while !stop.is_cancelled() {
        let n = batch().await?;
        total += n;
        if n < BATCH as u64 {
            break;
        }
        tokio::time::sleep(PAUSE).await;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::lifecycle::TriggerKind;
    use crate::store::{Intake, NewWorkItem, Settlement};
    use chrono::{DateTime, Utc};

    const DAY: Duration = Duration::from_secs(86_400);

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .to_utc()
    }

    /// Stores `n` builtin-queue messages `{prefix}{i}` and runs each to
    /// success at once; returns their run ids.
    async fn succeeded(store: &Store, prefix: &str, n: usize) -> Vec<String> {
        let items: Vec<(NewWorkItem, Intake)> = (0..n)
            .map(|i| {
                let item = NewWorkItem {
                    job: "q".into(),
                    source: "builtin".into(),
                    message_id: format!("{prefix}{i}"),
                    payload: Some("{}".into()),
                    deadline_ms: None,
                    trigger: TriggerKind::Queue,
                    run_id: format!("q-{prefix}{i}"),
                    scheduled_ms: 0,
                };
                (item, Intake::Run)
            })
            .collect();
        store.intake_many(&items).await.unwrap();
        let run_ids: Vec<String> = items.iter().map(|(i, _)| i.run_id.clone()).collect();
        let now = store.clock().now_ms();
        let refs: Vec<&str> = run_ids.iter().map(String::as_str).collect();
        store.claim_runs(&refs, now).await.unwrap();
        for r in &run_ids {
            assert!(store.settle(r, &Settlement::Succeeded, now).await.unwrap());
        }
        run_ids
    }

    async fn count(store: &Store) -> usize {
        store.list_runs(None, None, 100_000).await.unwrap().len()
    }

    /// More than one batch of old work is pruned in one pass, batch by
    /// batch, with every run folder. (Fixed clocks: the work is done "on
    /// 1 January", pruned "31 days later".)
    #[tokio::test]
    async fn a_pass_prunes_every_batch() {
        let store = crate::testing::store().await;
        let dir = tempfile::tempdir().unwrap();
        let n = 2 * BATCH as usize + 3;
        let early = store.clone().with_clock(Clock::paused_at(t0()));
        for run_id in succeeded(&early, "m", n).await {
            std::fs::create_dir_all(dir.path().join(run_id)).unwrap();
        }
        let later = store.with_clock(Clock::paused_at(t0() + 31 * DAY));
        let pruner = Pruner::new(
            later.clone(),
            RetentionConfig::default(),
            Some(dir.path().to_path_buf()),
        );
        let report = pruner.pass(&CancellationToken::new()).await.unwrap();
        assert_eq!(
            (report.rows.work_items, report.rows.runs, report.run_folders),
            (n as u64, n as u64, n as u64)
        );
        assert_eq!(count(&later).await, 0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// Holds tokio's paused clock still while it lives (a task that only
    /// yields keeps the runtime from parking, so time never auto-advances
    /// while a store query waits on SQLite's thread).
    struct ManualTime(tokio::task::JoinHandle<()>);

    impl Drop for ManualTime {
        fn drop(&mut self) {
            self.0.abort();
        }
    }

    fn manual_time() -> ManualTime {
        ManualTime(tokio::spawn(async {
            loop {
                tokio::task::yield_now().await;
            }
        }))
    }

    /// The daemon's loop prunes at start and then every `interval`, by the
    /// store's clock: work finishing later goes once it is `history` old.
    #[tokio::test(start_paused = true)]
    async fn the_loop_prunes_every_interval() {
        let _time = manual_time();
        let store = crate::testing::store()
            .await
            .with_clock(Clock::paused_at(t0()));
        let policy = RetentionConfig {
            history: Duration::from_secs(3600),
            payloads: Duration::from_secs(60),
            interval: Duration::from_secs(600),
        };
        succeeded(&store, "early", 3).await;
        tokio::time::advance(Duration::from_secs(3601)).await;
        succeeded(&store, "late", 2).await;
        tokio::time::advance(Duration::from_secs(1)).await;
        let (passes, mut done) = watch::channel(0);
        let shutdown = CancellationToken::new();
        let pruner = Pruner::new(store.clone(), policy, None);
        let task = tokio::spawn(pruner.run_reporting(shutdown.clone(), passes));
        // The pass at start: the early ones are an hour old.
        done.wait_for(|n| *n == 1).await.unwrap();
        assert_eq!(count(&store).await, 2);
        // Five intervals on (50 min), the late ones are not yet an hour old;
        // the sixth pass (60 min and 1 s) takes them.
        for pass in 2..=7 {
            tokio::time::advance(policy.interval).await;
            done.wait_for(|n| *n == pass).await.unwrap();
            let left = if pass < 7 { 2 } else { 0 };
            assert_eq!(count(&store).await, left, "after pass {pass}");
        }
        shutdown.cancel();
        task.await.unwrap();
    }

    #[test]
    fn only_plain_run_ids_name_a_folder() {
        let dir = Path::new("/w");
        assert_eq!(
            folder(dir, "job-1a2b-1"),
            Some(PathBuf::from("/w/job-1a2b-1"))
        );
        for bad in ["", ".", "..", "../x", "a/b", "a\\b"] {
            assert_eq!(folder(dir, bad), None, "{bad:?}");
        }
    }
}
