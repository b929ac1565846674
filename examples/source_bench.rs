//! Queue sources: claim → store → settle throughput, and message → launch
//! latency through the real daemon.
//!
//! `cargo run --release --example source_bench [-- --messages N]`
//! (default N = 5000; `--latency-messages M`, default 500).
//!
//! Needs the servers the conformance tests use: Redis at 127.0.0.1:6379,
//! RabbitMQ at amqp://guest:guest@127.0.0.1:5672/%2f and PostgreSQL at
//! postgres://postgres@127.0.0.1:5432/test. Every key, queue and table is
//! named with a fresh uuid and removed at the end.
//!
//! For each broker source, in the same run, on N pre-published messages:
//!
//! 1. Baseline: a bare loop with the broker's own client and no kedge code,
//!    doing the broker's reliable-claim cycle (redis list: `BLMOVE` into a
//!    processing list + `LREM` per message; redis stream: `XREADGROUP COUNT
//!    64` + one `XACK` per batch; RabbitMQ: a manual-ack consumer with
//!    prefetch 64 and `basic.ack` per delivery; Postgres: `BEGIN; SELECT …
//!    FOR UPDATE SKIP LOCKED LIMIT 64; DELETE …; COMMIT`).
//! 2. kedge: the source's `claim(64, …)`, `intake::offer_all` of the claim's deliveries
//!    into a fresh SQLite store, then `settle` — what `intake::consume`
//!    does, minus waking the dispatcher.
//!
//! Then the latency from pushing a message to its run's launch
//! (`started_at`), through `target/<profile>/kedge run` with the local
//! executor and a `redis_list` job whose container is `true`. The kedge
//! binary is built first with the same cargo (pass `--kedge PATH` to use
//! another binary and skip that).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use chrono::{DateTime, Utc};
use kedge::config::{Job, Sources, Trigger};
use kedge::intake::{offer_all, Offered};
use kedge::sources::{AnySource, Source};
use kedge::store::Store;
use lapin::message::DeliveryResult;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use sqlx::{Connection as _, PgConnection};
use tokio::sync::mpsc;

const REDIS: &str = "redis://127.0.0.1:6379";
const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Messages per claim, kedge's default (`intake::consume` without `batch`),
/// and the baselines' batch / prefetch.
const BATCH: usize = 64;
/// How long one pass over N messages may take before the bench gives up.
const PASS_LIMIT: Duration = Duration::from_secs(300);

struct Args {
    messages: usize,
    latency_messages: usize,
    kedge: Option<PathBuf>,
}

fn args() -> Result<Args> {
    let mut a = Args {
        messages: 5000,
        latency_messages: 500,
        kedge: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--messages" => a.messages = value()?.parse().context("--messages")?,
            "--latency-messages" => {
                a.latency_messages = value()?.parse().context("--latency-messages")?
            }
            "--kedge" => a.kedge = Some(PathBuf::from(value()?)),
            other => bail!(
                "unknown argument {other:?} (use --messages N, --latency-messages M, --kedge PATH)"
            ),
        }
    }
    ensure!(
        a.messages > 0 && a.latency_messages > 0,
        "counts must be positive"
    );
    Ok(a)
}

/// Message `i` of a pass: unique (a Redis list message's id is its body's
/// hash), JSON, ~70 bytes.
fn body(tag: &str, i: usize) -> String {
    format!("{{\"order\":{i},\"bench\":\"{tag}\",\"note\":\"source bench\"}}")
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let kedge_bin = match &args.kedge {
        Some(p) => p.clone(),
        None => build_kedge()?,
    };
    let n = args.messages;
    let id = uuid::Uuid::new_v4().simple().to_string();
    println!(
        "source_bench: {n} pre-published messages per pass, claims of {BATCH}, SQLite store in a temp dir"
    );

    let mut rows = Vec::new();
    rows.push(("redis_list", redis_list(n, &id).await?));
    rows.push(("redis_stream", redis_stream(n, &id).await?));
    rows.push(("rabbitmq", rabbitmq(n, &id).await?));
    rows.push(("postgres", postgres(n, &id).await?));

    println!();
    println!("| source       | baseline msg/s | kedge msg/s | kedge/baseline |");
    println!("|--------------|----------------|-------------|----------------|");
    for (name, (base, kedge)) in &rows {
        println!(
            "| {name:<12} | {base:>14.0} | {kedge:>11.0} | {:>13.2}× |",
            kedge / base
        );
    }
    println!();

    let lat = latency(&kedge_bin, args.latency_messages, &id).await?;
    println!(
        "message→launch (redis_list, local executor, {} msgs 5 ms apart): p50 {:.1} ms, p99 {:.1} ms (mean {:.1} ms, max {:.1} ms)",
        lat.count, lat.p50, lat.p99, lat.mean, lat.max
    );
    println!(
        "KEDA ScaledJob for comparison (structural, not measured): 30 s default pollingInterval → ~15 s mean pick-up delay, up to 30 s"
    );
    Ok(())
}

/// Builds `target/<profile>/kedge` with the cargo running this example and
/// returns its path.
fn build_kedge() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/examples/source_bench → target/<profile>/kedge
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("cannot tell the target dir from {}", exe.display()))?;
    let bin = profile_dir.join("kedge");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "--bin", "kedge", "--manifest-path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    eprintln!("building {} …", bin.display());
    let status = cmd.status().context("running cargo build --bin kedge")?;
    ensure!(status.success(), "cargo build --bin kedge failed: {status}");
    ensure!(bin.exists(), "{} was not built", bin.display());
    Ok(bin)
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

// ----- kedge's own path ------------------------------------------------------

/// Loads one queue job from `trigger_yaml` (the `trigger.queue` source
/// entry) with kedge's config loader.
fn load_job(name: &str, source_yaml: &str) -> Result<(tempfile::TempDir, Job)> {
    let dir = tempfile::tempdir()?;
    let jobs = dir.path().join("jobs");
    std::fs::create_dir_all(&jobs)?;
    let config = dir.path().join("kedge.yaml");
    std::fs::write(
        &config,
        format!(
            "jobs_dir: {}\nstore:\n  url: sqlite://{}/unused.db\nexecutor:\n  kind: local\n",
            jobs.display(),
            dir.path().display()
        ),
    )?;
    std::fs::write(
        jobs.join(format!("{name}.yaml")),
        format!(
            "name: {name}\ntrigger:\n  queue:\n    {source_yaml}\n\
             template:\n  backoffLimit: 0\n  template:\n    spec:\n      restartPolicy: Never\n      \
             containers:\n        - name: main\n          command: [\"true\"]\n"
        ),
    )?;
    let loaded = kedge::config::load(&Sources {
        config: Some(config),
        jobs: None,
        store: None,
        calendars: None,
    })
    .map_err(|d| anyhow!("bench config:\n{d}"))?;
    ensure!(
        loaded.job_problems.is_empty(),
        "bench job:\n{}",
        loaded.job_problems
    );
    let job = loaded
        .jobs
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no job"))?;
    Ok((dir, job))
}

/// Claims `n` pre-published messages through the job's source, stores each
/// with `intake::offer_all` (one transaction per claim) in a fresh SQLite store and settles each batch.
/// Returns messages per second (claim of the first batch to the last
/// settle; connecting and migrating are not timed).
async fn kedge_path(job: &Job, n: usize) -> Result<f64> {
    let Trigger::Queue(queue) = &job.trigger else {
        bail!("{} is not a queue job", job.name);
    };
    let dir = tempfile::tempdir()?;
    let store = Store::connect(&format!("sqlite://{}/s.db", dir.path().display())).await?;
    store.migrate().await?;
    let name = queue.source.name();
    let mut source =
        AnySource::new(&queue.source, "bench").ok_or_else(|| anyhow!("not a broker source"))?;
    source.connect().await?;
    let start = Instant::now();
    let mut done = 0;
    while done < n {
        ensure!(
            start.elapsed() < PASS_LIMIT,
            "kedge {name}: only {done} of {n} in {PASS_LIMIT:?}"
        );
        let got = source.claim(BATCH, Duration::from_secs(1)).await?;
        let offered = offer_all(&store, job, queue, &name, &got, Utc::now()).await?;
        for (d, o) in got.iter().zip(offered) {
            if o != Offered::Stored {
                bail!("kedge {name}: message {} was {o:?}", d.message_id);
            }
        }
        source.settle(&got).await?;
        done += got.len();
    }
    let took = start.elapsed();
    ensure!(done == n, "kedge {name}: claimed {done}, expected {n}");
    drop(source);
    store.close().await;
    Ok(rate(n, took))
}

// ----- Redis -----------------------------------------------------------------

async fn redis_conn() -> Result<MultiplexedConnection> {
    let client = redis::Client::open(REDIS)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .with_context(|| format!("Redis at {REDIS}"))
}

async fn delete_prefix(c: &mut MultiplexedConnection, prefix: &str) -> Result<()> {
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(c)
            .await?;
        if !keys.is_empty() {
            redis::cmd("DEL").arg(&keys).query_async::<()>(c).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

async fn rpush_all(c: &mut MultiplexedConnection, list: &str, n: usize) -> Result<()> {
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut cmd = redis::cmd("RPUSH");
        cmd.arg(list);
        for i in chunk {
            cmd.arg(body(list, *i));
        }
        cmd.query_async::<()>(c).await?;
    }
    Ok(())
}

async fn redis_list(n: usize, id: &str) -> Result<(f64, f64)> {
    let prefix = format!("kedge-bench:{id}:");
    let mut c = redis_conn().await?;
    let result = async {
        // Baseline: BLMOVE into a processing list, LREM once handled.
        let list = format!("{prefix}list-base");
        let processing = format!("{list}:processing");
        rpush_all(&mut c, &list, n).await?;
        let start = Instant::now();
        let mut done = 0;
        while done < n {
            ensure!(start.elapsed() < PASS_LIMIT, "baseline redis_list stalled");
            let body: Option<Vec<u8>> = redis::cmd("BLMOVE")
                .arg(&list)
                .arg(&processing)
                .arg("LEFT")
                .arg("RIGHT")
                .arg(1)
                .query_async(&mut c)
                .await?;
            let Some(body) = body else { continue };
            redis::cmd("LREM")
                .arg(&processing)
                .arg(1)
                .arg(&body)
                .query_async::<()>(&mut c)
                .await?;
            done += 1;
        }
        let base = rate(n, start.elapsed());

        let list = format!("{prefix}list-kedge");
        rpush_all(&mut c, &list, n).await?;
        let (_dir, job) = load_job(
            "bench-redis-list",
            &format!("redis_list: {{ url: \"{REDIS}\", list: \"{list}\" }}"),
        )?;
        let kedge = kedge_path(&job, n).await?;
        let left: usize = redis::cmd("LLEN").arg(&list).query_async(&mut c).await?;
        ensure!(left == 0, "{left} messages left in {list}");
        Ok((base, kedge))
    }
    .await;
    delete_prefix(&mut c, &prefix).await?;
    result
}

async fn xadd_all(c: &mut MultiplexedConnection, stream: &str, n: usize) -> Result<()> {
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut p = redis::pipe();
        for i in chunk {
            p.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("payload")
                .arg(body(stream, *i))
                .ignore();
        }
        p.query_async::<()>(c).await?;
    }
    Ok(())
}

async fn redis_stream(n: usize, id: &str) -> Result<(f64, f64)> {
    let prefix = format!("kedge-bench:{id}:");
    let mut c = redis_conn().await?;
    let result = async {
        // Baseline: XREADGROUP COUNT 64, one XACK per batch.
        let stream = format!("{prefix}stream-base");
        xadd_all(&mut c, &stream, n).await?;
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg("bench")
            .arg("0")
            .query_async::<()>(&mut c)
            .await?;
        let start = Instant::now();
        let mut done = 0;
        let mut bytes = 0usize;
        while done < n {
            ensure!(
                start.elapsed() < PASS_LIMIT,
                "baseline redis_stream stalled"
            );
            let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg("bench")
                .arg("c1")
                .arg("COUNT")
                .arg(BATCH)
                .arg("BLOCK")
                .arg(1000)
                .arg("STREAMS")
                .arg(&stream)
                .arg(">")
                .query_async(&mut c)
                .await?;
            let Some(reply) = reply else { continue };
            let ids: Vec<_> = reply.keys.into_iter().flat_map(|k| k.ids).collect();
            if ids.is_empty() {
                continue;
            }
            for e in &ids {
                bytes += e.get::<Vec<u8>>("payload").map_or(0, |b| b.len());
            }
            let mut ack = redis::cmd("XACK");
            ack.arg(&stream).arg("bench");
            for e in &ids {
                ack.arg(&e.id);
            }
            ack.query_async::<()>(&mut c).await?;
            done += ids.len();
        }
        let base = rate(n, start.elapsed());
        ensure!(bytes > 0, "baseline redis_stream read no payloads");

        let stream = format!("{prefix}stream-kedge");
        xadd_all(&mut c, &stream, n).await?;
        let (_dir, job) = load_job(
            "bench-redis-stream",
            &format!("redis_stream: {{ url: \"{REDIS}\", stream: \"{stream}\", group: kedge }}"),
        )?;
        let kedge = kedge_path(&job, n).await?;
        Ok((base, kedge))
    }
    .await;
    delete_prefix(&mut c, &prefix).await?;
    result
}

// ----- RabbitMQ --------------------------------------------------------------

/// Declares `queue` and publishes `n` messages into it, confirmed.
async fn rabbit_fill(ch: &Channel, queue: &str, n: usize) -> Result<()> {
    let opts = QueueDeclareOptions {
        durable: false,
        auto_delete: false,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(queue, opts, FieldTable::default()).await?;
    let mut confirms = Vec::with_capacity(n);
    for i in 0..n {
        confirms.push(
            ch.basic_publish(
                "",
                queue,
                BasicPublishOptions::default(),
                body(queue, i).as_bytes(),
                BasicProperties::default(),
            )
            .await?,
        );
    }
    for c in confirms {
        ensure!(c.await? == Confirmation::Ack(None), "publish not confirmed");
    }
    Ok(())
}

async fn rabbitmq(n: usize, id: &str) -> Result<(f64, f64)> {
    let conn = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .with_context(|| format!("RabbitMQ at {AMQP}"))?;
    let admin = conn.create_channel().await?;
    admin
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let base_q = format!("kedge-bench-{id}-base");
    let kedge_q = format!("kedge-bench-{id}-kedge");
    let result = async {
        // Baseline: a manual-ack consumer, prefetch 64, basic.ack each.
        rabbit_fill(&admin, &base_q, n).await?;
        let consumer_conn = Connection::connect(AMQP, ConnectionProperties::default()).await?;
        let ch = consumer_conn.create_channel().await?;
        ch.basic_qos(BATCH as u16, BasicQosOptions::default())
            .await?;
        let consumer = ch
            .basic_consume(
                &base_q,
                "bench-baseline",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        consumer.set_delegate(move |d: DeliveryResult| {
            let _ = tx.send(d);
            std::future::ready(())
        });
        let start = Instant::now();
        let mut done = 0;
        while done < n {
            let left = PASS_LIMIT.saturating_sub(start.elapsed());
            let d = tokio::time::timeout(left, rx.recv())
                .await
                .map_err(|_| anyhow!("baseline rabbitmq stalled at {done}"))?;
            let d = match d {
                Some(Ok(Some(d))) => d,
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(None)) | None => bail!("baseline rabbitmq consumer cancelled"),
            };
            ch.basic_ack(d.delivery_tag, BasicAckOptions::default())
                .await?;
            done += 1;
        }
        let base = rate(n, start.elapsed());
        consumer_conn.close(200, "done").await?;

        rabbit_fill(&admin, &kedge_q, n).await?;
        let (_dir, job) = load_job(
            "bench-rabbitmq",
            &format!("rabbitmq: {{ url: \"{AMQP}\", queue: \"{kedge_q}\", prefetch: {BATCH} }}"),
        )?;
        let kedge = kedge_path(&job, n).await?;
        Ok((base, kedge))
    }
    .await;
    for q in [&base_q, &kedge_q] {
        admin.queue_delete(q, QueueDeleteOptions::default()).await?;
    }
    let _ = conn.close(200, "done").await;
    result
}

// ----- PostgreSQL ------------------------------------------------------------

async fn pg_fill(c: &mut PgConnection, table: &str, n: usize) -> Result<()> {
    sqlx::raw_sql(&format!(
        "CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, payload JSONB NOT NULL)"
    ))
    .execute(&mut *c)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO {table} (payload) \
         SELECT json_build_object('order', g, 'bench', $1::text, 'note', 'source bench')::jsonb \
         FROM generate_series(1, $2) g"
    ))
    .bind(table)
    .bind(n as i64)
    .execute(&mut *c)
    .await?;
    sqlx::raw_sql(&format!("ANALYZE {table}"))
        .execute(&mut *c)
        .await?;
    Ok(())
}

async fn postgres(n: usize, id: &str) -> Result<(f64, f64)> {
    let mut admin = PgConnection::connect(PG)
        .await
        .with_context(|| format!("PostgreSQL at {PG}"))?;
    let base_t = format!("kedge_bench_{id}_base");
    let kedge_t = format!("kedge_bench_{id}_kedge");
    let result = async {
        // Baseline: lock a batch, delete it, commit.
        pg_fill(&mut admin, &base_t, n).await?;
        let mut c = PgConnection::connect(PG).await?;
        let claim = format!(
            "SELECT id, payload::text FROM {base_t} ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
        );
        let delete = format!("DELETE FROM {base_t} WHERE id = ANY($1)");
        let start = Instant::now();
        let mut done = 0;
        while done < n {
            ensure!(start.elapsed() < PASS_LIMIT, "baseline postgres stalled");
            let mut tx = c.begin().await?;
            let rows: Vec<(i64, String)> = sqlx::query_as(&claim)
                .bind(BATCH as i64)
                .fetch_all(&mut *tx)
                .await?;
            ensure!(!rows.is_empty(), "baseline postgres: table empty at {done}");
            let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
            sqlx::query(&delete).bind(&ids).execute(&mut *tx).await?;
            tx.commit().await?;
            done += rows.len();
        }
        let base = rate(n, start.elapsed());
        c.close().await?;

        pg_fill(&mut admin, &kedge_t, n).await?;
        let (_dir, job) = load_job(
            "bench-postgres",
            &format!("postgres: {{ url: \"{PG}\", table: {kedge_t} }}"),
        )?;
        let kedge = kedge_path(&job, n).await?;
        let (left,): (i64,) = sqlx::query_as(&format!("SELECT count(*) FROM {kedge_t}"))
            .fetch_one(&mut admin)
            .await?;
        ensure!(left == 0, "{left} rows left in {kedge_t}");
        Ok((base, kedge))
    }
    .await;
    for t in [&base_t, &kedge_t] {
        sqlx::raw_sql(&format!("DROP TABLE IF EXISTS {t}"))
            .execute(&mut admin)
            .await?;
    }
    admin.close().await?;
    result
}

// ----- message → launch latency ---------------------------------------------

struct Latency {
    count: usize,
    p50: f64,
    p99: f64,
    mean: f64,
    max: f64,
}

/// A background `kedge run`, stopped (SIGTERM, then SIGKILL) on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kedge_cmd(bin: &Path, ws: &Path) -> Command {
    let mut c = Command::new(bin);
    c.current_dir(ws)
        .env_remove("KEDGE_CONFIG")
        .env_remove("KEDGE_JOBS")
        .env_remove("KEDGE_STORE")
        .env("KEDGE_LOG", "info");
    c
}

/// `kedge runs --json`: message id → (state, started_at in ms).
fn runs(bin: &Path, ws: &Path) -> Result<HashMap<String, (String, Option<i64>)>> {
    let out = kedge_cmd(bin, ws)
        .args(["runs", "--json", "--limit", "100000"])
        .output()?;
    ensure!(
        out.status.success(),
        "kedge runs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    let mut map = HashMap::new();
    for r in rows {
        let started = r["started_at"]
            .as_str()
            .map(DateTime::parse_from_rfc3339)
            .transpose()?
            .map(|t| t.timestamp_millis());
        map.insert(
            r["message_id"].as_str().unwrap_or_default().to_string(),
            (r["state"].as_str().unwrap_or_default().to_string(), started),
        );
    }
    Ok(map)
}

/// Waits until every message in `ids` has a succeeded run.
fn wait_succeeded(
    bin: &Path,
    ws: &Path,
    ids: &[&String],
    limit: Duration,
) -> Result<HashMap<String, (String, Option<i64>)>> {
    let start = Instant::now();
    loop {
        let map = runs(bin, ws)?;
        let ok = ids
            .iter()
            .filter(|id| map.get(**id).is_some_and(|(s, _)| s == "succeeded"))
            .count();
        if ok == ids.len() {
            return Ok(map);
        }
        ensure!(
            start.elapsed() < limit,
            "only {ok} of {} runs succeeded after {limit:?}",
            ids.len()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

async fn latency(bin: &Path, m: usize, id: &str) -> Result<Latency> {
    let ws = tempfile::tempdir()?;
    let w = ws.path();
    std::fs::create_dir_all(w.join("config"))?;
    std::fs::create_dir_all(w.join("jobs"))?;
    std::fs::write(
        w.join("config/kedge.yaml"),
        "jobs_dir: jobs\n\
         store:\n  url: sqlite://state/kedge.db\n  poll_interval: 50ms\n\
         executor:\n  kind: local\n  local:\n    work_dir: runs\n    pod_backoff: 100ms\n    pod_backoff_max: 1s\n\
         limits:\n  max_active_runs: 64\n\
         shutdown_timeout: 10s\n",
    )?;
    let prefix = format!("kedge-bench:{id}:");
    let list = format!("{prefix}latency");
    std::fs::write(
        w.join("jobs/latency.yaml"),
        format!(
            "name: latency\n\
             trigger:\n  queue:\n    redis_list: {{ url: \"{REDIS}\", list: \"{list}\" }}\n\
             template:\n  backoffLimit: 0\n  template:\n    spec:\n      restartPolicy: Never\n      \
             containers:\n        - name: main\n          command: [\"true\"]\n"
        ),
    )?;
    let mut c = redis_conn().await?;
    let result = async {
        let log_path = w.join("daemon.log");
        let child = kedge_cmd(bin, w)
            .args(["run", "--log-format", "json"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path)?)
            .spawn()
            .context("starting kedge run")?;
        let _daemon = Daemon(child);
        let start = Instant::now();
        while !std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("kedge ready")
        {
            ensure!(
                start.elapsed() < Duration::from_secs(30),
                "the daemon did not get ready:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }

        // Warm-up: one message through, so the source is connected.
        let warm = body(&format!("{list}-warmup"), 0);
        redis::cmd("RPUSH")
            .arg(&list)
            .arg(&warm)
            .query_async::<()>(&mut c)
            .await?;
        let warm_id = kedge::sources::body_id(warm.as_bytes());
        wait_succeeded(bin, w, &[&warm_id], Duration::from_secs(60))?;

        // M messages, one every 5 ms; the push time is taken just before
        // RPUSH, so the latency includes the push itself.
        let mut pushed: HashMap<String, i64> = HashMap::with_capacity(m);
        let t0 = tokio::time::Instant::now();
        for i in 0..m {
            tokio::time::sleep_until(t0 + Duration::from_millis(5 * i as u64)).await;
            let b = body(&list, i);
            let at = Utc::now().timestamp_millis();
            redis::cmd("RPUSH")
                .arg(&list)
                .arg(&b)
                .query_async::<()>(&mut c)
                .await?;
            pushed.insert(kedge::sources::body_id(b.as_bytes()), at);
        }
        let ids: Vec<&String> = pushed.keys().collect();
        let map = wait_succeeded(bin, w, &ids, Duration::from_secs(180))?;
        let mut lat: Vec<f64> = pushed
            .iter()
            .map(|(id, at)| {
                let started = map[id]
                    .1
                    .ok_or_else(|| anyhow!("run of {id} has no started_at"))?;
                Ok((started - at) as f64)
            })
            .collect::<Result<_>>()?;
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| lat[((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1];
        Ok(Latency {
            count: lat.len(),
            p50: pct(0.50),
            p99: pct(0.99),
            mean: lat.iter().sum::<f64>() / lat.len() as f64,
            max: lat[lat.len() - 1],
        })
    }
    .await;
    delete_prefix(&mut c, &prefix).await?;
    result
}
