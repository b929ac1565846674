//! Shared helpers for kedge's integration tests.
//!
//! - [`Workspace`]: a temp dir with `config/kedge.yaml` and `jobs/`, to run
//!   the built binary in as a user would.
//! - [`wait_until`]: poll a condition with a deadline instead of sleeping.
//! - [`ReservedPort`]: a loopback port held (bound, not listening) so that
//!   connecting to it is refused and no other test can take it.
//! - [`spawn_redis_server`]: a private `redis-server` on a free port, retried
//!   on another port when the chosen one was taken.
//! - [`postgres_database`]: a fresh database on the real PostgreSQL server,
//!   dropped afterwards; when the server is unreachable the test fails under
//!   `CI` and is skipped loudly elsewhere.
#![allow(dead_code)]

pub mod kube;
pub mod tools;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The built `kedge` binary.
pub fn kedge_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kedge"))
}

/// A directory laid out like a kedge checkout: `config/kedge.yaml`, `jobs/`.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    /// A workspace whose config uses a SQLite store inside it, the local
    /// executor with short pod backoff, and fast polling.
    pub fn new() -> Workspace {
        let ws = Workspace {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        std::fs::create_dir_all(ws.path().join("jobs")).expect("jobs dir");
        ws.write_config(
            "jobs_dir: jobs\n\
             store:\n  url: sqlite://state/kedge.db\n  poll_interval: 50ms\n\
             executor:\n  kind: local\n  local:\n    work_dir: runs\n    pod_backoff: 100ms\n    pod_backoff_max: 1s\n\
             shutdown_timeout: 10s\n",
        );
        ws
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write_config(&self, yaml: &str) {
        std::fs::create_dir_all(self.path().join("config")).expect("config dir");
        std::fs::write(self.path().join("config/kedge.yaml"), yaml).expect("write config");
    }

    /// Writes `jobs/<name>.yaml`.
    pub fn write_job(&self, name: &str, yaml: &str) {
        std::fs::write(self.path().join("jobs").join(format!("{name}.yaml")), yaml)
            .expect("write job");
    }

    /// Writes `calendars/<name>.yaml` (the default `calendars_dir`).
    pub fn write_calendar(&self, name: &str, yaml: &str) {
        std::fs::create_dir_all(self.path().join("calendars")).expect("calendars dir");
        std::fs::write(
            self.path().join("calendars").join(format!("{name}.yaml")),
            yaml,
        )
        .expect("write calendar");
    }

    /// A `kedge` command running in this workspace.
    pub fn kedge(&self) -> Command {
        let mut c = Command::new(kedge_bin());
        c.current_dir(self.path())
            .env_remove("KEDGE_CONFIG")
            .env_remove("KEDGE_JOBS")
            .env_remove("KEDGE_STORE")
            .env_remove("KEDGE_CALENDARS")
            .env("KEDGE_LOG", "info");
        c
    }

    /// Runs `kedge ARGS` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.kedge().args(args).output().expect("run kedge")
    }

    /// Runs `kedge ARGS`, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kedge {args:?} failed ({:?}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kedge runs --json --limit 100000` parsed.
    pub fn runs(&self) -> Vec<serde_json::Value> {
        let out = self.ok(&["runs", "--json", "--limit", "100000"]);
        serde_json::from_str(&out).expect("runs --json is JSON")
    }

    /// `kedge dlq list --json` parsed.
    pub fn dead_letters(&self) -> Vec<serde_json::Value> {
        let out = self.ok(&["dlq", "list", "--json", "--limit", "100000"]);
        serde_json::from_str(&out).expect("dlq list --json is JSON")
    }

    /// Starts `kedge run` in the background; its log goes to `daemon-N.log`.
    pub fn start_daemon(&self) -> Daemon {
        self.start_daemon_with(&[])
    }

    /// Every daemon log of this workspace (`daemon-N.log`), in file-name order.
    pub fn daemon_logs(&self) -> String {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.path())
            .expect("workspace")
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("daemon-"))
            })
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }

    /// [`Workspace::start_daemon`] with extra environment variables.
    pub fn start_daemon_with(&self, env: &[(String, String)]) -> Daemon {
        let d = self.spawn_daemon_with(env);
        wait_until(Duration::from_secs(30), "the daemon to be ready", || {
            d.log().contains("kedge ready")
        });
        d
    }

    /// Starts `kedge run` without waiting for it to be ready (a follower
    /// replica waits for the leader Lease first).
    pub fn spawn_daemon(&self) -> Daemon {
        self.spawn_daemon_with(&[])
    }

    fn spawn_daemon_with(&self, env: &[(String, String)]) -> Daemon {
        self.spawn_daemon_args(&[], env)
    }

    /// `kedge run --log-format json ARGS` started in the background,
    /// without waiting for it to be ready.
    pub fn spawn_daemon_args(&self, args: &[&str], env: &[(String, String)]) -> Daemon {
        // The first free name, claimed with `create_new`: two daemons
        // started at once never share (or truncate) a log. Zero-padded, so
        // file-name order is start order.
        let (log_path, log) = (0..)
            .find_map(|n| {
                let path = self.path().join(format!("daemon-{n:03}.log"));
                match std::fs::File::create_new(&path) {
                    Ok(f) => Some((path, f)),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => None,
                    Err(e) => panic!("daemon log {}: {e}", path.display()),
                }
            })
            .expect("a free daemon log name");
        let child = self
            .kedge()
            .args(["run", "--log-format", "json"])
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start kedge run");
        Daemon { child, log_path }
    }
}

/// A background `kedge run`.
pub struct Daemon {
    pub child: Child,
    pub log_path: PathBuf,
}

impl Daemon {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The address its HTTP server bound (`http.listen` with port 0), from
    /// its log.
    pub fn http_addr(&self) -> String {
        let mut found = None;
        wait_until(
            Duration::from_secs(10),
            "the http address in the log",
            || {
                found = self.log().lines().find_map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).ok()?;
                    v["fields"]["bound"].as_str().map(str::to_string)
                });
                found.is_some()
            },
        );
        found.unwrap()
    }
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        wait_child(&mut self.child, Duration::from_secs(30))
    }
    /// SIGKILL: the daemon gets no chance to clean up.
    pub fn kill9(mut self) {
        unsafe {
            libc::kill(self.pid(), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_child(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        assert!(
            start.elapsed() < limit,
            "process did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pause between two checks of a condition that took `took`: 25 ms
/// after a cheap check (a file read), ten times the check's own time after
/// a costly one (a forked `kedge` CLI, a server round trip), at most 250 ms.
/// Polling thus takes at most about a tenth of a core, which on a loaded
/// two-core machine matters: the daemon under test needs the rest.
fn poll_pause(took: Duration) -> Duration {
    (took * 10).clamp(Duration::from_millis(25), Duration::from_millis(250))
}

/// Polls `cond` until it holds (see [`poll_pause`] for how often); panics
/// after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        let check = Instant::now();
        if cond() {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(poll_pause(check.elapsed()));
    }
}

/// The async version of [`wait_until`].
pub async fn wait_until_async<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        let check = Instant::now();
        if cond().await {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(poll_pause(check.elapsed())).await;
    }
}

/// Base URL of the PostgreSQL server used by tests (a maintenance database).
pub fn postgres_admin_url() -> String {
    std::env::var("KEDGE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A throwaway database on the real PostgreSQL server; dropped on `drop`.
pub struct PgDatabase {
    pub url: String,
    name: String,
}

/// Creates a fresh database for one test. Returns `None` (after a loud
/// message) when the server is unreachable on a developer machine; panics
/// when `CI` is set, because CI must run every test.
pub async fn postgres_database() -> Option<PgDatabase> {
    use sqlx::Connection;
    let admin = postgres_admin_url();
    let mut conn = match sqlx::PgConnection::connect(&admin).await {
        Ok(c) => c,
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!("PostgreSQL at {admin} is unreachable and CI is set: {e}");
            }
            eprintln!("\n!!! SKIPPING: PostgreSQL at {admin} is unreachable ({e}); set it up or run under CI to enforce\n");
            return None;
        }
    };
    let name = format!("kedge_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    Some(PgDatabase {
        url: format!("{base}/{name}"),
        name,
    })
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Drop on a separate thread with its own runtime: Drop may run
        // inside a tokio runtime, where blocking on another is not allowed.
        let admin = postgres_admin_url();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut c)
                        .await;
                }
            });
        })
        .join();
    }
}

/// Restarts the machine's PostgreSQL cluster (`pg_ctlcluster … restart`).
/// The caller waits for it to accept its own queries again.
pub fn restart_postgres_cluster() {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql")
        .flatten()
        .next()
        .expect("a cluster")
        .file_name();
    let out = Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            &version.to_string_lossy(),
            "main",
            "restart",
        ])
        .output()
        .expect("pg_ctlcluster");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A loopback port held by a socket that is bound but not listening: a
/// connection to it is refused, and no other test (nor a server it starts)
/// can take the port while this lives. Bind-then-drop would free the port
/// at once, for anyone to take before the check that wants it refused.
pub struct ReservedPort {
    socket: tokio::net::TcpSocket,
}

impl ReservedPort {
    pub fn new() -> ReservedPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind a loopback port");
        ReservedPort { socket }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.socket.local_addr().expect("local addr")
    }

    pub fn port(&self) -> u16 {
        self.addr().port()
    }
}

/// A loopback port that was free a moment ago (bound, then released). It
/// can be taken by someone else before it is used: whoever uses it must
/// notice (as [`spawn_redis_server`] does) and take another.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Why [`spawn_redis_server_on`] failed.
#[derive(Debug)]
pub enum RedisSpawnError {
    /// `redis-server` exited while starting: the port was taken (by a
    /// server of another test, say) between choosing it and binding it.
    Exited(std::process::ExitStatus),
    /// It cannot be started at all, or never answered.
    Failed(String),
}

impl std::fmt::Display for RedisSpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisSpawnError::Exited(s) => write!(f, "redis-server exited while starting ({s})"),
            RedisSpawnError::Failed(e) => f.write_str(e),
        }
    }
}

/// Starts `redis-server` (no persistence, optionally `--requirepass`) on
/// `port` and returns once it answers — as itself: the server that answers
/// on the port must report our child's pid, because when the port was taken
/// our child exits while the taker answers.
pub fn spawn_redis_server_on(port: u16, password: Option<&str>) -> Result<Child, RedisSpawnError> {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string()]).args([
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    if let Some(p) = password {
        cmd.args(["--requirepass", p]);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| RedisSpawnError::Failed(e.to_string()))?;
    let auth = password.map(|p| format!(":{p}@")).unwrap_or_default();
    let url = format!("redis://{auth}127.0.0.1:{port}/");
    let ours = format!("process_id:{}", child.id());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Err(RedisSpawnError::Exited(status));
        }
        let info = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("INFO").arg("server").query::<String>(&mut c));
        if info.is_ok_and(|i| i.lines().any(|l| l.trim() == ours)) {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(RedisSpawnError::Failed(format!(
                "redis-server on port {port} did not answer within 30 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`spawn_redis_server_on`] a free port, trying another port when the
/// chosen one was taken before the server bound it. Returns the port.
pub fn spawn_redis_server(password: Option<&str>) -> Result<(u16, Child), String> {
    let mut last = String::new();
    for _ in 0..10 {
        let port = free_port();
        match spawn_redis_server_on(port, password) {
            Ok(child) => return Ok((port, child)),
            Err(RedisSpawnError::Exited(s)) => last = format!("port {port}: exited ({s})"),
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(format!(
        "redis-server exited at start on 10 free ports; last {last}"
    ))
}

/// One HTTP/1.0 GET: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    http_request(addr, "GET", path)
}

/// `POST path` (no body) to `addr`: the status and the body.
pub fn http_post(addr: &str, path: &str) -> (u16, String) {
    http_request(addr, "POST", path)
}

fn http_request(addr: &str, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).expect("connect to kedge's http");
    write!(
        c,
        "{method} {path} HTTP/1.0\r\nHost: kedge\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
