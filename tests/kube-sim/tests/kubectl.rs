//! The real `kubectl` against the stand-in: discovery, `create -f`, `get`,
//! `get -w`, `delete`.
//!
//! Needs `kubectl` on PATH (`.ci/run` installs it). Without it the test
//! fails when `CI` is set and is skipped, loudly, otherwise.
//!
//! `create` runs with `--validate=false`: the stand-in serves no OpenAPI
//! documents (`/openapi/v3` and `/openapi/v2` answer 404, as on a server
//! without them), so kubectl cannot check the file's schema itself and
//! would refuse; the server still validates the Job.
use kube_sim::{KubeSim, SimConfig};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const JOB_YAML: &str = "\
apiVersion: batch/v1
kind: Job
metadata:
  name: hello
  labels: {app: kedge}
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: c
        image: busybox:1
";

fn kubectl_on_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
}

/// A scratch directory for the kubeconfig, the job file and kubectl's caches.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("kube-sim-kubectl-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn kubectl(bin: &Path, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--kubeconfig")
        .arg(dir.join("kubeconfig"))
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .args(args)
        .env("HOME", dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs kubectl to completion (at most 30 s); panics with its output unless it succeeds.
async fn run(bin: &Path, dir: &Path, args: &[&str]) -> String {
    let out = tokio::time::timeout(Duration::from_secs(30), kubectl(bin, dir, args).output())
        .await
        .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish in 30 s"))
        .expect("run kubectl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kubectl {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn kubectl_creates_gets_watches_and_deletes_a_job() {
    let Some(bin) = kubectl_on_path() else {
        if std::env::var_os("CI").is_some() {
            panic!("kubectl is not installed, and CI is set: .ci/run installs it (apt-get install kubernetes-client)");
        }
        eprintln!("\n!!!!! SKIPPED kubectl_creates_gets_watches_and_deletes_a_job: kubectl is not on PATH (apt-get install kubernetes-client) !!!!!\n");
        return;
    };
    let sim = KubeSim::start(SimConfig::default())
        .await
        .expect("start kube-sim");
    let scratch = Scratch::new();
    let dir = scratch.0.as_path();
    std::fs::write(dir.join("kubeconfig"), sim.kubeconfig_yaml()).expect("kubeconfig");
    std::fs::write(dir.join("job.yaml"), JOB_YAML).expect("job.yaml");
    let job_file = dir.join("job.yaml");
    let job_file = job_file.to_str().expect("utf-8 path");

    let out = run(&bin, dir, &["create", "--validate=false", "-f", job_file]).await;
    assert_eq!(out.trim(), "job.batch/hello created");
    let stored = sim.object("jobs", "default", "hello").expect("stored");
    assert_eq!(stored["metadata"]["labels"]["app"], "kedge");
    assert_eq!(sim.creates_of("jobs")[0].code, 201);

    let out = run(&bin, dir, &["get", "jobs"]).await;
    let mut lines = out.lines();
    assert!(lines.next().is_some_and(|h| h.starts_with("NAME")), "{out}");
    assert!(
        lines.any(|l| l.split_whitespace().next() == Some("hello")),
        "{out}"
    );

    // `get -w`: the current Job first, then a Job created while watching.
    let mut watch = kubectl(&bin, dir, &["get", "jobs", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kubectl get -w");
    let mut out = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let mut second_created = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = tokio::time::timeout(left, out.next_line())
            .await
            .unwrap_or_else(|_| {
                panic!("kubectl get -w: no line for \"second\" in 30 s; saw {seen:?}")
            })
            .expect("read kubectl output")
            .unwrap_or_else(|| panic!("kubectl get -w ended; saw {seen:?}"));
        let name = line.split_whitespace().next().unwrap_or("").to_string();
        seen.push(line);
        if name == "hello" && !second_created {
            second_created = true;
            let second = JOB_YAML.replace("name: hello", "name: second");
            std::fs::write(dir.join("second.yaml"), second).expect("second.yaml");
            let f = dir.join("second.yaml");
            run(
                &bin,
                dir,
                &[
                    "create",
                    "--validate=false",
                    "-f",
                    f.to_str().expect("utf-8"),
                ],
            )
            .await;
        }
        if name == "second" {
            break;
        }
    }
    watch.kill().await.expect("stop kubectl get -w");

    let out = run(&bin, dir, &["delete", "job", "hello"]).await;
    assert_eq!(out.trim(), r#"job.batch "hello" deleted"#);
    assert!(sim.object("jobs", "default", "hello").is_none());
    assert!(sim.object("jobs", "default", "second").is_some());
}
