//! The simulated Job controller, kubelet and TTL-after-finished controller.
//!
//! # Scripting outcomes
//! A Job's pods behave as the annotation `kube-sim/outcome` says, read from
//! the pod template's annotations first, then from the Job's. Its value is a
//! `;`-separated list of:
//! - `succeed` (the default): each pod runs for `duration` then exits 0;
//! - `fail`: every pod exits 1;
//! - `fail-times=N`: the first N pods (for Indexed Jobs: the first N
//!   attempts of each index) exit 1, later ones succeed;
//! - `fail-indexes=1,3`: pods of these completion indexes always exit 1;
//! - `hang`: pods run forever (until deleted or the deadline strikes);
//! - `duration=2s` (or `500ms`, `1m`): how long a container runs (default 1 s);
//! - `unschedulable`: pods stay Pending with `PodScheduled=False` and the
//!   scheduler's message; `unschedulable=3s`: for that long, then they
//!   schedule and run as usual; `unschedulable-indexes=1,3`: only the pods
//!   of these completion indexes;
//! - `refuse-pods`, `image-pull-error`, `invalid-image`, `config-error`:
//!   pods that never start, see [`crate::pod_start`].
//!
//! # Time
//! Every simulated delay is multiplied by [`SimConfig::time_scale`](crate::SimConfig):
//! the 1 s from Pending to Running, container run time, the pod-failure
//! backoff (10 s doubling, capped at 6 min), `activeDeadlineSeconds`, the
//! 1 s between the interim condition (`SuccessCriteriaMet`/`FailureTarget`)
//! and the terminal one, and `ttlSecondsAfterFinished`.
//!
//! # Caveats
//! Pods carry no `batch.kubernetes.io/job-tracking` finalizer, pods are
//! removed at once rather than gracefully, `podFailurePolicy`,
//! `successPolicy` and `suspend` transitions are not simulated (a suspended
//! Job is left alone), and pods are never restarted in place
//! (`restartPolicy: OnFailure` behaves as `Never`).

use crate::kubelet::ProcessKubelet;
use crate::pod_start::{self, StartFault};
use crate::resource::{JOBS, PODS};
use crate::sim::{Kubelet, Sim};
use crate::status::ApiError;
use crate::store::timestamp;
use crate::validation::generate_name;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const OUTCOME_ANNOTATION: &str = "kube-sim/outcome";
const INDEX_KEY: &str = "batch.kubernetes.io/job-completion-index";
const NODE: &str = "kube-sim-node";

/// A parsed `kube-sim/outcome`.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub fail_all: bool,
    pub fail_times: u32,
    pub fail_indexes: Vec<i64>,
    pub hang: bool,
    pub duration: Duration,
    pub unschedulable: bool,
    /// `unschedulable=3s`: the pods schedule after this long.
    pub schedulable_after: Option<Duration>,
    /// Completion indexes whose pods never schedule.
    pub unschedulable_indexes: Vec<i64>,
    pub start: Option<StartFault>,
}

impl Default for Outcome {
    fn default() -> Self {
        Outcome {
            fail_all: false,
            fail_times: 0,
            fail_indexes: Vec::new(),
            hang: false,
            duration: Duration::from_secs(1),
            unschedulable: false,
            schedulable_after: None,
            unschedulable_indexes: Vec::new(),
            start: None,
        }
    }
}

fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

/// Parses an outcome script; unknown items are ignored.
pub fn parse_outcome(s: &str) -> Outcome {
    let mut o = Outcome::default();
    for item in s.split(';').map(str::trim) {
        let (k, v) = item.split_once('=').unwrap_or((item, ""));
        match k.trim() {
            "succeed" => {}
            "fail" => o.fail_all = true,
            "fail-times" => o.fail_times = v.trim().parse().unwrap_or(0),
            "fail-indexes" => {
                o.fail_indexes = v.split(',').filter_map(|i| i.trim().parse().ok()).collect()
            }
            "hang" => o.hang = true,
            "duration" => o.duration = parse_duration(v).unwrap_or(o.duration),
            "unschedulable-indexes" => {
                o.unschedulable_indexes =
                    v.split(',').filter_map(|i| i.trim().parse().ok()).collect()
            }
            "unschedulable" => {
                o.unschedulable = true;
                o.schedulable_after = parse_duration(v);
            }
            other => o.start = StartFault::parse(other).or(o.start),
        }
    }
    o
}

/// Indexes in the compressed form of `completedIndexes`: `"1,3-5,7"`.
pub fn compress_indexes(idx: &BTreeSet<i64>) -> String {
    let mut parts = Vec::new();
    let mut it = idx.iter().copied().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end + 1)) {
            end += 1;
            it.next();
        }
        parts.push(if end == start {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

/// What the simulated kubelet will do with one pod.
struct PodPlan {
    created: Instant,
    fail: bool,
    hang: bool,
    unschedulable: bool,
    schedulable_after: Option<Duration>,
    start: Option<StartFault>,
    run_for: Duration,
}

/// What the controller remembers about one Job (the real one keeps this in
/// its informer caches and the pods' tracking finalizers).
#[derive(Default)]
struct JobMem {
    start: Option<Instant>,
    counted: HashSet<String>,
    /// Pods active at the last pass (uid → index), to notice deleted ones.
    seen_active: HashMap<String, i64>,
    succeeded: i64,
    failed: i64,
    completed_idx: BTreeSet<i64>,
    failed_idx: BTreeSet<i64>,
    failures_per_index: HashMap<i64, u32>,
    attempts_per_index: HashMap<i64, u32>,
    pods_created: u32,
    /// Pod creates refused in a row, and when the next may be tried.
    refusals: u32,
    create_retry_at: Option<Instant>,
    consecutive_failures: u32,
    last_failure: Option<Instant>,
    interim_at: Option<Instant>,
    finished_at: Option<Instant>,
}

impl JobMem {
    fn record_failure(&mut self, idx: i64, per_index: Option<i64>, now: Instant) {
        self.failed += 1;
        self.consecutive_failures += 1;
        self.last_failure = Some(now);
        let f = self.failures_per_index.entry(idx).or_default();
        *f += 1;
        if per_index.is_some_and(|l| i64::from(*f) > l) {
            self.failed_idx.insert(idx);
        }
    }
}

struct Controller {
    sim: Arc<Sim>,
    plans: HashMap<String, PodPlan>,
    jobs: HashMap<String, JobMem>,
    /// The process kubelet, with [`Kubelet::Processes`]; `None`: scripted.
    processes: Option<ProcessKubelet>,
}

/// Runs until aborted: a pass every 20 ms, or twice as long as the last
/// pass took, so that thousands of Jobs do not starve the API handlers.
pub async fn run(sim: Arc<Sim>) {
    let processes = match &sim.config.kubelet {
        Kubelet::Scripted => None,
        Kubelet::Processes { root } => Some(ProcessKubelet::new(root.clone())),
    };
    let mut c = Controller {
        sim,
        plans: HashMap::new(),
        jobs: HashMap::new(),
        processes,
    };
    loop {
        let t = Instant::now();
        c.pass(t);
        let took = t.elapsed();
        tokio::time::sleep(Duration::from_millis(20).max(took * 2)).await;
    }
}

fn meta<'a>(o: &'a Value, f: &str) -> &'a str {
    o["metadata"][f].as_str().unwrap_or("")
}

fn controller_uid(pod: &Value) -> Option<&str> {
    pod["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true)?["uid"]
        .as_str()
}

fn pod_index(pod: &Value) -> i64 {
    pod["metadata"]["annotations"][INDEX_KEY]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(-1)
}

fn has_condition(job: &Value, ty: &str) -> bool {
    job["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == ty && c["status"] == "True"))
}

fn condition(ty: &str, reason: &str, message: &str) -> Value {
    let now = timestamp();
    json!({"type": ty, "status": "True", "lastProbeTime": now, "lastTransitionTime": now, "reason": reason, "message": message})
}

fn is_terminal(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}

impl Controller {
    fn scaled(&self, d: Duration) -> Duration {
        d.mul_f64(self.sim.config.time_scale.max(0.0))
    }

    /// A duration that bounds real processes (`activeDeadlineSeconds`):
    /// wall-clock with the process kubelet, scaled with the scripted one.
    fn bound(&self, d: Duration) -> Duration {
        if self.processes.is_some() {
            d
        } else {
            self.scaled(d)
        }
    }

    /// Pods of Job `uid` deleted but still stopping their processes.
    fn terminating(&self, uid: &str) -> usize {
        self.processes.as_ref().map_or(0, |k| k.terminating(uid))
    }

    fn pass(&mut self, now: Instant) {
        self.kubelet(now);
        let (_, jobs) = self.sim.store.list(&JOBS, None);
        let (_, pods) = self.sim.store.list(&PODS, None);
        let live: HashSet<String> = jobs.iter().map(|j| meta(j, "uid").to_string()).collect();
        self.jobs.retain(|uid, _| live.contains(uid));
        // Each Job's pods, found once per pass rather than by a scan of
        // every pod per Job: (namespace, controller uid) → pods in key order.
        let mut owned: HashMap<(&str, &str), Vec<&Value>> = HashMap::new();
        for p in &pods {
            if let Some(uid) = controller_uid(p) {
                owned
                    .entry((meta(p, "namespace"), uid))
                    .or_default()
                    .push(p);
            }
        }
        for job in &jobs {
            let key = (meta(job, "namespace"), meta(job, "uid"));
            let pods = owned.get(&key).map_or(&[][..], Vec::as_slice);
            self.reconcile(job, pods, now);
        }
    }

    /// Moves pods along Pending → Running → Succeeded/Failed by their plans.
    fn kubelet(&mut self, now: Instant) {
        let (_, pods) = self.sim.store.list(&PODS, None);
        let present: HashSet<&str> = pods.iter().map(|p| meta(p, "uid")).collect();
        self.plans.retain(|uid, _| present.contains(uid.as_str()));
        let start_delay = self.scaled(Duration::from_secs(1));
        if let Some(k) = self.processes.as_mut() {
            // Real processes: a pod starts once scheduled and past its
            // start-up delay (image pull, sandbox); the script is not read.
            let plans = &self.plans;
            k.pass(&self.sim, &pods, |pod| {
                plans.get(meta(pod, "uid")).is_some_and(|p| {
                    !p.unschedulable && now.duration_since(p.created) >= start_delay
                })
            });
            return;
        }
        let scale = self.sim.config.time_scale.max(0.0);
        for pod in &pods {
            let Some(plan) = self.plans.get_mut(meta(pod, "uid")) else {
                continue;
            };
            if is_terminal(pod) {
                continue;
            }
            let elapsed = now.duration_since(plan.created);
            if plan.unschedulable {
                // The scheduler binds the pod once its hold is over.
                if plan
                    .schedulable_after
                    .is_some_and(|d| elapsed >= d.mul_f64(scale))
                {
                    plan.unschedulable = false;
                    plan.created = now;
                    update_pod(&self.sim, pod, |p| {
                        p["spec"]["nodeName"] = json!(NODE);
                        p["status"]["conditions"] = json!([pod_start::scheduled_condition(true)]);
                    });
                }
                continue;
            }
            if let Some(fault) = plan.start {
                let image = pod["spec"]["containers"][0]["image"].as_str().unwrap_or("");
                if let Some((reason, message)) = fault.waiting(image, elapsed, start_delay) {
                    let shown =
                        &pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"];
                    if shown != reason.as_str() {
                        update_pod(&self.sim, pod, |p| {
                            pod_start::set_waiting(p, &reason, &message)
                        });
                    }
                }
                continue;
            }
            let target = if elapsed < start_delay {
                "Pending"
            } else if plan.hang || elapsed < start_delay + plan.run_for.mul_f64(scale) {
                "Running"
            } else if plan.fail {
                "Failed"
            } else {
                "Succeeded"
            };
            if pod["status"]["phase"] != target {
                update_pod(&self.sim, pod, |p| set_pod_phase(p, target));
            }
        }
    }

    /// Creates one pod of `job`; false when the create was refused (the
    /// controller then backs off before its next create).
    fn create_pod(
        &mut self,
        job: &Value,
        index: Option<i64>,
        mem: &mut JobMem,
        now: Instant,
    ) -> bool {
        let (ns, name, uid) = (meta(job, "namespace"), meta(job, "name"), meta(job, "uid"));
        let template = &job["spec"]["template"];
        let script = template["metadata"]["annotations"][OUTCOME_ANNOTATION]
            .as_str()
            .or(job["metadata"]["annotations"][OUTCOME_ANNOTATION].as_str())
            .unwrap_or("succeed");
        let outcome = parse_outcome(script);
        if outcome.start == Some(StartFault::RefusePods) {
            let pod = generate_name(&format!("{name}-"));
            pod_start::record_failed_create(
                &self.sim.store,
                ns,
                name,
                uid,
                &pod_start::refusal_message(&pod),
            );
            mem.refusals += 1;
            mem.create_retry_at = Some(now + self.scaled(pod_start::refusal_backoff(mem.refusals)));
            return false;
        }
        mem.refusals = 0;
        let attempt = match index {
            Some(i) => {
                let a = mem.attempts_per_index.entry(i).or_default();
                *a += 1;
                *a
            }
            None => {
                mem.pods_created += 1;
                mem.pods_created
            }
        };
        let fail = outcome.fail_all
            || attempt <= outcome.fail_times
            || index.is_some_and(|i| outcome.fail_indexes.contains(&i));
        let mut labels = template["metadata"]["labels"].clone();
        if !labels.is_object() {
            labels = json!({});
        }
        let mut annotations = template["metadata"]["annotations"].clone();
        if !annotations.is_object() {
            annotations = json!({});
        }
        let mut spec = template["spec"].clone();
        let base = match index {
            Some(i) => {
                labels[INDEX_KEY] = json!(i.to_string());
                annotations[INDEX_KEY] = json!(i.to_string());
                // Every container, init containers too, as the Job controller does.
                for key in ["initContainers", "containers"] {
                    let Some(cs) = spec[key].as_array_mut() else {
                        continue;
                    };
                    for c in cs {
                        if !c["env"].is_array() {
                            c["env"] = json!([]);
                        }
                        if let Some(env) = c["env"].as_array_mut() {
                            env.push(json!({"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": format!("metadata.annotations['{INDEX_KEY}']")}}}));
                        }
                    }
                }
                format!("{name}-{i}-")
            }
            None => format!("{name}-"),
        };
        let unschedulable = outcome.unschedulable
            || index.is_some_and(|i| outcome.unschedulable_indexes.contains(&i));
        if !unschedulable {
            spec["nodeName"] = json!(NODE);
        }
        let status = json!({"phase": "Pending", "qosClass": "BestEffort",
            "conditions": [pod_start::scheduled_condition(!unschedulable)]});
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": generate_name(&base), "generateName": base, "namespace": ns,
                "labels": labels, "annotations": annotations,
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid, "controller": true, "blockOwnerDeletion": true}],
            },
            "spec": spec,
            "status": status,
        });
        if let Ok(created) = self.sim.store.create(&PODS, ns, pod) {
            self.plans.insert(
                meta(&created, "uid").to_string(),
                PodPlan {
                    created: now,
                    fail,
                    hang: outcome.hang,
                    unschedulable,
                    schedulable_after: outcome.schedulable_after,
                    start: outcome.start,
                    run_for: outcome.duration,
                },
            );
        }
        true
    }

    /// `owned`: the pods in the Job's namespace whose controller is the Job.
    fn reconcile(&mut self, job: &Value, owned: &[&Value], now: Instant) {
        let uid = meta(job, "uid").to_string();
        if !job["metadata"]["deletionTimestamp"].is_null() || job["spec"]["suspend"] == true {
            return;
        }
        let mut mem = self.jobs.remove(&uid).unwrap_or_default();
        self.reconcile_with(job, owned, now, &mut mem);
        self.jobs.insert(uid, mem);
    }

    fn reconcile_with(&mut self, job: &Value, owned: &[&Value], now: Instant, mem: &mut JobMem) {
        let (ns, name, uid) = (meta(job, "namespace"), meta(job, "name"), meta(job, "uid"));
        let spec = &job["spec"];
        if has_condition(job, "Complete") || has_condition(job, "Failed") {
            let finished = *mem.finished_at.get_or_insert(now);
            if let Some(ttl) = spec["ttlSecondsAfterFinished"].as_u64() {
                if now.duration_since(finished) >= self.scaled(Duration::from_secs(ttl)) {
                    self.ttl_delete(ns, name, uid);
                }
            }
            return;
        }
        let indexed = spec["completionMode"] == "Indexed";
        let completions = spec["completions"].as_i64();
        let parallelism = spec["parallelism"].as_i64().unwrap_or(1);
        let backoff_limit = spec["backoffLimit"].as_i64().unwrap_or(6);
        let per_index = spec["backoffLimitPerIndex"].as_i64();
        for p in owned {
            let puid = meta(p, "uid");
            if !is_terminal(p) || mem.counted.contains(puid) {
                continue;
            }
            mem.counted.insert(puid.to_string());
            let idx = pod_index(p);
            if p["status"]["phase"] == "Succeeded" {
                mem.succeeded += 1;
                mem.consecutive_failures = 0;
                if indexed && !mem.failed_idx.contains(&idx) {
                    mem.completed_idx.insert(idx);
                }
            } else {
                mem.record_failure(idx, per_index, now);
            }
        }
        // A pod deleted before it finished counts as failed
        // (podReplacementPolicy TerminatingOrFailed).
        let owned_uids: HashSet<&str> = owned.iter().map(|p| meta(p, "uid")).collect();
        let vanished: Vec<(String, i64)> = mem
            .seen_active
            .iter()
            .filter(|(u, _)| !owned_uids.contains(u.as_str()) && !mem.counted.contains(*u))
            .map(|(u, i)| (u.clone(), *i))
            .collect();
        for (u, idx) in vanished {
            mem.counted.insert(u);
            mem.record_failure(idx, per_index, now);
        }
        let active: Vec<&Value> = owned.iter().copied().filter(|p| !is_terminal(p)).collect();
        mem.seen_active = active
            .iter()
            .map(|p| (meta(p, "uid").to_string(), pod_index(p)))
            .collect();
        let start = *mem.start.get_or_insert(now);
        let mut new_conditions = Vec::new();
        let mut completion_time = false;
        let interim = if has_condition(job, "SuccessCriteriaMet") {
            Some(true)
        } else if has_condition(job, "FailureTarget") {
            Some(false)
        } else {
            None
        };
        let mut active_count = active.len() as i64;
        if let Some(success) = interim {
            let interim_at = *mem.interim_at.get_or_insert(now);
            for p in &active {
                if self.sim.store.remove(&PODS, ns, meta(p, "name")).is_ok() {
                    if let Some(k) = self.processes.as_mut() {
                        k.deleted(meta(p, "uid"));
                    }
                    mem.counted.insert(meta(p, "uid").to_string());
                    if !success {
                        mem.failed += 1;
                    }
                }
            }
            active_count = 0;
            // The terminal condition waits for every pod to have stopped.
            if now.duration_since(interim_at) >= self.scaled(Duration::from_secs(1))
                && self.terminating(uid) == 0
            {
                let c = job["status"]["conditions"]
                    .as_array()
                    .and_then(|cs| {
                        cs.iter().find(|c| {
                            c["type"] == "SuccessCriteriaMet" || c["type"] == "FailureTarget"
                        })
                    })
                    .cloned()
                    .unwrap_or(Value::Null);
                let (reason, message) = (
                    c["reason"].as_str().unwrap_or(""),
                    c["message"].as_str().unwrap_or(""),
                );
                if success {
                    new_conditions.push(condition("Complete", reason, message));
                    completion_time = true;
                } else {
                    new_conditions.push(condition("Failed", reason, message));
                }
                mem.finished_at = Some(now);
            }
        } else {
            let deadline = spec["activeDeadlineSeconds"]
                .as_u64()
                .is_some_and(|s| now.duration_since(start) >= self.bound(Duration::from_secs(s)));
            let max_failed = spec["maxFailedIndexes"].as_i64();
            let all_settled = completions
                .is_some_and(|c| (mem.completed_idx.len() + mem.failed_idx.len()) as i64 >= c);
            let failure = if deadline {
                Some((
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                ))
            } else if indexed && max_failed.is_some_and(|m| mem.failed_idx.len() as i64 > m) {
                Some((
                    "MaxFailedIndexesExceeded",
                    "Job has exceeded the specified maximal number of failed indexes",
                ))
            } else if indexed && !mem.failed_idx.is_empty() && all_settled && active.is_empty() {
                Some(("FailedIndexes", "Job has failed indexes"))
            } else if mem.failed > backoff_limit {
                Some((
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                ))
            } else {
                None
            };
            let success = if indexed {
                completions.is_some_and(|c| mem.completed_idx.len() as i64 >= c)
            } else {
                match completions {
                    Some(c) => mem.succeeded >= c,
                    None => mem.succeeded >= 1 && active.is_empty(),
                }
            };
            if let Some((reason, message)) = failure {
                new_conditions.push(condition("FailureTarget", reason, message));
                mem.interim_at = Some(now);
            } else if success {
                new_conditions.push(condition(
                    "SuccessCriteriaMet",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                ));
                mem.interim_at = Some(now);
            } else {
                let backoff_over = match mem.last_failure {
                    Some(t) if mem.consecutive_failures > 0 => {
                        let exp = (mem.consecutive_failures - 1).min(6);
                        let d =
                            Duration::from_secs(10 * (1u64 << exp)).min(Duration::from_secs(360));
                        now.duration_since(t) >= self.scaled(d)
                    }
                    _ => true,
                };
                let refusing = mem.create_retry_at.is_some_and(|t| now < t);
                if backoff_over && !refusing {
                    if indexed {
                        let busy: HashSet<i64> = active.iter().map(|p| pod_index(p)).collect();
                        let todo: Vec<i64> = (0..completions.unwrap_or(0))
                            .filter(|i| {
                                !mem.completed_idx.contains(i)
                                    && !mem.failed_idx.contains(i)
                                    && !busy.contains(i)
                            })
                            .take((parallelism - active_count).max(0) as usize)
                            .collect();
                        for i in todo {
                            if !self.create_pod(job, Some(i), mem, now) {
                                break;
                            }
                            active_count += 1;
                        }
                    } else {
                        let remaining = match completions {
                            Some(c) => c - mem.succeeded,
                            None if mem.succeeded > 0 => 0,
                            None => parallelism,
                        };
                        let want = parallelism.min(remaining) - active_count;
                        for _ in 0..want.max(0) {
                            if !self.create_pod(job, None, mem, now) {
                                break;
                            }
                            active_count += 1;
                        }
                    }
                }
            }
        }
        let ready = active
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .count() as i64;
        let ready = if interim.is_some() { 0 } else { ready };
        let (succeeded, failed) = (mem.succeeded, mem.failed);
        let terminating = self.terminating(uid) as i64;
        let completed = compress_indexes(&mem.completed_idx);
        let failed_idx = compress_indexes(&mem.failed_idx);
        let _ = self.sim.store.update(&JOBS, ns, name, |cur| {
            let mut n = cur.clone();
            if meta(cur, "uid") != uid {
                return Ok(n);
            }
            if !n["status"].is_object() {
                n["status"] = json!({});
            }
            let st = n["status"].as_object_mut().expect("object");
            let mut put = |k: &str, v: i64| {
                if v > 0 {
                    st.insert(k.into(), json!(v));
                } else {
                    st.remove(k);
                }
            };
            put("active", active_count);
            put("succeeded", succeeded);
            put("failed", failed);
            st.insert("ready".into(), json!(ready));
            st.insert("terminating".into(), json!(terminating));
            st.insert("uncountedTerminatedPods".into(), json!({}));
            if !st.contains_key("startTime") {
                st.insert("startTime".into(), json!(timestamp()));
            }
            if indexed && !completed.is_empty() {
                st.insert("completedIndexes".into(), json!(completed));
            }
            if indexed && per_index.is_some() {
                st.insert("failedIndexes".into(), json!(failed_idx));
            }
            if completion_time {
                st.insert("completionTime".into(), json!(timestamp()));
            }
            if !new_conditions.is_empty() {
                let cs = st.entry("conditions").or_insert_with(|| json!([]));
                if let Some(a) = cs.as_array_mut() {
                    a.extend(new_conditions.iter().cloned());
                }
            }
            Ok(n)
        });
    }

    /// The TTL-after-finished controller: Foreground delete with a uid precondition.
    fn ttl_delete(&self, ns: &str, name: &str, uid: &str) {
        let res = self.sim.store.update(&JOBS, ns, name, |cur| {
            if meta(cur, "uid") != uid {
                return Err(ApiError::Conflict {
                    resource: &JOBS,
                    name: name.to_string(),
                    detail: "Precondition failed: UID".into(),
                });
            }
            let mut n = cur.clone();
            if n["metadata"]["deletionTimestamp"].is_null() {
                n["metadata"]["deletionTimestamp"] = json!(timestamp());
                n["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                if !n["metadata"]["finalizers"].is_array() {
                    n["metadata"]["finalizers"] = json!([]);
                }
                if let Some(f) = n["metadata"]["finalizers"].as_array_mut() {
                    f.push(json!("foregroundDeletion"));
                }
            }
            Ok(n)
        });
        if res.is_ok() {
            self.sim.kick_controllers();
        }
    }
}

/// Writes a pod's new state, unless the pod was replaced meanwhile (same
/// name, another uid). A pod deleted meanwhile is left alone.
fn update_pod(sim: &Sim, pod: &Value, change: impl FnOnce(&mut Value)) {
    let (ns, name, uid) = (meta(pod, "namespace"), meta(pod, "name"), meta(pod, "uid"));
    let _ = sim.store.update(&PODS, ns, name, |cur| {
        let mut n = cur.clone();
        if meta(cur, "uid") == uid {
            change(&mut n);
        }
        Ok(n)
    });
}

fn set_pod_phase(pod: &mut Value, phase: &str) {
    let now = timestamp();
    let containers: Vec<(String, String)> = pod["spec"]["containers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    (
                        c["name"].as_str().unwrap_or("").to_string(),
                        c["image"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let started = pod["status"]["startTime"]
        .as_str()
        .unwrap_or(&now)
        .to_string();
    let cond = |ty: &str, ok: bool| json!({"type": ty, "status": if ok { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": now});
    let running = phase == "Running";
    let statuses: Vec<Value> = containers
        .iter()
        .map(|(name, image)| {
            let state = match phase {
                "Running" => json!({"running": {"startedAt": started}}),
                "Succeeded" => json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started, "finishedAt": now}}),
                _ => json!({"terminated": {"exitCode": 1, "reason": "Error", "startedAt": started, "finishedAt": now}}),
            };
            json!({"name": name, "image": image, "imageID": "", "ready": running, "started": running, "restartCount": 0, "state": state})
        })
        .collect();
    let st = &mut pod["status"];
    st["phase"] = json!(phase);
    st["startTime"] = json!(started);
    st["hostIP"] = json!("10.0.0.1");
    st["podIP"] = json!("10.244.0.10");
    st["containerStatuses"] = json!(statuses);
    st["conditions"] = json!([
        cond("PodReadyToStartContainers", true),
        cond("Initialized", true),
        cond("Ready", running),
        cond("ContainersReady", running),
        cond("PodScheduled", true),
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_scripts() {
        let o = parse_outcome("fail-times=2; duration=500ms; fail-indexes=1,3");
        assert_eq!(o.fail_times, 2);
        assert_eq!(o.duration, Duration::from_millis(500));
        assert_eq!(o.fail_indexes, vec![1, 3]);
        assert!(parse_outcome("hang").hang);
        assert!(parse_outcome("unschedulable").unschedulable);
        let o = parse_outcome("unschedulable=3s");
        assert_eq!(
            (o.unschedulable, o.schedulable_after),
            (true, Some(Duration::from_secs(3)))
        );
        assert_eq!(
            parse_outcome("unschedulable-indexes=0,2").unschedulable_indexes,
            vec![0, 2]
        );
        assert_eq!(
            parse_outcome("refuse-pods").start,
            Some(StartFault::RefusePods)
        );
        assert!(parse_outcome("fail").fail_all);
        assert_eq!(parse_outcome("succeed"), Outcome::default());
    }

    #[test]
    fn compressed_indexes() {
        let s: BTreeSet<i64> = [1, 3, 4, 5, 7].into_iter().collect();
        assert_eq!(compress_indexes(&s), "1,3-5,7");
        assert_eq!(compress_indexes(&BTreeSet::new()), "");
    }
}
