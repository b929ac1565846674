//! Tracking: one kube-runtime watcher over kedge's label selector keeps a
//! view of every Job of this instance and reports each tracked run's end.
//!
//! - A run is *tracked* from just before its Job is created (or from its
//!   adoption) until its outcome is reported; then it *awaits settling*
//!   until the daemon has stored the outcome ([`Tracker::finish`]); then
//!   its Job joins the job's *history*, which cleanup trims.
//! - The outcome comes from the Job's terminal condition (`Complete` or
//!   `Failed` with status `True`). The interim conditions
//!   (`SuccessCriteriaMet`, `FailureTarget`) are not terminal: pods may
//!   still be running.
//! - A DELETED event carries the Job's last state, so a Job removed by its
//!   TTL before kedge saw it finish still reports its real outcome. A Job
//!   deleted unfinished (by hand, or by [`Tracker::mark_cancelled`]) ends
//!   the run as `JobDeleted` (or `Cancelled`).
//! - After a relist (start, or 410 Gone), a tracked Job created before the
//!   list began and absent from it vanished while the watch was down; its
//!   run ends as `JobVanished` (retried like any failure).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::pods::{self, timestamp, RunPods};
use crate::executor::render::LABEL_JOB;
use crate::executor::{Outcome, OutcomeKind, Progress};

/// What kedge keeps of one Job.
#[derive(Debug, Clone)]
struct View {
    uid: Option<String>,
    /// The kedge job (`kedge.dev/job` label).
    job: String,
    /// The run's attempt (`KEDGE_ATTEMPT` in its pod template), for logs.
    attempt: i64,
    parallelism: u32,
    completions: u32,
    /// Successful completions (completed indexes for Indexed Jobs).
    done: u32,
    /// Indexed Jobs: the completed indexes.
    completed: Vec<i32>,
    started: Option<DateTime<Utc>>,
    /// The terminal outcome and the completed indexes, once finished.
    end: Option<(OutcomeKind, Vec<i32>)>,
    finished: Option<DateTime<Utc>>,
}

/// `KEDGE_ATTEMPT` of a Job's first container (0 when absent).
fn attempt_of(spec: Option<&k8s_openapi::api::batch::v1::JobSpec>) -> i64 {
    spec.and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first())
        .and_then(|c| c.env.as_ref())
        .and_then(|env| env.iter().find(|e| e.name == "KEDGE_ATTEMPT"))
        .and_then(|e| e.value.as_deref())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl View {
    fn of(job: &Job) -> View {
        let spec = job.spec.as_ref();
        let status = job.status.as_ref();
        let indexed = spec.and_then(|s| s.completion_mode.as_deref()) == Some("Indexed");
        let completed = status
            .and_then(|s| s.completed_indexes.as_deref())
            .map(parse_indexes)
            .unwrap_or_default();
        let done = if indexed {
            completed.len() as u32
        } else {
            status.and_then(|s| s.succeeded).unwrap_or(0).max(0) as u32
        };
        let condition = |kind: &str| {
            status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == kind && c.status == "True"))
        };
        let end = if condition("Complete").is_some() {
            Some(OutcomeKind::Succeeded)
        } else {
            condition("Failed").map(|c| OutcomeKind::Failed {
                reason: c.reason.clone().unwrap_or_else(|| "Failed".into()),
                message: c.message.clone().unwrap_or_default(),
            })
        };
        let finished = condition("Complete")
            .or_else(|| condition("Failed"))
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| timestamp(&t.0));
        View {
            uid: job.metadata.uid.clone(),
            job: job
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_JOB))
                .cloned()
                .unwrap_or_default(),
            attempt: attempt_of(spec),
            parallelism: spec.and_then(|s| s.parallelism).unwrap_or(1).max(0) as u32,
            completions: spec.and_then(|s| s.completions).unwrap_or(1).max(1) as u32,
            done,
            completed: if indexed {
                completed.clone()
            } else {
                Vec::new()
            },
            started: status
                .and_then(|s| s.start_time.as_ref())
                .or(job.metadata.creation_timestamp.as_ref())
                .map(|t| timestamp(&t.0)),
            end: end.map(|e| (e, if indexed { completed } else { Vec::new() })),
            finished,
        }
    }
}

/// `status.completedIndexes` (`"1,3-5,7"`) → `[1, 3, 4, 5, 7]`. A part
/// that is not an index or a range is logged and left out: its indexes
/// count as not completed, so their messages are retried, never lost.
pub fn parse_indexes(s: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parsed = match part.split_once('-') {
            Some((a, b)) => match (a.parse::<i32>(), b.parse::<i32>()) {
                (Ok(a), Ok(b)) => Some(a..=b),
                _ => None,
            },
            None => part.parse::<i32>().ok().map(|i| i..=i),
        };
        match parsed {
            Some(range) => out.extend(range),
            None => tracing::warn!(completed_indexes = %s, %part,
                "a part of a Job's completedIndexes is not an index; its indexes count as not completed"),
        }
    }
    out
}

#[derive(Debug, Default)]
struct Tracked {
    /// When the create (or adoption) was confirmed.
    created_at: Option<Instant>,
    /// When the Job began, for start timeouts: the confirmed create (the
    /// API's timestamps have whole seconds), or an adopted Job's start.
    began: Option<DateTime<Utc>>,
    cancelled: bool,
}

#[derive(Default)]
struct State {
    /// Every Job of this instance the watcher has seen, by name.
    jobs: HashMap<String, View>,
    /// Runs whose outcome is not reported yet.
    runs: HashMap<String, Tracked>,
    /// Reported, not settled yet: run → whether its Job finished (so it
    /// joins the history) and succeeded.
    reported: HashMap<String, Option<bool>>,
    /// Per kedge job: finished Jobs whose runs are settled, oldest first
    /// (succeeded, failed).
    history: HashMap<String, (VecDeque<String>, VecDeque<String>)>,
    /// The relist in progress: when it began and what it listed so far.
    relist: Option<(Instant, HashSet<String>)>,
    /// Per run: its pods not finished, and when one last ran.
    pods: HashMap<String, RunPods>,
    /// Per Job name: the Job controller's latest `FailedCreate` message.
    refused: HashMap<String, String>,
}

impl State {
    /// Ends a tracked run (if it is) with `kind`.
    fn end(&mut self, run_id: &str, kind: OutcomeKind, indexes: Vec<i32>) -> Option<Outcome> {
        self.runs.remove(run_id)?;
        self.pods.remove(run_id);
        let finished = match &kind {
            OutcomeKind::Succeeded => Some(true),
            OutcomeKind::Failed { reason, .. }
                if reason != "JobDeleted" && reason != "JobVanished" && reason != "NameTaken" =>
            {
                Some(false)
            }
            _ => None,
        };
        self.reported.insert(run_id.to_string(), finished);
        Some(Outcome {
            run_id: run_id.to_string(),
            kind,
            completed_indexes: indexes,
        })
    }

    fn apply(&mut self, job: &Job) -> Option<Outcome> {
        let name = job.metadata.name.clone()?;
        let view = View::of(job);
        if let Some((_, seen)) = &mut self.relist {
            seen.insert(name.clone());
        }
        let end = view.end.clone();
        self.jobs.insert(name.clone(), view);
        let (kind, indexes) = end?;
        self.end(&name, kind, indexes)
    }

    fn delete(&mut self, name: &str, last: Option<View>) -> Option<Outcome> {
        let last = last.or_else(|| self.jobs.get(name).cloned());
        self.jobs.remove(name);
        if let Some(v) = &last {
            if let Some((s, f)) = self.history.get_mut(&v.job) {
                s.retain(|n| n != name);
                f.retain(|n| n != name);
            }
        }
        let tracked = self.runs.get(name)?;
        let cancelled = tracked.cancelled;
        match last.and_then(|v| v.end) {
            Some((kind, indexes)) => self.end(name, kind, indexes),
            None if cancelled => self.end(name, OutcomeKind::Cancelled, Vec::new()),
            None => self.end(
                name,
                OutcomeKind::Failed {
                    reason: "JobDeleted".into(),
                    message: "the Job was deleted before it finished".into(),
                },
                Vec::new(),
            ),
        }
    }

    /// A relist ended: Jobs not listed are gone.
    fn relisted(&mut self) -> Vec<Outcome> {
        let Some((began, seen)) = self.relist.take() else {
            return Vec::new();
        };
        let gone: Vec<String> = self
            .jobs
            .keys()
            .filter(|n| !seen.contains(*n))
            .cloned()
            .collect();
        let mut out: Vec<Outcome> = gone.iter().filter_map(|n| self.delete(n, None)).collect();
        // Tracked runs confirmed created before the list began, but never
        // seen at all: they vanished while the watch was down.
        let vanished: Vec<String> = self
            .runs
            .iter()
            .filter(|(n, t)| t.created_at.is_some_and(|c| c < began) && !self.jobs.contains_key(*n))
            .map(|(n, _)| n.clone())
            .collect();
        for n in vanished {
            let cancelled = self.runs.get(&n).is_some_and(|t| t.cancelled);
            let kind = if cancelled {
                OutcomeKind::Cancelled
            } else {
                OutcomeKind::Failed {
                    reason: "JobVanished".into(),
                    message:
                        "the Job disappeared while kedge was not watching; its result is unknown"
                            .into(),
                }
            };
            out.extend(self.end(&n, kind, Vec::new()));
        }
        out
    }
}

/// The watcher task and the view it keeps.
pub struct Tracker {
    state: Arc<Mutex<State>>,
    outcomes: mpsc::Sender<Outcome>,
    synced: watch::Receiver<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Tracker {
    /// Starts watching Jobs matching `selector` until `stop`.
    pub fn start(
        api: Api<Job>,
        pods: Api<Pod>,
        events: Api<Event>,
        selector: String,
        watch_timeout: u32,
        outcomes: mpsc::Sender<Outcome>,
        stop: CancellationToken,
    ) -> Tracker {
        let state = Arc::new(Mutex::new(State::default()));
        let (synced_tx, synced) = watch::channel(false);
        tokio::spawn(watch_pods(
            pods,
            watcher::Config::default()
                .labels(&selector)
                .timeout(watch_timeout),
            state.clone(),
            stop.clone(),
        ));
        tokio::spawn(watch_events(
            events,
            watcher::Config::default()
                .fields("reason=FailedCreate,involvedObject.kind=Job")
                .timeout(watch_timeout),
            state.clone(),
            stop.clone(),
        ));
        let task = tokio::spawn(watch_jobs(
            api,
            watcher::Config::default()
                .labels(&selector)
                .timeout(watch_timeout),
            state.clone(),
            outcomes.clone(),
            synced_tx,
            stop,
        ));
        Tracker {
            state,
            outcomes,
            synced,
            task: Mutex::new(Some(task)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn track(&self, run_id: &str) {
        self.lock()
            .runs
            .insert(run_id.to_string(), Tracked::default());
    }

    pub fn untrack(&self, run_id: &str) {
        self.lock().runs.remove(run_id);
    }

    /// The kedge job and attempt of run `run_id`'s Job, as the watcher
    /// last saw it (for log lines that know only the run id).
    pub fn job_and_attempt(&self, run_id: &str) -> (String, i64) {
        self.lock()
            .jobs
            .get(run_id)
            .map(|v| (v.job.clone(), v.attempt))
            .unwrap_or_default()
    }

    pub fn is_tracked(&self, run_id: &str) -> bool {
        self.lock().runs.contains_key(run_id)
    }

    /// The create (or adoption) of a tracked run's Job is confirmed. A Job
    /// the watcher already saw finish is reported now.
    pub async fn created(&self, run_id: &str) {
        let outcome = {
            let mut s = self.lock();
            if let Some(t) = s.runs.get_mut(run_id) {
                t.created_at = Some(Instant::now());
                t.began = Some(Utc::now());
            }
            match s.jobs.get(run_id).and_then(|v| v.end.clone()) {
                Some((kind, indexes)) => s.end(run_id, kind, indexes),
                None => None,
            }
        };
        self.send(outcome).await;
    }

    /// Reports `kind` for a tracked run now.
    pub async fn report(&self, run_id: &str, kind: OutcomeKind) {
        let outcome = self.lock().end(run_id, kind, Vec::new());
        self.send(outcome).await;
    }

    async fn send(&self, outcome: Option<Outcome>) {
        if let Some(o) = outcome {
            // The receiver closes only when the daemon has stopped settling;
            // the run stays `running` in the store and the next daemon's
            // recovery reads its outcome from the Job.
            let _ = self.outcomes.send(o).await;
        }
    }

    /// Marks a tracked run as cancelled (its deletion reports `Cancelled`).
    /// False when it is not tracked.
    pub fn mark_cancelled(&self, run_id: &str) -> bool {
        match self.lock().runs.get_mut(run_id) {
            Some(t) => {
                t.cancelled = true;
                true
            }
            None => false,
        }
    }

    pub fn uid_of(&self, name: &str) -> Option<String> {
        self.lock().jobs.get(name).and_then(|v| v.uid.clone())
    }

    pub fn progress(&self, run_id: &str) -> Option<Progress> {
        let s = self.lock();
        let began = s.runs.get(run_id)?.began;
        let v = s.jobs.get(run_id)?;
        let now = Utc::now();
        // A start or pending time ahead of this clock (skew with the API
        // server) reads as zero time elapsed.
        let elapsed = v
            .started
            .map(|t| (now - t).to_std().unwrap_or_default())
            .unwrap_or_default();
        let run_pods = s.pods.get(run_id);
        let refused = s.refused.get(run_id).map(String::as_str);
        Some(Progress {
            completed: v.done,
            total: v.completions,
            parallelism: v.parallelism,
            elapsed,
            pending_for: run_pods.and_then(|p| p.pending_for(now)),
            stall: match v.end {
                Some(_) => None,
                None => pods::stall(began.or(v.started), run_pods, refused, now),
            },
        })
    }

    /// Ends a tracked run that is given up on with `kind`, keeping the
    /// indexes its Job completed. Its Job is being deleted, so it does not
    /// join the history. False when it is not tracked.
    pub async fn abandon(&self, run_id: &str, kind: OutcomeKind) -> bool {
        let outcome = {
            let mut s = self.lock();
            let indexes = s
                .jobs
                .get(run_id)
                .map(|v| v.completed.clone())
                .unwrap_or_default();
            let outcome = s.end(run_id, kind, indexes);
            if outcome.is_some() {
                s.reported.insert(run_id.to_string(), None);
            }
            outcome
        };
        let ended = outcome.is_some();
        self.send(outcome).await;
        ended
    }

    /// Waits until the first full list has arrived.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let mut rx = self.synced.clone();
        tokio::time::timeout(timeout, rx.wait_for(|s| *s))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// At start, after the first list: tracks each of `run_ids` whose Job
    /// exists (reporting those already finished) and returns the others.
    /// Finished Jobs of no tracked run become history, oldest first.
    pub async fn adopt(&self, run_ids: &[String]) -> Vec<String> {
        let mut relaunch = Vec::new();
        let mut outcomes = Vec::new();
        {
            let mut s = self.lock();
            for id in run_ids {
                if !s.jobs.contains_key(id) {
                    relaunch.push(id.clone());
                    continue;
                }
                let began = s.jobs.get(id).and_then(|v| v.started);
                s.runs.insert(
                    id.clone(),
                    Tracked {
                        created_at: Some(Instant::now()),
                        began,
                        cancelled: false,
                    },
                );
                if let Some((kind, indexes)) = s.jobs.get(id).and_then(|v| v.end.clone()) {
                    outcomes.extend(s.end(id, kind, indexes));
                }
            }
            let mut finished: Vec<(DateTime<Utc>, String, String, bool)> = s
                .jobs
                .iter()
                .filter(|(n, _)| !s.runs.contains_key(*n) && !s.reported.contains_key(*n))
                .filter_map(|(n, v)| {
                    let ok = matches!(v.end.as_ref()?.0, OutcomeKind::Succeeded);
                    Some((v.finished.unwrap_or_default(), n.clone(), v.job.clone(), ok))
                })
                .collect();
            finished.sort();
            s.history.clear();
            for (_, name, job, ok) in finished {
                let (succ, fail) = s.history.entry(job).or_default();
                if ok { succ } else { fail }.push_back(name);
            }
        }
        for o in outcomes {
            self.send(Some(o)).await;
        }
        relaunch
    }

    /// The daemon stored a reported outcome. Returns true when the run's
    /// Job joined the history (so the history may need trimming).
    pub fn finish(&self, run_id: &str) -> bool {
        let mut s = self.lock();
        let Some(Some(ok)) = s.reported.remove(run_id) else {
            return false;
        };
        let Some(job) = s.jobs.get(run_id).map(|v| v.job.clone()) else {
            return false;
        };
        let (succ, fail) = s.history.entry(job).or_default();
        if ok { succ } else { fail }.push_back(run_id.to_string());
        true
    }

    /// The oldest finished Jobs beyond the limits, taken out of the history
    /// (the caller deletes them): (kedge job, Job name, succeeded).
    pub fn excess_history(&self, succeeded: usize, failed: usize) -> Vec<(String, String, bool)> {
        let mut s = self.lock();
        let mut out = Vec::new();
        for (job, (succ, fail)) in s.history.iter_mut() {
            while succ.len() > succeeded {
                out.extend(succ.pop_front().map(|n| (job.clone(), n, true)));
            }
            while fail.len() > failed {
                out.extend(fail.pop_front().map(|n| (job.clone(), n, false)));
            }
        }
        out
    }

    /// A history deletion failed: the Job goes back to the front of its
    /// history, for the next trim to try again.
    pub fn history_delete_failed(&self, job: String, name: String, succeeded: bool) {
        let mut s = self.lock();
        if !s.jobs.contains_key(&name) {
            return; // gone meanwhile (its TTL, or by hand)
        }
        let (succ, fail) = s.history.entry(job).or_default();
        if succeeded { succ } else { fail }.push_front(name);
    }

    /// Waits for the watcher task to end (after the stop token).
    pub async fn stopped(&self) {
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = task {
            if let Err(e) = t.await {
                tracing::error!(error = %e, "the Job watcher task ended abnormally");
            }
        }
    }
}

async fn watch_jobs(
    api: Api<Job>,
    config: watcher::Config,
    state: Arc<Mutex<State>>,
    outcomes: mpsc::Sender<Outcome>,
    synced: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let stream = watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = stream.next() => e,
        };
        let Some(event) = event else { return };
        let out: Vec<Outcome> = {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            match event {
                Ok(watcher::Event::Init) => {
                    s.relist = Some((Instant::now(), HashSet::new()));
                    Vec::new()
                }
                Ok(watcher::Event::InitApply(job)) | Ok(watcher::Event::Apply(job)) => {
                    s.apply(&job).into_iter().collect()
                }
                Ok(watcher::Event::Delete(job)) => match job.metadata.name.clone() {
                    Some(name) => s.delete(&name, Some(View::of(&job))).into_iter().collect(),
                    None => Vec::new(),
                },
                Ok(watcher::Event::InitDone) => {
                    let out = s.relisted();
                    synced.send_replace(true);
                    out
                }
                Err(e) => {
                    crate::metrics::watch_restart();
                    tracing::warn!(error = %crate::error_chain(&e), "watching Jobs failed; retrying with backoff");
                    Vec::new()
                }
            }
        };
        for o in out {
            if outcomes.send(o).await.is_err() {
                return;
            }
        }
    }
}

/// Keeps [`State::pods`]: which pods of each run wait or run, why they
/// wait, and when one last ran (pending-pod backpressure and start
/// timeouts read it through [`Tracker::progress`]).
async fn watch_pods(
    api: Api<Pod>,
    config: watcher::Config,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
) {
    let stream = watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    // The pods listed by the relist in progress.
    let mut listed: Option<HashMap<String, RunPods>> = None;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = stream.next() => e,
        };
        let Some(event) = event else { return };
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Ok(watcher::Event::Init) => listed = Some(HashMap::new()),
            Ok(watcher::Event::InitApply(pod)) => {
                if let (Some(l), Some((run, seen))) = (listed.as_mut(), pods::see(&pod)) {
                    let tracked = s.runs.contains_key(&run);
                    pods::apply(l, run, seen, tracked);
                }
            }
            Ok(watcher::Event::InitDone) => {
                let mut fresh = listed.take().unwrap_or_default();
                // What was known of tracked runs' progress stays known.
                let s = &mut *s;
                for (run, old) in s.pods.drain() {
                    if let Some(at) = old.progressed.filter(|_| s.runs.contains_key(&run)) {
                        fresh.entry(run).or_default().progress(at);
                    }
                }
                s.pods = fresh;
            }
            Ok(watcher::Event::Apply(pod)) => {
                if let Some((run, seen)) = pods::see(&pod) {
                    let tracked = s.runs.contains_key(&run);
                    pods::apply(&mut s.pods, run, seen, tracked);
                }
            }
            Ok(watcher::Event::Delete(pod)) => {
                if let Some((run, name)) = pods::run_of(&pod) {
                    let tracked = s.runs.contains_key(&run);
                    pods::remove(&mut s.pods, &run, &name, tracked);
                }
            }
            Err(e) => {
                crate::metrics::watch_restart();
                tracing::debug!(error = %crate::error_chain(&e), "watching pods failed; retrying with backoff");
            }
        }
    }
}

/// Keeps [`State::refused`]: the Job controller's `FailedCreate` Events
/// (pods refused by admission or a quota), latest message per Job.
async fn watch_events(
    api: Api<Event>,
    config: watcher::Config,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
) {
    let stream = watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    let mut listed: Option<HashMap<String, String>> = None;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = stream.next() => e,
        };
        let Some(event) = event else { return };
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Ok(watcher::Event::Init) => listed = Some(HashMap::new()),
            Ok(watcher::Event::InitApply(e)) => {
                if let (Some(l), Some((job, message))) = (listed.as_mut(), pods::failed_create(&e))
                {
                    l.insert(job, message);
                }
            }
            Ok(watcher::Event::InitDone) => s.refused = listed.take().unwrap_or_default(),
            Ok(watcher::Event::Apply(e)) => {
                if let Some((job, message)) = pods::failed_create(&e) {
                    s.refused.insert(job, message);
                }
            }
            Ok(watcher::Event::Delete(e)) => {
                if let Some((job, _)) = pods::failed_create(&e) {
                    s.refused.remove(&job);
                }
            }
            Err(e) => {
                crate::metrics::watch_restart();
                tracing::debug!(error = %crate::error_chain(&e), "watching Events failed; retrying with backoff");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_indexes_expand() {
        assert_eq!(parse_indexes("1,3-5,7"), vec![1, 3, 4, 5, 7]);
        assert_eq!(parse_indexes(""), Vec::<i32>::new());
        assert_eq!(parse_indexes("0-2"), vec![0, 1, 2]);
    }

    fn job(name: &str, conditions: &[(&str, &str)]) -> Job {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "uid": "u", "labels": {"kedge.dev/job": "j"}},
            "spec": {"template": {}},
            "status": {"conditions": conditions.iter().map(|(t, s)| serde_json::json!({
                "type": t, "status": s, "reason": "R", "message": "M",
                "lastTransitionTime": "2026-01-01T00:00:00Z"})).collect::<Vec<_>>()}
        }))
        .unwrap()
    }

    #[test]
    fn a_view_knows_its_job_and_attempt_for_the_logs() {
        let j: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "r", "labels": {"kedge.dev/job": "backup"}},
            "spec": {"template": {"spec": {"containers": [{"name": "main",
                "env": [{"name": "KEDGE_JOB", "value": "backup"}, {"name": "KEDGE_ATTEMPT", "value": "3"}]}]}}}
        }))
        .unwrap();
        let v = View::of(&j);
        assert_eq!((v.job.as_str(), v.attempt), ("backup", 3));
        assert_eq!(View::of(&job("r", &[])).attempt, 0, "no env: unknown");
    }

    #[test]
    fn interim_conditions_are_not_an_outcome() {
        let mut s = State::default();
        s.runs.insert("r".into(), Tracked::default());
        assert!(s
            .apply(&job("r", &[("SuccessCriteriaMet", "True")]))
            .is_none());
        assert!(s.apply(&job("r", &[("FailureTarget", "True")])).is_none());
        let o = s
            .apply(&job("r", &[("FailureTarget", "True"), ("Failed", "True")]))
            .expect("terminal");
        assert!(matches!(o.kind, OutcomeKind::Failed { ref reason, .. } if reason == "R"));
        // Reported once only.
        assert!(s.apply(&job("r", &[("Failed", "True")])).is_none());
    }

    #[test]
    fn a_deleted_finished_job_reports_its_last_state() {
        let mut s = State::default();
        s.runs.insert("r".into(), Tracked::default());
        let last = View::of(&job(
            "r",
            &[("SuccessCriteriaMet", "True"), ("Complete", "True")],
        ));
        let o = s.delete("r", Some(last)).expect("outcome");
        assert_eq!(o.kind, OutcomeKind::Succeeded);
    }

    #[test]
    fn a_deleted_unfinished_job_fails_or_is_cancelled() {
        let mut s = State::default();
        s.runs.insert("a".into(), Tracked::default());
        s.runs.insert(
            "b".into(),
            Tracked {
                created_at: None,
                cancelled: true,
                ..Tracked::default()
            },
        );
        let a = s.delete("a", Some(View::of(&job("a", &[])))).unwrap();
        assert!(matches!(a.kind, OutcomeKind::Failed { ref reason, .. } if reason == "JobDeleted"));
        let b = s.delete("b", Some(View::of(&job("b", &[])))).unwrap();
        assert_eq!(b.kind, OutcomeKind::Cancelled);
    }

    #[test]
    fn a_relist_resolves_vanished_jobs() {
        let mut s = State::default();
        s.apply(&job("old", &[]));
        s.runs.insert(
            "old".into(),
            Tracked {
                created_at: Some(Instant::now()),
                cancelled: false,
                ..Tracked::default()
            },
        );
        s.runs.insert(
            "never-listed".into(),
            Tracked {
                created_at: Some(Instant::now()),
                cancelled: false,
                ..Tracked::default()
            },
        );
        // Created after the list began: may legitimately be missing.
        std::thread::sleep(Duration::from_millis(2));
        s.relist = Some((Instant::now(), HashSet::new()));
        s.runs.insert(
            "in-flight".into(),
            Tracked {
                created_at: Some(Instant::now()),
                cancelled: false,
                ..Tracked::default()
            },
        );
        let out = s.relisted();
        let mut ids: Vec<&str> = out.iter().map(|o| o.run_id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["never-listed", "old"]);
        assert!(s.runs.contains_key("in-flight"));
    }
}
