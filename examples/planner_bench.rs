//! Planner decision time with 1,000 jobs and 10,000 history rows.
//!
//! `cargo run --release --example planner_bench`
//!
//! Baseline (same run): reading each job's history from the store, the I/O a
//! decision cannot avoid. Then the whole decision (history + fit + size), the
//! pure part alone (fit + size from samples in memory), and one admission
//! pass over 1,000 due runs.

use std::collections::HashMap;
use std::time::Instant;

use chrono::{Duration as ChronoDuration, Utc};
use kedge::planner::sizing::{self, Sample};
use kedge::planner::{self, Candidate, JobCaps, Limits, Usage};
use kedge::store::Store;
use sqlx::Connection;

const JOBS: usize = 1_000;
const ROWS_PER_JOB: usize = 10;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bench.db");
    let url = format!("sqlite://{}", path.display());
    let store = Store::connect(&url).await?;
    store.migrate().await?;

    // Bulk-load the history in one transaction.
    let mut conn = sqlx::SqliteConnection::connect(&format!("{url}?mode=rwc")).await?;
    let mut tx = conn.begin().await?;
    for j in 0..JOBS {
        for r in 0..ROWS_PER_JOB {
            let id = format!("w-{j}-{r}");
            let work = 10.0 + ((j * 7 + r * 13) % 90) as f64;
            let p = 1 + (r % 4) as i64;
            let dur = 60_000 + (work / p as f64 * 36_000.0) as i64;
            sqlx::query("INSERT INTO work_items (id, job, source, message_id, state, created_ms, updated_ms) VALUES (?, ?, 'bench', ?, 'succeeded', 0, 0)")
                .bind(&id).bind(format!("job-{j}")).bind(&id).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO runs (run_id, work_item_id, job, attempt, state, trigger_kind, scheduled_ms, started_ms, finished_ms, work, parallelism) VALUES (?, ?, ?, 1, 'succeeded', 'cron', 0, ?, ?, ?, ?)")
                .bind(format!("r-{j}-{r}")).bind(&id).bind(format!("job-{j}"))
                .bind(1_000_000i64 * r as i64).bind(1_000_000i64 * r as i64 + dur).bind(work).bind(p)
                .execute(&mut *tx).await?;
        }
    }
    tx.commit().await?;
    let names: Vec<String> = (0..JOBS).map(|j| format!("job-{j}")).collect();
    let now = Utc::now();
    let deadline = now + ChronoDuration::hours(3);

    // Baseline: the history reads alone.
    let t = Instant::now();
    let mut histories = Vec::with_capacity(JOBS);
    for n in &names {
        histories.push(store.sizing_history(n, 50).await?);
    }
    let read = t.elapsed();

    // The whole decision per job: read + fit + size.
    let t = Instant::now();
    let mut total_p = 0u64;
    for n in &names {
        let h = store.sizing_history(n, 50).await?;
        total_p += decide(&h, now, deadline) as u64;
    }
    let full = t.elapsed();

    // Pure: fit + size from memory.
    let t = Instant::now();
    for h in &histories {
        total_p += decide(h, now, deadline) as u64;
    }
    let pure = t.elapsed();

    // One admission pass: 1,000 due runs, 1,000 jobs, pools and pod caps.
    let limits = Limits {
        jobs: names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    n.clone(),
                    JobCaps {
                        max_active: Some(2),
                        max_pods: Some(16),
                        pool: Some(format!("pool-{}", i % 10)),
                        min_pods: 1,
                        want_pods: 8,
                        priority: 0,
                    },
                )
            })
            .collect(),
        pools: (0..10).map(|i| (format!("pool-{i}"), 50)).collect(),
        global: Some(400),
        ..Default::default()
    };
    let run_ids: Vec<String> = (0..JOBS).map(|i| format!("run-{i}")).collect();
    let cands: Vec<Candidate> = (0..JOBS)
        .map(|i| Candidate {
            run_id: &run_ids[i],
            job: &names[i],
        })
        .collect();
    let usage = Usage {
        running: HashMap::new(),
        pods: HashMap::new(),
        served: HashMap::new(),
    };
    let t = Instant::now();
    let reps = 100;
    let mut admitted = 0;
    for _ in 0..reps {
        admitted += planner::admit(&cands, &usage, &limits).launch.len();
    }
    let admit = t.elapsed() / reps;

    let per = |d: std::time::Duration| d.as_secs_f64() * 1e6 / JOBS as f64;
    println!(
        "jobs={JOBS} history rows={} (checksum {total_p}, admitted {})",
        JOBS * ROWS_PER_JOB,
        admitted / reps as usize
    );
    println!(
        "  history read (baseline)     {:8.1} µs/job   1.00x",
        per(read)
    );
    println!(
        "  full decision (read+fit+size){:7.1} µs/job   {:.2}x",
        per(full),
        full.as_secs_f64() / read.as_secs_f64()
    );
    println!(
        "  pure fit+size               {:8.1} µs/job   {:.2}x",
        per(pure),
        pure.as_secs_f64() / read.as_secs_f64()
    );
    println!(
        "  admission of 1,000 due runs {:8.1} µs/pass  ({:.2} µs/run)",
        admit.as_secs_f64() * 1e6,
        admit.as_secs_f64() * 1e6 / JOBS as f64
    );
    Ok(())
}

fn decide(
    h: &[kedge::store::HistoryRow],
    now: chrono::DateTime<Utc>,
    deadline: chrono::DateTime<Utc>,
) -> u32 {
    let samples: Vec<Sample> = h
        .iter()
        .map(|r| Sample {
            work: r.work,
            parallelism: r.parallelism as u32,
            duration_s: r.duration_ms as f64 / 1000.0,
        })
        .collect();
    let model = sizing::fit(&samples, 40.0, 0.0);
    sizing::size(&sizing::SizingInput {
        work: 400.0,
        now,
        deadline,
        margin: 0.2,
        min: 1,
        max: 16,
        model,
    })
    .parallelism
}
