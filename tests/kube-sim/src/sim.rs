//! The running stand-in: shared state, the HTTP server, the background
//! controllers, and the hooks tests use to inject faults.

use crate::resource::{Resource, NAMESPACES};
use crate::store::Store;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

/// Tunables of a stand-in.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// How many change events are kept for watches and list continuations.
    pub history_limit: usize,
    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK.
    pub bookmark_interval: Duration,
    /// Multiplies every simulated delay of the Job controller and kubelet
    /// (see [`crate::job_controller`]); `0.01` runs a 10 s backoff in 100 ms.
    pub time_scale: f64,
    /// Whether the Job controller and kubelet run. Off, the stand-in is a
    /// bare kube-apiserver without controller-manager (as in envtest): Jobs
    /// get no pods and no status. The garbage collector always runs.
    pub job_controller: bool,
    /// What the simulated kubelet does with a pod: follow its outcome
    /// script (the default), or run its containers as local processes.
    pub kubelet: Kubelet,
}

/// The simulated kubelet's mode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Kubelet {
    /// Pods follow the `kube-sim/outcome` annotation; nothing runs
    /// (see [`crate::job_controller`]).
    #[default]
    Scripted,
    /// Pods run their containers as child processes of the stand-in, with
    /// logs, volumes and pod folders under `root` (see [`crate::kubelet`]).
    /// `time_scale` then stretches only the simulated delays (start-up,
    /// pod backoff, condition lag, TTL): `activeDeadlineSeconds` and
    /// `terminationGracePeriodSeconds` bound real processes and run on the
    /// wall clock.
    Processes { root: PathBuf },
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            history_limit: 10_000,
            bookmark_interval: Duration::from_secs(1),
            time_scale: 1.0,
            job_controller: true,
            kubelet: Kubelet::Scripted,
        }
    }
}

/// Fault injection counters, consumed one per request.
///
/// Every counted fault is taken in one atomic step that never goes below
/// zero ([`Countdown::take`]): requests arrive concurrently, and a
/// load-then-subtract would let two of them take the last fault and wrap the
/// counter round to `u64::MAX` (every later request failing for ever).
#[derive(Debug, Default)]
pub struct Faults {
    /// Requests still to fail, and the HTTP code they fail with (one lock, so
    /// a request never pairs one call's count with another call's code).
    fail: Mutex<FailNext>,
    /// Requests still to hang forever (until the client gives up).
    pub hang_next: Countdown,
    /// Watch event lines still to drop (counted across all streams).
    pub drop_events: Countdown,
    /// Milliseconds every watch event line is held back before it is sent.
    pub event_delay_ms: AtomicU64,
    /// Creates refused while their name contains a pattern.
    deny: Mutex<Vec<Denial>>,
}

/// A rule of [`KubeSim::deny_creates`].
#[derive(Debug, Clone)]
struct Denial {
    pattern: String,
    code: u16,
    message: String,
}

#[derive(Debug, Default)]
struct FailNext {
    remaining: u64,
    code: u16,
}

impl Faults {
    /// Arms the next `n` requests to fail with `code` (replacing any faults
    /// still armed).
    pub fn set_fail_next(&self, n: u64, code: u16) {
        let mut fail = self.fail.lock().unwrap_or_else(|p| p.into_inner());
        *fail = FailNext { remaining: n, code };
    }

    /// The code and message refusing a create of `name`, if a denial rule
    /// matches it (the first rule added wins).
    pub fn denial_of(&self, name: &str) -> Option<(u16, String)> {
        let deny = self.deny.lock().unwrap_or_else(|p| p.into_inner());
        deny.iter()
            .find(|d| name.contains(&d.pattern))
            .map(|d| (d.code, d.message.replace("{name}", name)))
    }

    /// Takes one armed failure: the code to answer with, or `None` when
    /// none is left.
    pub fn take_fail(&self) -> Option<u16> {
        let mut fail = self.fail.lock().unwrap_or_else(|p| p.into_inner());
        fail.remaining = fail.remaining.checked_sub(1)?;
        Some(fail.code)
    }
}

/// A count of faults still to inject, taken one at a time.
#[derive(Debug, Default)]
pub struct Countdown(AtomicU64);

impl Countdown {
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::SeqCst);
    }

    /// Takes one fault if any is left: true exactly `n` times after `set(n)`,
    /// however many callers race for it.
    pub fn take(&self) -> bool {
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    pub fn remaining(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// One create (POST) request to a namespaced resource, as the API answered it.
///
/// Every such request gets one record, in arrival-of-answer order, whatever
/// its outcome: 201, a 4xx from validation or a name clash, a 5xx injected
/// by [`KubeSim::fail_next`]. Not recorded: requests hung by
/// [`KubeSim::hang_next`] (they are never answered) and objects the simulated
/// controllers create themselves (pods of a Job), which never pass through
/// the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRecord {
    /// Resource plural from the URL: `jobs`, `configmaps`, `leases`, ….
    pub resource: String,
    /// Namespace from the URL.
    pub namespace: String,
    /// `metadata.name` as sent (empty when only `generateName` was sent),
    /// or the name the server generated when the create succeeded.
    pub name: String,
    /// `metadata.generateName` as sent.
    pub generate_name: Option<String>,
    /// HTTP status of the answer: 201, 400, 404, 409, 422, 500, ….
    pub code: u16,
    /// `metadata.resourceVersion` of the stored object (201 only, not for dryRun).
    pub resource_version: Option<String>,
    /// `metadata.uid` of the stored object (201 only, not for dryRun).
    pub uid: Option<String>,
    /// Whether the request was `dryRun=All` (nothing stored).
    pub dry_run: bool,
    /// When the answer was decided (monotonic).
    pub at: Instant,
    /// `metadata.annotations` as sent (empty if none).
    pub annotations: BTreeMap<String, String>,
    /// `metadata.labels` as sent (empty if none).
    pub labels: BTreeMap<String, String>,
}

impl CreateRecord {
    /// Whether the object was stored (201 and not a dry run).
    pub fn created(&self) -> bool {
        self.code == 201 && !self.dry_run
    }
}

/// State shared by the handlers and controllers.
pub struct Sim {
    pub store: Store,
    pub config: SimConfig,
    pub faults: Faults,
    /// Bumped to end every open watch stream.
    pub cut_watches: watch::Sender<u64>,
    /// Bumped to cut every open watch stream in the middle of its next event.
    pub cut_watches_mid_event: watch::Sender<u64>,
    /// Wakes the garbage collector after a write.
    pub gc_wake: Notify,
    /// Append-only log of create requests (see [`CreateRecord`]).
    pub creates: Mutex<Vec<CreateRecord>>,
    /// Pods the process kubelet started, in start order (their logs outlive them).
    pub pod_records: Mutex<Vec<crate::kubelet::PodRecord>>,
    /// Process groups of containers the process kubelet runs now.
    pub process_groups: Mutex<HashSet<i32>>,
}

impl Sim {
    pub fn kick_controllers(&self) {
        self.gc_wake.notify_one();
    }

    /// Appends one record to the create log.
    pub fn record_create(&self, record: CreateRecord) {
        self.creates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(record);
    }
}

/// A stand-in serving on a loopback port; dropping it stops the server.
pub struct KubeSim {
    addr: SocketAddr,
    sim: Arc<Sim>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl KubeSim {
    /// Binds 127.0.0.1 on a free port and serves.
    pub async fn start(config: SimConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Self::serve(listener, config).await
    }

    /// Serves on a given listener.
    pub async fn serve(listener: TcpListener, config: SimConfig) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let store = Store::new(config.history_limit);
        for ns in ["default", "kube-system", "kube-public"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
            let _ = store.create(&NAMESPACES, "", obj);
        }
        let sim = Arc::new(Sim {
            store,
            config,
            faults: Faults::default(),
            cut_watches: watch::channel(0).0,
            cut_watches_mid_event: watch::channel(0).0,
            gc_wake: Notify::new(),
            creates: Mutex::new(Vec::new()),
            pod_records: Mutex::new(Vec::new()),
            process_groups: Mutex::new(HashSet::new()),
        });
        let app = axum::Router::new()
            .fallback(crate::api::handle)
            .with_state(sim.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("kube-sim: server stopped: {e}");
            }
        });
        let gc = tokio::spawn(crate::gc::run(sim.clone()));
        let mut tasks = vec![server, gc];
        if sim.config.job_controller {
            tasks.push(tokio::spawn(crate::job_controller::run(sim.clone())));
        }
        Ok(KubeSim { addr, sim, tasks })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn sim(&self) -> &Arc<Sim> {
        &self.sim
    }

    /// Drops the event history: watches and continues from older versions get 410.
    pub fn expire_history(&self) {
        self.sim.store.expire_history();
    }

    /// Fails the next `n` requests with HTTP `code` (as a Status body).
    pub fn fail_next(&self, n: u64, code: u16) {
        self.sim.faults.set_fail_next(n, code);
    }

    /// Refuses every create (POST) whose `metadata.name` contains `pattern`
    /// with HTTP `code` and `message` (`{name}` in it becomes the name), as
    /// an admission webhook (403), a ResourceQuota (403 "exceeded quota"),
    /// validation (422) or an overloaded server (429, 5xx) would, until
    /// [`KubeSim::allow_creates`]. Other requests are untouched.
    pub fn deny_creates(&self, pattern: &str, code: u16, message: &str) {
        let mut deny = self
            .sim
            .faults
            .deny
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        deny.push(Denial {
            pattern: pattern.to_string(),
            code,
            message: message.to_string(),
        });
    }

    /// Lifts every [`KubeSim::deny_creates`] rule.
    pub fn allow_creates(&self) {
        self.sim
            .faults
            .deny
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Makes the next `n` requests hang.
    pub fn hang_next(&self, n: u64) {
        self.sim.faults.hang_next.set(n);
    }

    /// Ends every open watch stream now.
    pub fn cut_watches(&self) {
        self.sim.cut_watches.send_modify(|g| *g += 1);
    }

    /// Every create (POST) request to a namespaced resource so far, oldest
    /// first (see [`CreateRecord`]).
    pub fn creates(&self) -> Vec<CreateRecord> {
        self.sim
            .creates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The create records of one resource plural (`"jobs"`), oldest first.
    pub fn creates_of(&self, resource: &str) -> Vec<CreateRecord> {
        self.creates()
            .into_iter()
            .filter(|r| r.resource == resource)
            .collect()
    }

    /// The current objects of a resource plural (`"jobs"`, `"pods"`,
    /// `"configmaps"`, `"events"`, `"leases"`) in one namespace, sorted by
    /// name, as stored (with `apiVersion` and `kind`). Panics on a plural the
    /// stand-in does not serve.
    pub fn objects(&self, resource: &str, namespace: &str) -> Vec<Value> {
        self.sim.store.list(served(resource), Some(namespace)).1
    }

    /// How many objects of a resource plural (`"jobs"`, `"pods"`, …) are
    /// stored now, in every namespace; cheap (nothing is copied), so tests
    /// can poll it at scale. Panics on a plural the stand-in does not serve.
    pub fn count(&self, resource: &str) -> usize {
        self.sim.store.count(served(resource))
    }

    /// One current object, or `None`. Panics on a plural the stand-in does not serve.
    pub fn object(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.sim.store.get(served(resource), namespace, name).ok()
    }

    /// Every container log of Job `job` in `namespace` that the process
    /// kubelet ([`Kubelet::Processes`]) ran, as `kubectl logs` would show
    /// each: pods in start order, containers in spec order (init
    /// containers first). Pods that are gone still count; containers that
    /// never started have no log. Empty in scripted mode.
    pub fn job_logs(&self, namespace: &str, job: &str) -> Vec<crate::kubelet::ContainerLog> {
        let records = self
            .sim
            .pod_records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        crate::kubelet::job_logs(&records, namespace, job)
    }

    /// Cuts every watch stream open now in the middle of its next event
    /// line: the client gets half a JSON line and then a broken connection
    /// (no closing chunk). Streams opened later are not affected.
    pub fn cut_watches_mid_event(&self) {
        self.sim.cut_watches_mid_event.send_modify(|g| *g += 1);
    }

    /// Drops the next `n` watch event lines (ADDED, MODIFIED, DELETED,
    /// BOOKMARK, ERROR), counted across every open stream, as if they were
    /// lost; the streams stay open.
    pub fn drop_watch_events(&self, n: u64) {
        self.sim.faults.drop_events.set(n);
    }

    /// Holds every watch event line back by `delay` before sending it (in
    /// order, per stream); `Duration::ZERO` turns the delay off.
    pub fn delay_watch_events(&self, delay: Duration) {
        self.sim.faults.event_delay_ms.store(
            delay.as_millis().try_into().unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// A kubeconfig pointing at this server, namespace `default`.
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kube-sim\n  cluster:\n    server: {}\ncontexts:\n- name: kube-sim\n  context:\n    cluster: kube-sim\n    namespace: default\n    user: kube-sim\ncurrent-context: kube-sim\nusers:\n- name: kube-sim\n  user: {{}}\npreferences: {{}}\n",
            self.url()
        )
    }
}

fn served(plural: &str) -> &'static Resource {
    crate::resource::ALL
        .iter()
        .copied()
        .find(|r| r.plural == plural)
        .unwrap_or_else(|| panic!("kube-sim does not serve a resource named {plural:?}"))
}

impl Drop for KubeSim {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        // No container outlives its cluster.
        crate::kubelet::kill_all(&self.sim);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many threads race for the last faults: exactly `n` are taken and the
    /// counter rests at zero (a load-then-subtract wraps it to `u64::MAX`).
    #[test]
    fn countdown_is_taken_exactly_n_times_under_contention() {
        let c = Arc::new(Countdown::default());
        c.set(3);
        let taken: u64 = (0..16)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..1000).filter(|_| c.take()).count() as u64)
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(taken, 3);
        assert_eq!(c.remaining(), 0);
    }

    #[test]
    fn fail_next_pairs_each_failure_with_its_code() {
        let f = Faults::default();
        f.set_fail_next(2, 503);
        assert_eq!(
            (f.take_fail(), f.take_fail(), f.take_fail()),
            (Some(503), Some(503), None)
        );
        f.set_fail_next(1, 429);
        assert_eq!(f.take_fail(), Some(429));
        assert_eq!(f.take_fail(), None);
    }
}
