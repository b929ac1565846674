//! The process kubelet: with [`Kubelet::Processes`](crate::Kubelet), the
//! simulated node really runs each pod's containers, as local child
//! processes, instead of following the `kube-sim/outcome` script.
//!
//! # What a pod's user sees, as on a real node
//! - `command` + `args` with Kubernetes' `$(VAR)` expansion (`$$` is a
//!   literal `$`, an unknown `$(X)` stays as written), in `env` values too,
//!   each value expanded with the entries before it and the service
//!   variables. `valueFrom.fieldRef` (`metadata.name`, `metadata.namespace`,
//!   `metadata.uid`, `metadata.labels['k']`, `metadata.annotations['k']`,
//!   `spec.nodeName`, `spec.serviceAccountName`, `status.podIP`,
//!   `status.hostIP`) and `valueFrom.configMapKeyRef` are resolved, so the
//!   Job controller's `JOB_COMPLETION_INDEX` arrives. The environment is
//!   otherwise the image's (here: the host's `PATH` and `HOME`), `HOSTNAME`
//!   (the pod name) and the `KUBERNETES_SERVICE_*` variables — nothing else
//!   of the host's.
//! - Init containers run one after another, each to success, before the
//!   app containers, which then all start at once. A failing init container
//!   fails the pod (`restartPolicy: Never`); the app containers never start.
//! - Each container runs in its own process group. When its main process
//!   exits, the rest of the group is killed, as processes in a container's
//!   PID namespace die with its PID 1.
//! - Exit code → container `terminated` state (`Completed` for 0, `Error`
//!   otherwise, 128 + signal for a killed process, `StartError` and 128 for
//!   a command that cannot start) → pod phase `Succeeded` when every app
//!   container exited 0, else `Failed`, once all of them have exited.
//! - A pod deleted (through the API, by the garbage collector, or by the Job
//!   controller at `activeDeadlineSeconds` or after the Job's terminal
//!   condition) is terminated as a kubelet does: SIGTERM to every running
//!   container's process group, SIGKILL once `terminationGracePeriodSeconds`
//!   (default 30) has passed. The Job controller counts such pods as
//!   `terminating` and adds a terminal condition only once they are gone.
//! - Logs (stdout and stderr together, like `kubectl logs`) go to
//!   `<root>/<namespace>/<pod>/<container>.log` and stay after the pod is
//!   gone; [`KubeSim::job_logs`](crate::KubeSim::job_logs) reads them per Job.
//! - ConfigMap volumes: a pod whose ConfigMap does not exist (and is not
//!   `optional`) stays `Pending` with its containers waiting in
//!   `ContainerCreating`, and is retried on every pass.
//!
//! # The one liberty
//! There are no mount namespaces, so a volume cannot appear at its
//! `mountPath`. ConfigMap volumes (their keys, or their `items`, as files)
//! and `emptyDir` volumes are materialised under
//! `<root>/<namespace>/<pod>/volumes/<mountPath>`, and every env value that
//! starts with a mount path (the path itself or a path below it) is
//! rewritten to point there. Command lines are not rewritten; other volume
//! types are not mounted. Processes start in `<root>/<namespace>/<pod>`
//! unless `workingDir` names an existing folder.
//!
//! # Caveats
//! Images are ignored: a container needs a `command`. Pods created directly
//! through the API (not by the Job controller) are not run. Pods are removed
//! from the API at once when deleted (no `deletionTimestamp` phase); their
//! processes terminate afterwards. No probes, resources or restarts in place.

use crate::resource::CONFIGMAPS;
use crate::sim::Sim;
use crate::store::timestamp;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// One container's output, as `kubectl logs POD -c CONTAINER` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerLog {
    pub pod: String,
    pub container: String,
    pub text: String,
}

/// What the kubelet remembers of a pod it started, for [`job_logs`]: the
/// log files outlive the pod object.
#[derive(Debug, Clone)]
pub struct PodRecord {
    pub namespace: String,
    /// The controlling Job's name ("" if none).
    pub job: String,
    pub pod: String,
    /// Init containers first, then app containers, in spec order.
    pub containers: Vec<String>,
    pub dir: PathBuf,
}

/// Every container log of Job `job` in `namespace` that has a log file
/// (containers that never started have none), in pod start order, then
/// container spec order.
pub fn job_logs(records: &[PodRecord], namespace: &str, job: &str) -> Vec<ContainerLog> {
    let mut out = Vec::new();
    for r in records
        .iter()
        .filter(|r| r.namespace == namespace && r.job == job)
    {
        for c in &r.containers {
            let Ok(bytes) = std::fs::read(r.dir.join(format!("{c}.log"))) else {
                continue;
            };
            out.push(ContainerLog {
                pod: r.pod.clone(),
                container: c.clone(),
                text: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
    }
    out
}

/// Kubernetes' `$(VAR)` expansion: known names are replaced, `$$` is a
/// literal `$`, anything else is left as written.
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match env.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The variables a kubelet adds for the `kubernetes` Service.
fn service_env() -> Vec<(String, String)> {
    [
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ("KUBERNETES_SERVICE_PORT", "443"),
        ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
        ("KUBERNETES_PORT", "tcp://10.96.0.1:443"),
        ("KUBERNETES_PORT_443_TCP", "tcp://10.96.0.1:443"),
        ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
        ("KUBERNETES_PORT_443_TCP_PORT", "443"),
        ("KUBERNETES_PORT_443_TCP_ADDR", "10.96.0.1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A container's state as the kubelet reports it.
#[derive(Debug, Clone, PartialEq)]
enum CState {
    Waiting(&'static str),
    Running {
        started: String,
        pid: u32,
    },
    Terminated {
        code: i32,
        reason: &'static str,
        message: Option<String>,
        started: String,
        finished: String,
    },
}

impl CState {
    fn json(&self) -> Value {
        match self {
            CState::Waiting(reason) => json!({"waiting": {"reason": reason}}),
            CState::Running { started, .. } => json!({"running": {"startedAt": started}}),
            CState::Terminated {
                code,
                reason,
                message,
                started,
                finished,
            } => {
                let mut t = json!({"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": finished});
                if let Some(m) = message {
                    t["message"] = json!(m);
                }
                json!({ "terminated": t })
            }
        }
    }
}

/// What the pod's task reports; the kubelet pass writes it to the API.
#[derive(Debug, Clone)]
struct PodState {
    /// Bumped on every change.
    generation: u64,
    phase: &'static str,
    started: String,
    init_done: bool,
    init: Vec<CState>,
    app: Vec<CState>,
    /// Every process of the pod has ended.
    done: bool,
}

/// One container, ready to start.
#[derive(Debug, Clone)]
struct ContainerRun {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    cwd: PathBuf,
}

/// A pod the kubelet has started.
struct PodHandle {
    job_uid: String,
    /// Set to true to terminate the pod (gracefully).
    stop: watch::Sender<bool>,
    state: Arc<Mutex<PodState>>,
    /// The generation last written to the API.
    written: u64,
    /// The pod object is gone: its processes are terminating.
    gone: bool,
}

/// Why a pod cannot start yet.
#[derive(Debug)]
enum NotYet {
    /// A ConfigMap (volume or env) does not exist.
    ConfigMissing(String),
}

/// The process kubelet's memory.
pub struct ProcessKubelet {
    root: PathBuf,
    pods: HashMap<String, PodHandle>,
    /// Pods waiting for a ConfigMap: uid → the message last written.
    waiting: HashMap<String, String>,
}

fn meta<'a>(o: &'a Value, f: &str) -> &'a str {
    o["metadata"][f].as_str().unwrap_or("")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn controller_ref(pod: &Value) -> (String, String) {
    pod["metadata"]["ownerReferences"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["controller"] == true))
        .map(|r| {
            (
                r["name"].as_str().unwrap_or("").to_string(),
                r["uid"].as_str().unwrap_or("").to_string(),
            )
        })
        .unwrap_or_default()
}

impl ProcessKubelet {
    pub fn new(root: PathBuf) -> Self {
        ProcessKubelet {
            root,
            pods: HashMap::new(),
            waiting: HashMap::new(),
        }
    }

    /// Pods of Job `job_uid` whose object is gone but whose processes still run.
    pub fn terminating(&self, job_uid: &str) -> usize {
        self.pods
            .values()
            .filter(|h| h.gone && h.job_uid == job_uid && !lock(&h.state).done)
            .count()
    }

    /// Pod `uid` was just deleted: its processes start terminating now.
    pub fn deleted(&mut self, uid: &str) {
        if let Some(h) = self.pods.get_mut(uid) {
            h.gone = true;
            h.stop.send_replace(true);
        }
    }

    /// One pass. `startable(pod)`: whether the pod may start now (scheduled,
    /// made by the Job controller, past its start delay).
    pub fn pass(&mut self, sim: &Arc<Sim>, pods: &[Value], startable: impl Fn(&Value) -> bool) {
        let present: HashSet<&str> = pods.iter().map(|p| meta(p, "uid")).collect();
        for (uid, h) in self.pods.iter_mut() {
            if !h.gone && !present.contains(uid.as_str()) {
                h.gone = true;
                h.stop.send_replace(true);
            }
        }
        self.pods.retain(|_, h| !(h.gone && lock(&h.state).done));
        self.waiting.retain(|uid, _| present.contains(uid.as_str()));
        for pod in pods {
            let uid = meta(pod, "uid");
            if let Some(h) = self.pods.get_mut(uid) {
                let st = lock(&h.state).clone();
                if st.generation != h.written {
                    h.written = st.generation;
                    write_status(sim, pod, |p| apply_state(p, &st));
                }
                continue;
            }
            if matches!(
                pod["status"]["phase"].as_str(),
                Some("Succeeded" | "Failed")
            ) || !startable(pod)
            {
                continue;
            }
            match self.start(sim, pod) {
                Ok(()) => {
                    self.waiting.remove(uid);
                }
                Err(NotYet::ConfigMissing(msg)) => {
                    if self.waiting.get(uid) != Some(&msg) {
                        self.waiting.insert(uid.to_string(), msg.clone());
                        write_status(sim, pod, |p| apply_waiting(p, &msg));
                    }
                }
            }
        }
    }

    /// Prepares the pod's folder, volumes and containers, and starts its task.
    fn start(&mut self, sim: &Arc<Sim>, pod: &Value) -> Result<(), NotYet> {
        let (ns, name, uid) = (meta(pod, "namespace"), meta(pod, "name"), meta(pod, "uid"));
        let spec = &pod["spec"];
        let dir = self.root.join(ns).join(name);
        // Volumes: name → materialised folder.
        let mut volumes: HashMap<String, PathBuf> = HashMap::new();
        let mut files: Vec<(PathBuf, String)> = Vec::new();
        for v in spec["volumes"].as_array().into_iter().flatten() {
            let vname = v["name"].as_str().unwrap_or("");
            let vdir = dir.join("volumes-by-name").join(vname);
            if let Some(cm) = v["configMap"].as_object() {
                let cm_name = cm.get("name").and_then(Value::as_str).unwrap_or("");
                let optional = cm.get("optional") == Some(&json!(true));
                let data = match sim.store.get(&CONFIGMAPS, ns, cm_name) {
                    Ok(o) => o["data"].clone(),
                    Err(_) if optional => json!({}),
                    Err(_) => {
                        return Err(NotYet::ConfigMissing(format!(
                            "MountVolume.SetUp failed for volume \"{vname}\" : configmap \"{cm_name}\" not found"
                        )))
                    }
                };
                let data = data.as_object().cloned().unwrap_or_default();
                match cm.get("items").and_then(Value::as_array) {
                    Some(items) => {
                        for it in items {
                            let key = it["key"].as_str().unwrap_or("");
                            let path = it["path"].as_str().unwrap_or(key);
                            if let Some(val) = data.get(key).and_then(Value::as_str) {
                                files.push((vdir.join(path), val.to_string()));
                            }
                        }
                    }
                    None => {
                        for (k, val) in &data {
                            files.push((vdir.join(k), val.as_str().unwrap_or("").to_string()));
                        }
                    }
                }
                volumes.insert(vname.to_string(), vdir);
            } else if v["emptyDir"].is_object() {
                volumes.insert(vname.to_string(), vdir);
            }
        }
        let resolve_cm_key = |r: &Value| -> Result<Option<String>, NotYet> {
            let cm_name = r["name"].as_str().unwrap_or("");
            let key = r["key"].as_str().unwrap_or("");
            let optional = r["optional"] == true;
            match sim.store.get(&CONFIGMAPS, ns, cm_name) {
                Ok(o) => match o["data"][key].as_str() {
                    Some(v) => Ok(Some(v.to_string())),
                    None if optional => Ok(None),
                    None => Err(NotYet::ConfigMissing(format!(
                        "couldn't find key {key} in ConfigMap {ns}/{cm_name}"
                    ))),
                },
                Err(_) if optional => Ok(None),
                Err(_) => Err(NotYet::ConfigMissing(format!(
                    "configmap \"{cm_name}\" not found"
                ))),
            }
        };
        let container = |c: &Value| -> Result<ContainerRun, NotYet> {
            let mut env: Vec<(String, String)> = Vec::new();
            for key in ["PATH", "HOME"] {
                if let Ok(v) = std::env::var(key) {
                    env.push((key.to_string(), v));
                }
            }
            env.push(("HOSTNAME".into(), name.to_string()));
            env.extend(service_env());
            // What `$(VAR)` may refer to: the service variables and the
            // container's own earlier entries (not the image's env).
            let mut scope: Vec<(String, String)> = service_env();
            for e in c["env"].as_array().into_iter().flatten() {
                let ename = e["name"].as_str().unwrap_or("").to_string();
                let value = if let Some(v) = e["value"].as_str() {
                    expand(v, &scope)
                } else if let Some(f) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    field_ref(pod, f)
                } else if e["valueFrom"]["configMapKeyRef"].is_object() {
                    match resolve_cm_key(&e["valueFrom"]["configMapKeyRef"])? {
                        Some(v) => v,
                        None => continue,
                    }
                } else {
                    String::new()
                };
                scope.push((ename.clone(), value.clone()));
                env.retain(|(k, _)| *k != ename);
                env.push((ename, value));
            }
            // The liberty: mount paths point into the pod's folder.
            let mounts: Vec<String> = c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["name"].as_str().is_some_and(|n| volumes.contains_key(n)))
                .filter_map(|m| Some(m["mountPath"].as_str()?.trim_end_matches('/').to_string()))
                .collect();
            for (_, v) in env.iter_mut() {
                for mp in &mounts {
                    if mp.is_empty() {
                        continue;
                    }
                    let under = v
                        .strip_prefix(mp.as_str())
                        .filter(|rest| rest.is_empty() || rest.starts_with('/'));
                    if let Some(rest) = under {
                        *v = format!("{}{rest}", mount_dir(&dir, mp).display());
                        break;
                    }
                }
            }
            let argv: Vec<String> = c["command"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(c["args"].as_array().into_iter().flatten())
                .map(|a| expand(a.as_str().unwrap_or(""), &env))
                .collect();
            let cwd = c["workingDir"]
                .as_str()
                .map(PathBuf::from)
                .filter(|p| p.is_dir())
                .unwrap_or_else(|| dir.clone());
            Ok(ContainerRun {
                argv,
                env,
                log: dir.join(format!("{}.log", c["name"].as_str().unwrap_or(""))),
                cwd,
            })
        };
        let containers_of = |key: &str| -> Result<Vec<(String, ContainerRun)>, NotYet> {
            spec[key]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| Ok((c["name"].as_str().unwrap_or("").to_string(), container(c)?)))
                .collect()
        };
        let init = containers_of("initContainers")?;
        let app = containers_of("containers")?;

        // Everything is there: materialise the pod's folder.
        let _ = std::fs::create_dir_all(&dir);
        for vdir in volumes.values() {
            let _ = std::fs::create_dir_all(vdir);
        }
        for (path, content) in &files {
            if let Some(parent) = path.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let _ = std::fs::write(path, content);
        }
        // Each mount path is a symlink to its volume's folder.
        for c in spec["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(spec["containers"].as_array().into_iter().flatten())
        {
            for m in c["volumeMounts"].as_array().into_iter().flatten() {
                let (Some(vname), Some(mp)) = (m["name"].as_str(), m["mountPath"].as_str()) else {
                    continue;
                };
                if let Some(vdir) = volumes.get(vname) {
                    let link = mount_dir(&dir, mp.trim_end_matches('/'));
                    if let Some(parent) = link.parent() {
                        let _ = std::fs::create_dir_all(parent);
                    }
                    let _ = std::os::unix::fs::symlink(vdir, &link);
                }
            }
        }

        let (job, job_uid) = controller_ref(pod);
        lock(&sim.pod_records).push(PodRecord {
            namespace: ns.to_string(),
            job,
            pod: name.to_string(),
            containers: init
                .iter()
                .chain(app.iter())
                .map(|(n, _)| n.clone())
                .collect(),
            dir: dir.clone(),
        });
        let grace = Duration::from_secs(
            spec["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap_or(30)
                .min(3600),
        );
        let state = Arc::new(Mutex::new(PodState {
            generation: 1,
            phase: "Pending",
            started: timestamp(),
            init_done: init.is_empty(),
            init: init
                .iter()
                .map(|_| CState::Waiting("PodInitializing"))
                .collect(),
            app: app
                .iter()
                .map(|_| CState::Waiting("PodInitializing"))
                .collect(),
            done: false,
        }));
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(run_pod(
            init.into_iter().map(|(_, c)| c).collect(),
            app.into_iter().map(|(_, c)| c).collect(),
            grace,
            state.clone(),
            stop_rx,
            sim.clone(),
        ));
        self.pods.insert(
            uid.to_string(),
            PodHandle {
                job_uid,
                stop,
                state,
                written: 0,
                gone: false,
            },
        );
        Ok(())
    }
}

/// `<pod dir>/volumes/<mountPath>`.
fn mount_dir(pod_dir: &Path, mount_path: &str) -> PathBuf {
    pod_dir
        .join("volumes")
        .join(mount_path.trim_start_matches('/'))
}

/// The downward API's `fieldRef`.
fn field_ref(pod: &Value, path: &str) -> String {
    let keyed = |prefix: &str| -> Option<String> {
        let rest = path.strip_prefix(prefix)?.strip_prefix("['")?;
        Some(rest.strip_suffix("']")?.to_string())
    };
    let v = if let Some(k) = keyed("metadata.annotations") {
        &pod["metadata"]["annotations"][k.as_str()]
    } else if let Some(k) = keyed("metadata.labels") {
        &pod["metadata"]["labels"][k.as_str()]
    } else {
        match path {
            "metadata.name" => &pod["metadata"]["name"],
            "metadata.namespace" => &pod["metadata"]["namespace"],
            "metadata.uid" => &pod["metadata"]["uid"],
            "spec.nodeName" => &pod["spec"]["nodeName"],
            "spec.serviceAccountName" => &pod["spec"]["serviceAccountName"],
            "status.podIP" => return "10.244.0.10".into(),
            "status.hostIP" => return "10.0.0.1".into(),
            _ => &Value::Null,
        }
    };
    v.as_str().unwrap_or("").to_string()
}

fn write_status(sim: &Arc<Sim>, pod: &Value, f: impl Fn(&mut Value)) {
    let (ns, name, uid) = (meta(pod, "namespace"), meta(pod, "name"), meta(pod, "uid"));
    let _ = sim.store.update(&crate::resource::PODS, ns, name, |cur| {
        let mut n = cur.clone();
        if meta(cur, "uid") == uid {
            f(&mut n);
        }
        Ok(n)
    });
}

fn statuses(pod: &Value, key: &str, states: &[CState]) -> Vec<Value> {
    pod["spec"][key]
        .as_array()
        .into_iter()
        .flatten()
        .zip(states)
        .map(|(c, s)| {
            let running = matches!(s, CState::Running { .. });
            let mut v = json!({
                "name": c["name"], "image": c["image"].as_str().unwrap_or(""), "imageID": "",
                "ready": running, "started": running, "restartCount": 0, "state": s.json(),
            });
            if let CState::Running { pid, .. } = s {
                v["containerID"] = json!(format!("process://{pid}"));
            }
            v
        })
        .collect()
}

fn apply_state(pod: &mut Value, st: &PodState) {
    let now = timestamp();
    let cond = |ty: &str, ok: bool| json!({"type": ty, "status": if ok { "True" } else { "False" }, "lastProbeTime": null, "lastTransitionTime": now});
    let ready = st.phase == "Running" && st.app.iter().all(|s| matches!(s, CState::Running { .. }));
    let init = statuses(pod, "initContainers", &st.init);
    let app = statuses(pod, "containers", &st.app);
    let s = &mut pod["status"];
    s["phase"] = json!(st.phase);
    s["startTime"] = json!(st.started);
    s["hostIP"] = json!("10.0.0.1");
    s["podIP"] = json!("10.244.0.10");
    if !init.is_empty() {
        s["initContainerStatuses"] = json!(init);
    }
    s["containerStatuses"] = json!(app);
    s["conditions"] = json!([
        cond("PodReadyToStartContainers", true),
        cond("Initialized", st.init_done),
        cond("Ready", ready),
        cond("ContainersReady", ready),
        cond("PodScheduled", true),
    ]);
}

fn apply_waiting(pod: &mut Value, message: &str) {
    let waiting =
        |key: &str| -> Vec<Value> {
            pod["spec"][key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| json!({
                "name": c["name"], "image": c["image"].as_str().unwrap_or(""), "imageID": "",
                "ready": false, "started": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating", "message": message}},
            }))
            .collect()
        };
    let (init, app) = (waiting("initContainers"), waiting("containers"));
    let now = timestamp();
    let s = &mut pod["status"];
    s["phase"] = json!("Pending");
    s["hostIP"] = json!("10.0.0.1");
    if s["startTime"].is_null() {
        s["startTime"] = json!(now);
    }
    if !init.is_empty() {
        s["initContainerStatuses"] = json!(init);
    }
    s["containerStatuses"] = json!(app);
    s["conditions"] = json!([
        {"type": "PodReadyToStartContainers", "status": "False", "lastProbeTime": null, "lastTransitionTime": now},
        {"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": now},
        {"type": "Ready", "status": "False", "lastProbeTime": null, "lastTransitionTime": now, "reason": "ContainersNotReady"},
        {"type": "ContainersReady", "status": "False", "lastProbeTime": null, "lastTransitionTime": now, "reason": "ContainersNotReady"},
        {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now},
    ]);
}

fn update(state: &Mutex<PodState>, f: impl FnOnce(&mut PodState)) {
    let mut s = lock(state);
    f(&mut s);
    s.generation += 1;
}

fn signal_group(pgid: i32, sig: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

/// SIGKILLs every process group a process kubelet started that may still
/// run (when the stand-in is dropped).
pub fn kill_all(sim: &Sim) {
    for pgid in lock(&sim.process_groups).drain() {
        signal_group(pgid, libc::SIGKILL);
    }
}

fn spawn(c: &ContainerRun) -> std::io::Result<Child> {
    let mut argv = c.argv.clone();
    if argv.is_empty() {
        return Err(std::io::Error::other(
            "no command: the process kubelet has no images to take an entrypoint from",
        ));
    }
    let program = argv.remove(0);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&c.log)?;
    let mut cmd = Command::new(program);
    cmd.args(argv)
        .env_clear()
        .envs(c.env.iter().cloned())
        .current_dir(&c.cwd)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// An exited container's code, reason and message.
fn exit_of(r: std::io::Result<std::process::ExitStatus>) -> (i32, &'static str, Option<String>) {
    use std::os::unix::process::ExitStatusExt;
    match r {
        Ok(s) if s.success() => (0, "Completed", None),
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => (c, "Error", None),
            (None, Some(sig)) => (128 + sig, "Error", None),
            (None, None) => (255, "Error", None),
        },
        Err(e) => (
            255,
            "Error",
            Some(format!("cannot wait for the process: {e}")),
        ),
    }
}

/// Waits for a container's main process; on `stop`, SIGTERM to its group
/// and SIGKILL after `grace`. The group is killed once the main process
/// has exited either way (its PID namespace ends with it).
async fn supervise(
    mut child: Child,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) -> (i32, &'static str, Option<String>) {
    let pgid = child.id().map_or(0, |p| p as i32);
    let status = tokio::select! {
        s = child.wait() => s,
        () = async { let _ = stop.wait_for(|s| *s).await; } => {
            signal_group(pgid, libc::SIGTERM);
            match tokio::time::timeout(grace, child.wait()).await {
                Ok(s) => s,
                Err(_) => {
                    signal_group(pgid, libc::SIGKILL);
                    child.wait().await
                }
            }
        }
    };
    signal_group(pgid, libc::SIGKILL);
    exit_of(status)
}

/// Starts one container and supervises it to its end; `set` records its
/// state.
async fn run_container(
    c: ContainerRun,
    stop: watch::Receiver<bool>,
    grace: Duration,
    sim: Arc<Sim>,
    set: impl Fn(CState) + Send + Sync + 'static,
) -> i32 {
    let started = timestamp();
    let child = match spawn(&c) {
        Ok(child) => child,
        Err(e) => {
            set(CState::Terminated {
                code: 128,
                reason: "StartError",
                message: Some(format!(
                    "failed to create containerd task: exec: {:?}: {e}",
                    c.argv.first().cloned().unwrap_or_default()
                )),
                started: started.clone(),
                finished: started,
            });
            return 128;
        }
    };
    let pid = child.id().unwrap_or(0);
    lock(&sim.process_groups).insert(pid as i32);
    set(CState::Running {
        started: started.clone(),
        pid,
    });
    let (code, reason, message) = supervise(child, stop, grace).await;
    lock(&sim.process_groups).remove(&(pid as i32));
    set(CState::Terminated {
        code,
        reason,
        message,
        started,
        finished: timestamp(),
    });
    code
}

/// Runs one pod: init containers in order, then the app containers together.
async fn run_pod(
    init: Vec<ContainerRun>,
    app: Vec<ContainerRun>,
    grace: Duration,
    state: Arc<Mutex<PodState>>,
    stop: watch::Receiver<bool>,
    sim: Arc<Sim>,
) {
    for (i, c) in init.into_iter().enumerate() {
        if *stop.borrow() {
            update(&state, |s| s.done = true);
            return;
        }
        let st = state.clone();
        let code = run_container(c, stop.clone(), grace, sim.clone(), move |cs| {
            update(&st, |s| s.init[i] = cs)
        })
        .await;
        if code != 0 {
            update(&state, |s| {
                s.phase = "Failed";
                s.done = true;
            });
            return;
        }
    }
    if *stop.borrow() {
        update(&state, |s| s.done = true);
        return;
    }
    update(&state, |s| {
        s.init_done = true;
        s.phase = "Running";
        for a in s.app.iter_mut() {
            *a = CState::Waiting("ContainerCreating");
        }
    });
    let mut set = tokio::task::JoinSet::new();
    for (i, c) in app.into_iter().enumerate() {
        let st = state.clone();
        set.spawn(run_container(
            c,
            stop.clone(),
            grace,
            sim.clone(),
            move |cs| update(&st, |s| s.app[i] = cs),
        ));
    }
    let mut ok = true;
    while let Some(r) = set.join_next().await {
        ok &= r.is_ok_and(|code| code == 0);
    }
    update(&state, |s| {
        s.phase = if ok { "Succeeded" } else { "Failed" };
        s.done = true;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes() {
        let env = vec![
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "two".to_string()),
        ];
        assert_eq!(expand("x$(A)y$(B)", &env), "x1ytwo");
        assert_eq!(expand("$(MISSING)", &env), "$(MISSING)");
        assert_eq!(expand("$$(A)", &env), "$(A)");
        assert_eq!(expand("$$$$", &env), "$$");
        assert_eq!(expand("cost $5 $(A", &env), "cost $5 $(A");
        assert_eq!(expand("$", &env), "$");
    }

    #[test]
    fn field_refs_read_the_pod() {
        let pod = json!({"metadata": {"name": "p", "namespace": "n", "uid": "u",
            "annotations": {"batch.kubernetes.io/job-completion-index": "3"},
            "labels": {"a": "b"}}, "spec": {"nodeName": "node"}});
        assert_eq!(
            field_ref(
                &pod,
                "metadata.annotations['batch.kubernetes.io/job-completion-index']"
            ),
            "3"
        );
        assert_eq!(field_ref(&pod, "metadata.labels['a']"), "b");
        assert_eq!(field_ref(&pod, "metadata.name"), "p");
        assert_eq!(field_ref(&pod, "spec.nodeName"), "node");
        assert_eq!(field_ref(&pod, "metadata.unknown"), "");
    }
}
