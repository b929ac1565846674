//! Queue sources end to end, through the built binary against the real
//! brokers: 1,000 messages per source while the daemon is `kill -9`-ed at
//! random points and the broker is restarted once. At the end every
//! message is exactly one succeeded run or one dead letter: none lost,
//! none succeeded twice, and every dead letter also reached the source's
//! dead-letter target.
//!
//! Redis runs as a private `redis-server` per test (restarting the shared
//! one would disturb other tests); RabbitMQ and PostgreSQL are the shared
//! servers, restarted with `rabbitmqctl stop_app/start_app` and
//! `pg_ctlcluster restart` — each only in one test of this binary.

mod support;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use support::{http_get, wait_until, Daemon, Workspace};

/// How many messages each scenario sends.
const MESSAGES: usize = 1000;

/// One broker's part in the scenario.
trait Broker {
    /// The job file's `trigger.queue` source entry and `dead_letter`.
    fn job_yaml(&self) -> String;
    /// Environment for the daemon (URLs by `url_env`).
    fn env(&self) -> Vec<(String, String)>;
    /// Publishes one message; returns the message id kedge will see.
    fn publish(&mut self, i: usize, body: &[u8]) -> String;
    /// Messages published but not yet claimed by kedge.
    fn backlog(&mut self) -> usize;
    /// Restarts the broker (returns when it serves again).
    fn restart(&mut self);
    /// The dead letters published to the dead-letter target so far.
    fn dead_letters(&mut self) -> Vec<serde_json::Value>;
    /// Whether the broker keeps data across its restart (Redis here runs
    /// without persistence: dead letters forwarded before it are gone).
    fn durable(&self) -> bool {
        true
    }
}

/// Fails under CI, else prints a loud skip message.
fn unavailable(what: &str, e: impl std::fmt::Display) -> bool {
    if std::env::var_os("CI").is_some() {
        panic!("{what} is unavailable and CI is set: {e}");
    }
    eprintln!("\n!!! SKIPPING: {what} is unavailable ({e}); start it or run under CI to enforce\n");
    false
}

// ----- the scenario ---------------------------------------------------------

fn body(i: usize) -> Vec<u8> {
    if i % 97 == 13 {
        // Poison: not JSON. Dead-lettered at intake with reason not_json.
        format!("not json #{i}").into_bytes()
    } else if i % 50 == 7 {
        format!("{{\"i\":{i},\"fail\":true}}").into_bytes()
    } else {
        format!("{{\"i\":{i}}}").into_bytes()
    }
}

fn scenario(name: &str, broker: &mut dyn Broker) {
    let seed: u64 = rand::random();
    eprintln!("{name}: seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let ws = Workspace::new();
    ws.write_config(
        "jobs_dir: jobs\n\
         store:\n  url: sqlite://state/kedge.db\n  poll_interval: 100ms\n\
         executor:\n  kind: local\n  local:\n    work_dir: runs\n    pod_backoff: 50ms\n    pod_backoff_max: 200ms\n\
         limits:\n  max_active_runs: 16\n\
         shutdown_timeout: 10s\n",
    );
    ws.write_job(
        "q",
        &format!(
            r#"
name: q
{}
retry: {{ max_attempts: 2, backoff: 50ms }}
template:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: main
          command: ["sh", "-c", "case \"$KEDGE_PAYLOAD\" in *fail*) exit 1;; esac"]
"#,
            broker.job_yaml()
        ),
    );
    let env = broker.env();
    let start = |ws: &Workspace| -> Daemon { ws.start_daemon_with(&env) };

    // Kill points and the broker restart, spread over the run.
    let mut kills: Vec<usize> = (0..3)
        .map(|_| rng.random_range(50..MESSAGES - 50))
        .collect();
    kills.sort();
    let restart_at = rng.random_range(MESSAGES / 4..MESSAGES * 3 / 4);
    eprintln!("{name}: kill -9 after {kills:?} messages, broker restart after {restart_at}");

    let mut daemon = Some(start(&ws));
    let mut restarted_at = chrono::Utc::now();
    let mut expected: HashMap<String, usize> = HashMap::new();
    let began = Instant::now();
    for i in 0..MESSAGES {
        let id = broker.publish(i, &body(i));
        assert!(
            expected.insert(id.clone(), i).is_none(),
            "message id {id} reused"
        );
        if kills.contains(&(i + 1)) {
            // Let some of it get going, then pull the plug.
            std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
            daemon.take().expect("daemon").kill9();
            daemon = Some(start(&ws));
        }
        if i + 1 == restart_at {
            // Without persistence a Redis restart drops what it holds:
            // restart once kedge has claimed everything sent so far.
            wait_until(Duration::from_secs(60), "the backlog to drain", || {
                broker.backlog() == 0
            });
            broker.restart();
            restarted_at = chrono::Utc::now();
        }
    }
    eprintln!("{name}: published {MESSAGES} in {:?}", began.elapsed());

    let settled = |ws: &Workspace| {
        let runs = ws.runs();
        let succeeded: HashSet<String> = runs
            .iter()
            .filter(|r| r["state"] == "succeeded")
            .map(|r| r["message_id"].as_str().unwrap_or_default().to_string())
            .collect();
        let dead: HashSet<String> = ws
            .dead_letters()
            .iter()
            .map(|d| d["message_id"].as_str().unwrap_or_default().to_string())
            .collect();
        succeeded.len() + dead.len()
    };
    wait_until(Duration::from_secs(240), "every message to settle", || {
        settled(&ws) >= MESSAGES
    });
    eprintln!("{name}: all settled after {:?}", began.elapsed());

    // Exactly one succeeded run or one dead letter per message.
    let runs = ws.runs();
    let letters = ws.dead_letters();
    let mut succeeded: HashMap<String, usize> = HashMap::new();
    for r in runs.iter().filter(|r| r["state"] == "succeeded") {
        *succeeded
            .entry(r["message_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let mut dead: HashMap<String, usize> = HashMap::new();
    for d in &letters {
        *dead
            .entry(d["message_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    for (id, i) in &expected {
        let s = succeeded.get(id).copied().unwrap_or(0);
        let d = dead.get(id).copied().unwrap_or(0);
        assert_eq!(
            s + d,
            1,
            "message {i} ({id}): {s} succeeded runs, {d} dead letters"
        );
        let should_die = body(*i).starts_with(b"not json") || body(*i).ends_with(b"true}");
        assert_eq!(d == 1, should_die, "message {i} ({id}) ended the wrong way");
    }
    for id in succeeded.keys().chain(dead.keys()) {
        assert!(expected.contains_key(id), "a message nobody sent: {id}");
    }
    let poison = letters.iter().filter(|d| d["reason"] == "not_json").count();
    assert_eq!(poison, (0..MESSAGES).filter(|i| i % 97 == 13).count());

    // Every dead letter also reached the broker's dead-letter target (for
    // a broker without persistence: every one created after its restart).
    let must_forward: Vec<String> = letters
        .iter()
        .filter(|d| {
            broker.durable()
                || d["created_at"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .is_some_and(|t| t > restarted_at)
        })
        .map(|d| d["message_id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        !must_forward.is_empty(),
        "no dead letter to check forwarding with"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let forwarded: HashSet<String> = broker
            .dead_letters()
            .iter()
            .map(|l| l["message_id"].as_str().unwrap_or_default().to_string())
            .collect();
        let missing: Vec<&String> = must_forward
            .iter()
            .filter(|id| !forwarded.contains(*id))
            .collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let logs: String = ws
                .daemon_logs()
                .lines()
                .filter(|l| l.contains("dead letter") || l.contains("WARN") || l.contains("ERROR"))
                .take(40)
                .collect::<Vec<_>>()
                .join("\n");
            panic!(
                "{} of {} dead letters never reached the target (restart at {restarted_at}): {missing:?}\nlog:\n{logs}",
                missing.len(),
                must_forward.len()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(daemon.take().expect("daemon").stop().success());
}

// ----- Redis ----------------------------------------------------------------

/// A private redis-server (no persistence) on a free port.
struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// `--requirepass`, if any.
    password: Option<String>,
}

impl RedisServer {
    /// On a free port (another one if the first was taken meanwhile).
    fn start() -> Option<RedisServer> {
        match support::spawn_redis_server(None) {
            Ok((port, child)) => Some(RedisServer {
                port,
                child: Some(child),
                password: None,
            }),
            Err(e) => {
                unavailable("redis-server", e);
                None
            }
        }
    }

    /// On `port`, which the caller kept reserved until now.
    fn start_on(port: u16, password: Option<&str>) -> Option<RedisServer> {
        let mut s = RedisServer {
            port,
            child: None,
            password: password.map(str::to_string),
        };
        match support::spawn_redis_server_on(port, password) {
            Ok(child) => s.child = Some(child),
            Err(e @ support::RedisSpawnError::Exited(_)) => {
                panic!("redis-server on the reserved port {port}: {e}")
            }
            Err(e) => {
                unavailable("redis-server", e);
                return None;
            }
        }
        Some(s)
    }

    fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url().as_str())
            .and_then(|c| c.get_connection())
            .expect("redis connection")
    }

    /// Kills the server and starts it again on the same port (the
    /// daemon's URL names it). Another test's free-port probe may hold the
    /// port for a moment after it is released: a start that lost the port
    /// is tried again.
    fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for attempt in 1.. {
            match support::spawn_redis_server_on(self.port, self.password.as_deref()) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(support::RedisSpawnError::Exited(_)) if attempt < 10 => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(e) => panic!("restart redis-server on port {}: {e}", self.port),
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct RedisListBroker {
    server: RedisServer,
    conn: redis::Connection,
}

impl Broker for RedisListBroker {
    fn durable(&self) -> bool {
        false
    }
    fn job_yaml(&self) -> String {
        "trigger:\n  queue:\n    redis_list: { url_env: KEDGE_TEST_REDIS, list: jobs, lease: 3s }\n\
         dead_letter: { list: jobs-dead }\n"
            .into()
    }
    fn env(&self) -> Vec<(String, String)> {
        vec![("KEDGE_TEST_REDIS".into(), self.server.url())]
    }
    fn publish(&mut self, _i: usize, body: &[u8]) -> String {
        let _: i64 = redis::cmd("RPUSH")
            .arg("jobs")
            .arg(body)
            .query(&mut self.conn)
            .expect("RPUSH");
        kedge::sources::body_id(body)
    }
    fn backlog(&mut self) -> usize {
        // Unclaimed, plus claimed but not yet settled (a restart without
        // persistence would drop those before kedge stored them).
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("jobs*")
            .query(&mut self.conn)
            .unwrap_or_default();
        keys.iter()
            .filter(|k| *k == "jobs" || k.contains(":processing:"))
            .map(|k| {
                redis::cmd("LLEN")
                    .arg(k)
                    .query::<usize>(&mut self.conn)
                    .unwrap_or(usize::MAX)
            })
            .fold(0usize, |a, b| a.saturating_add(b))
    }
    fn restart(&mut self) {
        self.server.restart();
        self.conn = self.server.conn();
    }
    fn dead_letters(&mut self) -> Vec<serde_json::Value> {
        let items: Vec<String> = redis::cmd("LRANGE")
            .arg("jobs-dead")
            .arg(0)
            .arg(-1)
            .query(&mut self.conn)
            .unwrap_or_default();
        items
            .iter()
            .filter_map(|s| serde_json::from_str(s).ok())
            .collect()
    }
}

#[test]
fn redis_list_survives_kills_and_a_redis_restart() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let conn = server.conn();
    let mut b = RedisListBroker { server, conn };
    scenario("redis_list", &mut b);
}

struct RedisStreamBroker {
    server: RedisServer,
    conn: redis::Connection,
}

impl Broker for RedisStreamBroker {
    fn durable(&self) -> bool {
        false
    }
    fn job_yaml(&self) -> String {
        "trigger:\n  queue:\n    redis_stream: { url_env: KEDGE_TEST_REDIS, stream: jobs, group: kedge, claim_idle: 2s }\n\
         dead_letter: { stream: jobs-dead }\n"
            .into()
    }
    fn env(&self) -> Vec<(String, String)> {
        vec![("KEDGE_TEST_REDIS".into(), self.server.url())]
    }
    fn publish(&mut self, _i: usize, body: &[u8]) -> String {
        redis::cmd("XADD")
            .arg("jobs")
            .arg("*")
            .arg("payload")
            .arg(body)
            .query(&mut self.conn)
            .expect("XADD")
    }
    fn backlog(&mut self) -> usize {
        // Entries not yet delivered to the group (its `lag`), plus entries
        // delivered but not acked.
        let groups: redis::Value = match redis::cmd("XINFO")
            .arg("GROUPS")
            .arg("jobs")
            .query(&mut self.conn)
        {
            Ok(v) => v,
            Err(_) => return usize::MAX,
        };
        let text = format!("{groups:?}");
        let num_after = |key: &str| -> usize {
            text.split(key)
                .nth(1)
                .and_then(|rest| {
                    rest.chars()
                        .skip_while(|c| !c.is_ascii_digit())
                        .take_while(|c| c.is_ascii_digit())
                        .collect::<String>()
                        .parse()
                        .ok()
                })
                .unwrap_or(usize::MAX)
        };
        let lag = num_after("\"lag\"");
        let pending = num_after("\"pending\"");
        lag.saturating_add(pending)
    }
    fn restart(&mut self) {
        self.server.restart();
        self.conn = self.server.conn();
    }
    fn dead_letters(&mut self) -> Vec<serde_json::Value> {
        let v: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg("jobs-dead")
            .arg("-")
            .arg("+")
            .query(&mut self.conn)
            .unwrap_or_default();
        v.ids
            .iter()
            .map(|e| {
                let mut o = serde_json::Map::new();
                for (k, val) in &e.map {
                    if let Ok(s) = redis::from_redis_value_ref::<String>(val) {
                        o.insert(k.clone(), serde_json::Value::String(s));
                    }
                }
                serde_json::Value::Object(o)
            })
            .collect()
    }
}

#[test]
fn redis_stream_survives_kills_and_a_redis_restart() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let conn = server.conn();
    let mut b = RedisStreamBroker { server, conn };
    scenario("redis_stream", &mut b);
}

// ----- RabbitMQ -------------------------------------------------------------

const RABBIT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

struct RabbitBroker {
    rt: tokio::runtime::Runtime,
    channel: lapin::Channel,
    conn: lapin::Connection,
    queue: String,
}

impl RabbitBroker {
    fn connect(
        rt: &tokio::runtime::Runtime,
    ) -> Result<(lapin::Connection, lapin::Channel), lapin::Error> {
        rt.block_on(async {
            let conn =
                lapin::Connection::connect(RABBIT_URL, lapin::ConnectionProperties::default())
                    .await?;
            let channel = conn.create_channel().await?;
            channel
                .confirm_select(lapin::options::ConfirmSelectOptions::default())
                .await?;
            Ok((conn, channel))
        })
    }

    fn declare(&self, name: &str) {
        self.rt
            .block_on(self.channel.queue_declare(
                name,
                lapin::options::QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            ))
            .expect("declare queue");
    }

    fn ctl(args: &[&str]) {
        let out = Command::new("rabbitmqctl")
            .args(args)
            .output()
            .expect("rabbitmqctl");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Broker for RabbitBroker {
    fn job_yaml(&self) -> String {
        format!(
            "trigger:\n  queue:\n    rabbitmq: {{ url_env: KEDGE_TEST_AMQP, queue: {q}, prefetch: 64 }}\n\
             dead_letter: {{ exchange: \"\", routing_key: {q}-dead }}\n",
            q = self.queue
        )
    }
    fn env(&self) -> Vec<(String, String)> {
        vec![("KEDGE_TEST_AMQP".into(), RABBIT_URL.into())]
    }
    fn publish(&mut self, i: usize, body: &[u8]) -> String {
        let id = format!("m-{i}");
        let props = lapin::BasicProperties::default()
            .with_message_id(id.clone().into())
            .with_delivery_mode(2);
        self.rt
            .block_on(async {
                self.channel
                    .basic_publish(
                        "",
                        self.queue.as_str(),
                        lapin::options::BasicPublishOptions::default(),
                        body,
                        props,
                    )
                    .await?
                    .await
            })
            .expect("publish");
        id
    }
    fn backlog(&mut self) -> usize {
        // Ready plus unacked messages.
        let out = Command::new("rabbitmqctl")
            .args([
                "list_queues",
                "-q",
                "--no-table-headers",
                "name",
                "messages",
            ])
            .output()
            .expect("rabbitmqctl");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(self.queue.as_str()))
                    .then(|| f.next().and_then(|n| n.parse().ok()))
                    .flatten()
            })
            .unwrap_or(usize::MAX)
    }
    fn restart(&mut self) {
        Self::ctl(&["stop_app"]);
        Self::ctl(&["start_app"]);
        Self::ctl(&["await_startup"]);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match Self::connect(&self.rt) {
                Ok((conn, ch)) => {
                    self.conn = conn;
                    self.channel = ch;
                    return;
                }
                Err(e) => assert!(Instant::now() < deadline, "RabbitMQ did not come back: {e}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    fn dead_letters(&mut self) -> Vec<serde_json::Value> {
        let q = format!("{}-dead", self.queue);
        let mut out = Vec::new();
        // Read without consuming: get, collect, then nack with requeue.
        let mut tags = Vec::new();
        while let Ok(Some(m)) = self.rt.block_on(
            self.channel
                .basic_get(q.as_str(), lapin::options::BasicGetOptions::default()),
        ) {
            if let Ok(v) = serde_json::from_slice(&m.delivery.data) {
                out.push(v);
            }
            tags.push(m.delivery.delivery_tag);
        }
        for t in tags {
            let _ = self.rt.block_on(self.channel.basic_nack(
                t,
                lapin::options::BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                },
            ));
        }
        out
    }
}

impl Drop for RabbitBroker {
    fn drop(&mut self) {
        for q in [self.queue.clone(), format!("{}-dead", self.queue)] {
            let _ = self.rt.block_on(
                self.channel
                    .queue_delete(q.as_str(), lapin::options::QueueDeleteOptions::default()),
            );
        }
        let _ = self.rt.block_on(self.conn.close(200, "bye"));
    }
}

#[test]
fn rabbitmq_survives_kills_and_a_broker_restart() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (conn, channel) = match RabbitBroker::connect(&rt) {
        Ok(c) => c,
        Err(e) => {
            unavailable("RabbitMQ at 127.0.0.1:5672", e);
            return;
        }
    };
    let mut b = RabbitBroker {
        rt,
        channel,
        conn,
        queue: format!("kedge-e2e-{}", uuid::Uuid::new_v4().simple()),
    };
    b.declare(&b.queue.clone());
    b.declare(&format!("{}-dead", b.queue));
    scenario("rabbitmq", &mut b);
}

// ----- PostgreSQL -----------------------------------------------------------

struct PgBroker {
    rt: tokio::runtime::Runtime,
    db: Option<support::PgDatabase>,
    url: String,
}

impl PgBroker {
    fn exec(&self, sql: &str) -> Result<(), sqlx::Error> {
        self.rt.block_on(async {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&self.url).await?;
            sqlx::raw_sql(sql).execute(&mut c).await?;
            Ok(())
        })
    }
    fn count(&self, sql: &str) -> Result<i64, sqlx::Error> {
        self.rt.block_on(async {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&self.url).await?;
            sqlx::query_scalar::<_, i64>(sql).fetch_one(&mut c).await
        })
    }
}

impl Broker for PgBroker {
    fn job_yaml(&self) -> String {
        "trigger:\n  queue:\n    postgres: { url_env: KEDGE_TEST_PG, table: jobs, channel: jobs_ready, poll_interval: 2s }\n\
         dead_letter: { table: jobs_dead }\n"
            .into()
    }
    fn env(&self) -> Vec<(String, String)> {
        vec![("KEDGE_TEST_PG".into(), self.url.clone())]
    }
    fn publish(&mut self, i: usize, body: &[u8]) -> String {
        // The payload column is text: poison bodies are not JSON.
        let id = format!("row-{i}");
        let body = String::from_utf8_lossy(body).replace('\'', "''");
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(e) = self.exec(&format!(
            "INSERT INTO jobs (id, payload) VALUES ('{id}', '{body}')"
        )) {
            assert!(Instant::now() < deadline, "insert: {e}");
            std::thread::sleep(Duration::from_millis(200));
        }
        id
    }
    fn backlog(&mut self) -> usize {
        self.count("SELECT count(*) FROM jobs")
            .map(|n| n as usize)
            .unwrap_or(usize::MAX)
    }
    fn restart(&mut self) {
        support::restart_postgres_cluster();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.count("SELECT 1::bigint").is_err() {
            assert!(Instant::now() < deadline, "PostgreSQL did not come back");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    fn dead_letters(&mut self) -> Vec<serde_json::Value> {
        self.rt
            .block_on(async {
                use sqlx::{Connection, Row};
                let mut c = sqlx::PgConnection::connect(&self.url).await?;
                let rows = sqlx::query("SELECT message_id, reason FROM jobs_dead")
                    .fetch_all(&mut c)
                    .await?;
                Ok::<_, sqlx::Error>(
                    rows.iter()
                        .map(|r| {
                            serde_json::json!({
                                "message_id": r.get::<String, _>(0),
                                "reason": r.get::<String, _>(1),
                            })
                        })
                        .collect(),
                )
            })
            .unwrap_or_default()
    }
}

impl Drop for PgBroker {
    fn drop(&mut self) {
        drop(self.db.take());
    }
}

#[test]
fn postgres_table_survives_kills_and_a_server_restart() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let Some(db) = rt.block_on(support::postgres_database()) else {
        return;
    };
    let url = db.url.clone();
    let b = PgBroker {
        rt,
        db: Some(db),
        url,
    };
    b.exec(
        "CREATE TABLE jobs (id TEXT PRIMARY KEY, payload TEXT NOT NULL);
         CREATE FUNCTION jobs_notify() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN PERFORM pg_notify('jobs_ready', ''); RETURN NULL; END $$;
         CREATE TRIGGER jobs_notify AFTER INSERT ON jobs FOR EACH STATEMENT EXECUTE FUNCTION jobs_notify();",
    )
    .expect("create queue table");
    let mut b = b;
    scenario("postgres", &mut b);
}

// ----- batches --------------------------------------------------------------

/// A batching job: messages go into Indexed runs, one index per message;
/// the one bad message fails only its index, is retried alone and
/// dead-lettered alone; every other message succeeds in its batch.
#[test]
fn batch_runs_settle_each_message_on_its_own_index() {
    let ws = Workspace::new();
    let stamps = ws.path().join("stamps");
    std::fs::create_dir_all(&stamps).unwrap();
    ws.write_job(
        "batched",
        &format!(
            r#"
name: batched
trigger:
  queue:
    builtin: {{}}
batch: {{ max_messages: 5, max_wait: 400ms }}
retry: {{ max_attempts: 2, backoff: 50ms }}
template:
  parallelism: 3
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: main
          command:
            - sh
            - -c
            - |
              if [ -n "$KEDGE_PAYLOAD_DIR" ]; then p=$(cat "$KEDGE_PAYLOAD_DIR/$JOB_COMPLETION_INDEX"); else p=$KEDGE_PAYLOAD; fi
              case "$p" in *bad*) exit 1;; esac
              printf '%s' "$p" > {stamps}/$KEDGE_RUN_ID.${{JOB_COMPLETION_INDEX:-single}}
"#,
            stamps = stamps.display()
        ),
    );
    let d = ws.start_daemon();
    for i in 0..12 {
        let data = if i == 6 {
            format!("{{\"i\":{i},\"bad\":true}}")
        } else {
            format!("{{\"i\":{i}}}")
        };
        ws.ok(&[
            "enqueue",
            "batched",
            "--data",
            &data,
            "--id",
            &format!("m-{i}"),
        ]);
    }
    wait_until(Duration::from_secs(60), "11 messages done, 1 dead", || {
        let done: usize = ws
            .runs()
            .iter()
            .filter_map(|r| r["batch"].as_array())
            .flatten()
            .filter(|m| m["state"] == "succeeded")
            .count();
        done == 11 && ws.dead_letters().len() == 1
    });
    assert!(d.stop().success());

    let runs = ws.runs();
    let batch_runs: Vec<&serde_json::Value> =
        runs.iter().filter(|r| r["batch"].is_array()).collect();
    // 12 messages at most 5 per batch: at least 3 batch runs, each ≤ 5.
    assert!(batch_runs.len() >= 3, "{runs:#?}");
    let mut members = 0;
    for r in &batch_runs {
        let n = r["batch"].as_array().unwrap().len();
        assert!((1..=5).contains(&n), "batch of {n}");
        members += n;
    }
    assert_eq!(members, 12, "every message in exactly one batch");
    // The bad message: its batch failed on its index only, then it ran
    // alone as attempt 2 and was dead-lettered alone.
    let bad_batch = batch_runs
        .iter()
        .find(|r| {
            r["batch"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["message_id"] == "m-6")
        })
        .expect("the bad message's batch");
    assert_eq!(bad_batch["state"], "failed");
    assert!(
        bad_batch["error"]
            .as_str()
            .unwrap_or("")
            .contains("FailedIndexes"),
        "{bad_batch}"
    );
    let alone: Vec<_> = runs
        .iter()
        .filter(|r| r["message_id"] == "m-6" && r["batch"].is_null())
        .collect();
    assert_eq!(alone.len(), 1, "{runs:#?}");
    assert_eq!(alone[0]["attempt"], 2);
    assert_eq!(alone[0]["state"], "dead");
    let dead = ws.dead_letters();
    assert_eq!(dead[0]["message_id"], "m-6");
    // Each index saw its own message.
    let mut seen: Vec<String> = std::fs::read_dir(&stamps)
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    seen.sort();
    let mut want: Vec<String> = (0..12)
        .filter(|i| *i != 6)
        .map(|i| format!("{{\"i\":{i}}}"))
        .collect();
    want.sort();
    assert_eq!(seen, want);
}

// ----- health and secrets ---------------------------------------------------

/// While the broker is down the source is degraded (readiness 503, health
/// naming the redacted URL), the daemon keeps running, and once the broker
/// is up the source recovers and runs the message. The password in the
/// URL never appears in the log or the health output.
#[test]
fn an_unreachable_broker_shows_as_degraded_and_the_password_never_shows() {
    // Held until the broker starts: connections are refused meanwhile, and
    // no other test's server can take the port.
    let reserved = support::ReservedPort::new();
    let port = reserved.port();
    let secret = "s3cret-do-not-log";
    let ws = Workspace::new();
    ws.write_config(
        "jobs_dir: jobs\n\
         store:\n  url: sqlite://state/kedge.db\n  poll_interval: 50ms\n\
         executor:\n  kind: local\n  local:\n    work_dir: runs\n\
         http:\n  listen: 127.0.0.1:0\n",
    );
    ws.write_job(
        "q",
        "name: q\ntrigger:\n  queue:\n    redis_list: { url_env: KEDGE_TEST_REDIS, list: jobs }\n\
         template:\n  template:\n    spec:\n      restartPolicy: Never\n      \
         containers: [{ name: m, command: [\"true\"] }]\n",
    );
    let url = format!("redis://:{secret}@127.0.0.1:{port}/");
    let d = ws.start_daemon_with(&[("KEDGE_TEST_REDIS".into(), url)]);
    let addr = d.http_addr();
    wait_until(Duration::from_secs(10), "the source to be degraded", || {
        http_get(&addr, "/readyz").0 == 503
    });
    let (code, body) = http_get(&addr, "/healthz");
    assert_eq!(code, 200);
    let health: serde_json::Value = serde_json::from_str(&body).expect("health JSON");
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["sources"]["q"]["state"], "degraded");
    let error = health["sources"]["q"]["error"].as_str().unwrap_or_default();
    assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");
    assert!(!body.contains(secret), "{body}");

    // The broker comes up: the source recovers, the message runs.
    drop(reserved);
    let Some(server) = RedisServer::start_on(port, Some(secret)) else {
        return;
    };
    let mut conn = server.conn();
    let _: i64 = redis::cmd("RPUSH")
        .arg("jobs")
        .arg("{\"hello\":1}")
        .query(&mut conn)
        .unwrap();
    wait_until(Duration::from_secs(30), "the message to run", || {
        ws.runs().iter().any(|r| r["state"] == "succeeded")
    });
    assert_eq!(http_get(&addr, "/readyz").0, 200);
    let (_, metrics) = http_get(&addr, "/metrics");
    assert!(
        metrics.contains("kedge_source_up{job=\"q\",source=\"redis_list:jobs\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kedge_messages_stored_total{job=\"q\",source=\"redis_list:jobs\"} 1"),
        "{metrics}"
    );
    assert!(d.stop().success());
    let log = ws.daemon_logs();
    assert!(log.contains("queue source unavailable"), "{log}");
    assert!(!log.contains(secret), "the password leaked into the log");
}

/// Messages carry their own deadline: waiting runs launch earliest
/// deadline first, and one whose deadline passes while it waits is
/// dead-lettered as `expired` instead of run late.
///
/// The one slot is held by a "blocker" run that waits for a gate file
/// before the others are enqueued, so they all wait together however long
/// the daemon takes to start, and "expiring" waits past its deadline for
/// certain: the gate opens only once it was dead-lettered.
#[test]
fn message_deadlines_order_launches_and_expire_late_messages() {
    let ws = Workspace::new();
    let order = ws.path().join("order");
    let gate = ws.path().join("gate");
    ws.write_job(
        "dl",
        &format!(
            r#"
name: dl
trigger:
  queue:
    builtin: {{}}
    deadline: {{ json_pointer: /deadline }}
limits: {{ max_active: 1 }}
template:
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: main
          command: ["sh", "-c", "echo $KEDGE_MESSAGE_ID >> {order}; case $KEDGE_MESSAGE_ID in blocker) while [ ! -e {gate} ]; do sleep 0.05; done;; esac"]
"#,
            order = order.display(),
            gate = gate.display(),
        ),
    );
    let at = |ms: i64| {
        (chrono::Utc::now() + chrono::Duration::milliseconds(ms))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let enqueue = |id: &str, ms: i64| {
        let data = format!("{{\"deadline\":\"{}\"}}", at(ms));
        ws.ok(&["enqueue", "dl", "--id", id, "--data", &data]);
    };
    let d = ws.start_daemon();
    enqueue("blocker", 600_000);
    wait_until(Duration::from_secs(30), "the blocker to run", || {
        std::fs::read_to_string(&order).is_ok_and(|o| o.contains("blocker"))
    });
    // Enqueued in an order unlike their deadlines'; "expiring" has the
    // earliest deadline, which passes while the blocker holds the slot.
    for (id, ms) in [
        ("first", 600_000),
        ("later", 500_000),
        ("sooner", 400_000),
        ("expiring", 2_000),
    ] {
        enqueue(id, ms);
    }
    wait_until(Duration::from_secs(30), "the expired dead letter", || {
        !ws.dead_letters().is_empty()
    });
    std::fs::write(&gate, "").unwrap();
    wait_until(Duration::from_secs(30), "all settled", || {
        let done = ws
            .runs()
            .iter()
            .filter(|r| r["state"] == "succeeded")
            .count();
        done + ws.dead_letters().len() == 5
    });
    assert!(d.stop().success());
    let ran: Vec<String> = std::fs::read_to_string(&order)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(ran, ["blocker", "sooner", "later", "first"]);
    let dead = ws.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["message_id"], "expiring");
    assert_eq!(dead[0]["reason"], "expired");
}

/// `kedge dlq replay` returns a broker message's dead letter to its source:
/// the message is published to the Redis list again, the daemon claims it,
/// recognises the replayed work item and runs it with a fresh budget.
#[test]
fn dlq_replay_returns_a_message_to_its_redis_list() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let ws = Workspace::new();
    let marker = ws.path().join("broken");
    std::fs::write(&marker, "").unwrap();
    ws.write_job(
        "q",
        &format!(
            r#"
name: q
trigger:
  queue:
    redis_list: {{ url_env: KEDGE_TEST_REDIS, list: jobs }}
dead_letter: {{ list: jobs-dead }}
retry: {{ max_attempts: 1 }}
template:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: main
          command: ["sh", "-c", "test ! -e {marker}"]
"#,
            marker = marker.display()
        ),
    );
    let env = [("KEDGE_TEST_REDIS".to_string(), server.url())];
    let d = ws.start_daemon_with(&env);
    let mut conn = server.conn();
    let _: i64 = redis::cmd("RPUSH")
        .arg("jobs")
        .arg("{\"order\":7}")
        .query(&mut conn)
        .unwrap();
    wait_until(Duration::from_secs(30), "the dead letter", || {
        ws.dead_letters().len() == 1
    });
    let letter = ws.dead_letters().remove(0);
    wait_until(Duration::from_secs(10), "the letter in jobs-dead", || {
        redis::cmd("LLEN")
            .arg("jobs-dead")
            .query::<i64>(&mut conn)
            .unwrap_or(0)
            == 1
    });

    // Fixed: replay it into the list.
    std::fs::remove_file(&marker).unwrap();
    let id = letter["id"].as_str().unwrap();
    let out = ws
        .kedge()
        .args(["dlq", "replay", id])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("into redis_list:jobs"));
    wait_until(
        Duration::from_secs(30),
        "the replayed message to succeed",
        || ws.runs().iter().any(|r| r["state"] == "succeeded"),
    );
    assert!(d.stop().success());
    let runs = ws.runs();
    let ok = runs.iter().find(|r| r["state"] == "succeeded").unwrap();
    assert_eq!(ok["attempt"], 2, "{runs:#?}");
    assert_eq!(ok["message_id"], letter["message_id"]);
    assert!(ws.dead_letters().is_empty(), "the letter is closed");
}

/// `kedge enqueue` on a broker job publishes to the broker (here a Redis
/// list), where the daemon claims it like any producer's message; a bad
/// payload is refused before anything is published.
#[test]
fn enqueue_on_a_broker_job_publishes_to_the_broker() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let ws = Workspace::new();
    ws.write_job(
        "q",
        "name: q\ntrigger:\n  queue:\n    redis_list: { url_env: KEDGE_TEST_REDIS, list: jobs }\n\
         template:\n  template:\n    spec:\n      restartPolicy: Never\n      \
         containers: [{ name: m, command: [\"true\"] }]\n",
    );
    let env = [("KEDGE_TEST_REDIS".to_string(), server.url())];
    let enqueue = |data: &str| {
        ws.kedge()
            .args(["enqueue", "q", "--data", data])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap()
    };
    let bad = enqueue("not json");
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not JSON"));
    let ok = enqueue("{\"n\":1}");
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("published to redis_list:jobs"));
    let mut conn = server.conn();
    let queued: Vec<String> = redis::cmd("LRANGE")
        .arg("jobs")
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    assert_eq!(queued, ["{\"n\":1}"]);
    let d = ws.start_daemon_with(&env);
    wait_until(
        Duration::from_secs(30),
        "the published message to run",
        || ws.runs().iter().any(|r| r["state"] == "succeeded"),
    );
    assert!(d.stop().success());
    assert_eq!(ws.runs().len(), 1);
}
