//! `kedge pause | resume | hold | release | ice | unice | backfill | rerun |
//! audit`: operator controls. Parsing and printing only; the work is
//! [`crate::operator`]'s, the actor the OS user ([`crate::operator::os_user`]).

use anyhow::Context;
use clap::Args;

use super::{ms_to_rfc3339, one_job, open_store, parse_time, pretty_json, rfc3339, Failure};
use crate::config::{self, Sources};
use crate::operator::{self, Action, BackfillRequest, OperatorError};
use crate::store::{AuditRecord, BackfillOverlap, FireAction, Rerun};

#[derive(Debug, Args)]
pub struct ControlArgs {
    /// The job
    pub job: String,
    /// Why (recorded in the audit log, shown by kedge runs and /healthz)
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// The cron job
    pub job: String,
    /// Start of the range, included (RFC 3339, e.g. 2026-11-01T00:00:00Z)
    #[arg(long, value_name = "TIME")]
    pub from: String,
    /// End of the range, excluded (RFC 3339); not after now
    #[arg(long, value_name = "TIME")]
    pub to: String,
    /// allow: the backfill's runs may run beside the job's other runs;
    /// forbid: one at a time, only while no other run of the job runs
    /// [default: forbid, or allow when the job's overlap is allow]
    #[arg(long, value_enum)]
    pub overlap: Option<BackfillOverlap>,
    /// At most this many of the backfill's runs run at once (the job's own
    /// limits apply too)
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_active: u32,
    /// Fires that already ran: none leaves them; failed runs those whose
    /// work ended dead or cancelled again; all runs every finished one again
    #[arg(long, value_enum, default_value_t = Rerun::None)]
    pub rerun: Rerun,
    /// Print what would be created, change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Why (recorded in the audit log)
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Print the fires as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RerunArgs {
    /// The finished run (a run id from kedge runs)
    pub run: String,
    /// Why (recorded in the audit log)
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only this job's actions
    #[arg(long)]
    pub job: Option<String>,
    /// The newest this many
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    /// Print a JSON array
    #[arg(long)]
    pub json: bool,
}

/// An operator error as the command reports it: a refusal or a bad
/// request is bad input (exit 2), the store's failure a runtime one.
fn failure(e: OperatorError) -> Failure {
    match e {
        OperatorError::Store(e) => Failure::Runtime(anyhow::Error::new(e)),
        e => Failure::Input(e.to_string()),
    }
}

/// `kedge pause | resume | hold | release | ice | unice`.
pub(super) async fn change(
    src: &Sources,
    action: Action,
    args: ControlArgs,
) -> Result<(), Failure> {
    let loaded = config::load_daemon(src)?;
    let job = one_job(&loaded, &args.job)?;
    let store = open_store(&loaded.store_url).await?;
    let actor = operator::os_user();
    let done = operator::change(&store, &job, action, &actor, args.reason.as_deref()).await;
    store.close().await;
    let t = done.map_err(failure)?;
    let what = match action {
        Action::Pause => "paused: nothing new of it launches until kedge resume",
        Action::Hold => "on hold: it does not run, its dependents wait, until kedge release",
        Action::Ice => {
            "on ice: it does not run, its dependents count it as succeeded, until kedge unice"
        }
        Action::Resume | Action::Release => "active again",
        Action::Unice => "active again; it runs at its next occurrence",
    };
    println!("job {} {what}", t.job);
    for f in &t.caught_up {
        println!("  caught up: the fire of {} runs now", rfc3339(*f));
    }
    Ok(())
}

/// `kedge backfill`.
pub(super) async fn backfill(src: &Sources, args: BackfillArgs) -> Result<(), Failure> {
    let loaded = config::load_daemon(src)?;
    let job = one_job(&loaded, &args.job)?;
    let req = BackfillRequest {
        from: parse_time("--from", &args.from)?,
        to: parse_time("--to", &args.to)?,
        overlap: args.overlap,
        max_active: args.max_active,
        rerun: args.rerun,
        dry_run: args.dry_run,
        reason: args.reason,
    };
    let store = open_store(&loaded.store_url).await?;
    let done = operator::backfill(&store, &job, &req, &operator::os_user()).await;
    store.close().await;
    let report = done.map_err(failure)?;
    if args.json {
        println!("{}", pretty_json(&report)?);
        return Ok(());
    }
    for f in &report.fires {
        let fire = ms_to_rfc3339(Some(f.fire_ms)).unwrap_or_default();
        match &f.action {
            FireAction::Create { run_id } => println!("{fire}  create  run {run_id}"),
            FireAction::Rerun { run_id, was } => {
                println!("{fire}  rerun   run {run_id} (was {was})")
            }
            FireAction::Keep { why } => println!("{fire}  keep    {why}"),
        }
    }
    let verb = if args.dry_run {
        "would start"
    } else {
        "started"
    };
    let id = report
        .id
        .as_deref()
        .map(|id| format!(" as backfill {id}"))
        .unwrap_or_default();
    println!(
        "{} fires in range, {verb} {}{id}",
        report.fires.len(),
        report.started()
    );
    Ok(())
}

/// `kedge rerun`.
pub(super) async fn rerun(src: &Sources, args: RerunArgs) -> Result<(), Failure> {
    let loaded = config::load_daemon(src)?;
    let store = open_store(&loaded.store_url).await?;
    let done = operator::rerun(
        &store,
        &args.run,
        &operator::os_user(),
        args.reason.as_deref(),
    )
    .await;
    store.close().await;
    let new_run = done.map_err(failure)?;
    println!("rerun of {}: run {new_run}", args.run);
    Ok(())
}

/// `kedge audit`.
pub(super) async fn audit(src: &Sources, args: AuditArgs) -> Result<(), Failure> {
    let loaded = config::load_daemon(src)?;
    let store = open_store(&loaded.store_url).await?;
    let records = store
        .audit_log(args.job.as_deref(), args.limit.max(0))
        .await
        .context("reading the audit log");
    store.close().await;
    let records = records?;
    if args.json {
        let rows: Vec<serde_json::Value> = records.iter().map(audit_json).collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    println!(
        "{:<25} {:<16} {:<9} {:<24} {:<32} REASON",
        "AT", "ACTOR", "ACTION", "JOB", "RUN"
    );
    for r in &records {
        println!(
            "{:<25} {:<16} {:<9} {:<24} {:<32} {}",
            ms_to_rfc3339(Some(r.at_ms)).unwrap_or_default(),
            r.actor,
            r.action,
            r.job.as_deref().unwrap_or("-"),
            r.run_id.as_deref().unwrap_or("-"),
            r.reason.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

/// One audit record as `kedge audit --json` prints it.
fn audit_json(r: &AuditRecord) -> serde_json::Value {
    serde_json::json!({
        "at": ms_to_rfc3339(Some(r.at_ms)),
        "actor": r.actor,
        "action": r.action,
        "job": r.job,
        "run": r.run_id,
        "reason": r.reason,
        "details": r.details.as_deref().and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::super::{tests::parse, Command};
    use super::*;
    use clap::error::ErrorKind;

    #[test]
    fn backfill_takes_a_range_and_defaults_to_one_at_a_time_without_reruns() {
        let Command::Backfill(a) = parse(&[
            "backfill",
            "nightly",
            "--from",
            "2026-11-01T00:00:00Z",
            "--to",
            "2026-11-08T00:00:00Z",
        ])
        .unwrap()
        .command
        else {
            panic!("not backfill")
        };
        assert_eq!(
            (a.job.as_str(), a.max_active, a.rerun, a.overlap, a.dry_run),
            ("nightly", 1, Rerun::None, None, false)
        );
        let kind = |args: &[&str]| parse(args).unwrap_err().kind();
        assert_eq!(
            kind(&["backfill", "j", "--from", "x"]),
            ErrorKind::MissingRequiredArgument
        );
        let range = ["backfill", "j", "--from", "a", "--to", "b"];
        fn with<'a>(range: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
            [range, extra].concat()
        }
        assert_eq!(
            kind(&with(&range, &["--max-active", "0"])),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            kind(&with(&range, &["--rerun", "some"])),
            ErrorKind::InvalidValue
        );
        assert_eq!(
            kind(&with(&range, &["--overlap", "replace"])),
            ErrorKind::InvalidValue
        );
        assert!(parse(&with(
            &range,
            &["--rerun", "failed", "--overlap", "allow", "--dry-run"]
        ))
        .is_ok());
    }

    #[test]
    fn state_commands_take_a_job_and_a_reason() {
        let Command::Pause(a) = parse(&["pause", "nightly", "--reason", "db migration"])
            .unwrap()
            .command
        else {
            panic!("not pause")
        };
        assert_eq!(
            (a.job.as_str(), a.reason.as_deref()),
            ("nightly", Some("db migration"))
        );
        for cmd in ["resume", "hold", "release", "ice", "unice"] {
            assert!(parse(&[cmd, "j"]).is_ok(), "{cmd}");
            assert_eq!(
                parse(&[cmd]).unwrap_err().kind(),
                ErrorKind::MissingRequiredArgument
            );
        }
        assert!(parse(&["rerun", "nightly-29999999"]).is_ok());
        assert!(parse(&["audit", "--job", "j", "--json"]).is_ok());
    }
}
