//! `kedge runs` and `kedge fires`: what the store recorded, as a table or
//! JSON. `kedge runs` names the jobs an operator paused, held or iced above
//! the table (`job_state` in JSON).

use std::collections::HashMap;

use anyhow::Context;
use clap::Args;

use super::{ms_to_rfc3339, open_store, Failure};
use crate::config::{self, Sources};
use crate::lifecycle::{OperatorState, RunState};
use crate::store::{BatchMember, CronFire, JobControl, Run};

#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Only this job
    #[arg(long)]
    pub job: Option<String>,
    /// Only runs in this state
    #[arg(long, value_enum)]
    pub state: Option<RunState>,
    /// At most this many
    #[arg(long, default_value_t = 20)]
    pub limit: i64,
    /// Print a JSON array
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct FiresArgs {
    /// The cron job
    pub job: String,
    /// The latest this many
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Print a JSON array
    #[arg(long)]
    pub json: bool,
}

/// `kedge runs`.
pub(super) async fn runs(src: &Sources, args: RunsArgs) -> Result<(), Failure> {
    let loaded = config::load_daemon(src)?;
    let store = open_store(&loaded.store_url).await?;
    let runs = store
        .list_runs(args.job.as_deref(), args.state, args.limit.max(0))
        .await
        .context("listing runs")?;
    let controls = store
        .job_controls()
        .await
        .context("reading the jobs' operator states")?;
    let states: HashMap<&str, &JobControl> = (controls.iter())
        .filter(|c| c.state.stops_launches())
        .filter(|c| args.job.as_ref().is_none_or(|j| *j == c.job))
        .map(|c| (c.job.as_str(), c))
        .collect();
    let mut batches = HashMap::new();
    if args.json {
        for r in &runs {
            let members = store
                .batch_members(&r.run_id)
                .await
                .context("listing batch members")?;
            if !members.is_empty() {
                batches.insert(r.run_id.clone(), members);
            }
        }
    }
    store.close().await;
    if args.json {
        let rows: Vec<serde_json::Value> = runs
            .iter()
            .map(|r| {
                let state = states
                    .get(r.job.as_str())
                    .map_or(OperatorState::Active, |c| c.state);
                run_json(r, batches.get(&r.run_id), state)
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
    } else {
        print_job_states(&controls, &states);
        print_runs(&runs);
    }
    Ok(())
}

/// One run as `kedge runs --json` prints it; `batch` holds its members
/// when it is a batch run.
fn run_json(
    r: &Run,
    batch: Option<&Vec<BatchMember>>,
    job_state: OperatorState,
) -> serde_json::Value {
    serde_json::json!({
        "job": r.job,
        "job_state": job_state,
        "run_id": r.run_id,
        "attempt": r.attempt,
        "state": r.state,
        "trigger": r.trigger,
        "source": r.source,
        "message_id": r.message_id,
        "scheduled_at": ms_to_rfc3339(Some(r.scheduled_ms)),
        "started_at": ms_to_rfc3339(r.started_ms),
        "finished_at": ms_to_rfc3339(r.finished_ms),
        "launches": r.launches,
        "error": r.error,
        "deadline": ms_to_rfc3339(r.deadline_ms),
        "batch": batch.map(|members| members.iter().map(|m| serde_json::json!({
            "index": m.index,
            "message_id": m.message_id,
            "state": m.state,
        })).collect::<Vec<_>>()),
        "sizing": r.sizing.as_ref().map(|s| serde_json::json!({
            "work": s.work,
            "parallelism": s.parallelism,
            "completions": s.completions,
            "projected_finish": ms_to_rfc3339(Some(s.projected_finish_ms)),
            "at_risk": s.at_risk,
            "note": s.note,
        })),
    })
}

/// One line per job an operator paused, held or iced, above the runs
/// (`states` holds those shown), in `controls`' order.
fn print_job_states(controls: &[JobControl], states: &HashMap<&str, &JobControl>) {
    for c in controls
        .iter()
        .filter(|c| states.contains_key(c.job.as_str()))
    {
        let why = c
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        println!(
            "job {} is {} (by {} since {}{why})",
            c.job,
            c.state,
            c.actor,
            ms_to_rfc3339(Some(c.since_ms)).unwrap_or_default()
        );
    }
    if !states.is_empty() {
        println!();
    }
}

/// Runs as a table.
fn print_runs(runs: &[Run]) {
    println!(
        "{:<40} {:<24} {:>3} {:<10} {:<25} {:<25} ERROR",
        "RUN", "JOB", "TRY", "STATE", "SCHEDULED", "FINISHED"
    );
    for r in runs {
        println!(
            "{:<40} {:<24} {:>3} {:<10} {:<25} {:<25} {}",
            r.run_id,
            r.job,
            r.attempt,
            r.state,
            ms_to_rfc3339(Some(r.scheduled_ms)).unwrap_or_default(),
            ms_to_rfc3339(r.finished_ms).unwrap_or_else(|| "-".into()),
            r.error.as_deref().unwrap_or("")
        );
    }
}

/// `kedge fires`.
pub(super) async fn fires(src: &Sources, args: FiresArgs) -> Result<(), Failure> {
    let loaded = config::load_daemon(src)?;
    let store = open_store(&loaded.store_url).await?;
    let fires = store
        .latest_cron_fires(&args.job, args.limit.min(i64::MAX as usize) as i64)
        .await
        .context("listing cron fires");
    store.close().await;
    let fires = &fires?;
    if args.json {
        let rows: Vec<serde_json::Value> = fires.iter().map(fire_json).collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    println!("{:<25} {:<9} DETAIL", "FIRE", "OUTCOME");
    for f in fires {
        println!(
            "{:<25} {:<9} {}",
            ms_to_rfc3339(Some(f.fire_ms)).unwrap_or_default(),
            f.outcome,
            f.detail.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

/// One fire as `kedge fires --json` prints it.
fn fire_json(f: &CronFire) -> serde_json::Value {
    serde_json::json!({
        "job": f.job,
        "fire": ms_to_rfc3339(Some(f.fire_ms)),
        "outcome": f.outcome,
        "detail": f.detail,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{tests::parse, Command};
    use super::*;
    use clap::error::ErrorKind;

    #[test]
    fn runs_lists_twenty_of_every_state_by_default() {
        let Command::Runs(a) = parse(&["runs"]).unwrap().command else {
            panic!("not runs")
        };
        assert_eq!((a.job, a.state, a.limit, a.json), (None, None, 20, false));
        let Command::Runs(a) = parse(&["runs", "--state", "dead", "--limit", "3", "--json"])
            .unwrap()
            .command
        else {
            panic!("not runs")
        };
        assert_eq!((a.state, a.limit, a.json), (Some(RunState::Dead), 3, true));
        let kind = parse(&["runs", "--state", "sleeping"]).unwrap_err().kind();
        assert_eq!(kind, ErrorKind::InvalidValue);
    }

    #[test]
    fn fires_takes_a_job_and_shows_the_latest_twenty() {
        let Command::Fires(a) = parse(&["fires", "nightly"]).unwrap().command else {
            panic!("not fires")
        };
        assert_eq!((a.job.as_str(), a.limit, a.json), ("nightly", 20, false));
        let kind = parse(&["fires"]).unwrap_err().kind();
        assert_eq!(kind, ErrorKind::MissingRequiredArgument);
    }
}
