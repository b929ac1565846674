//! `kedge dlq list | replay`: dead letters. Replaying them is
//! [`crate::finalizer::replay`]'s work; this file parses and prints.

use anyhow::Context;
use clap::Subcommand;

use super::{ms_to_rfc3339, open_store, Failure};
use crate::config::{self, Sources};
use crate::finalizer::replay::{self, ReplayError, Replayed};
use crate::store::{DeadLetter, Store};

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, newest first.
    List {
        /// Only this job
        #[arg(long)]
        job: Option<String>,
        /// Include letters already replayed
        #[arg(long)]
        all: bool,
        /// At most this many
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Print a JSON array
        #[arg(long)]
        json: bool,
    },
    /// Return dead letters to their queue with a fresh retry budget.
    Replay {
        /// Dead letter ids (from `kedge dlq list`)
        ids: Vec<String>,
        /// Replay every open dead letter (of --job, if given)
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// With --all: only this job
        #[arg(long)]
        job: Option<String>,
    },
}

/// `kedge dlq …`.
pub(super) async fn dlq(src: &Sources, command: DlqCommand) -> Result<(), Failure> {
    let loaded = config::load_daemon(src)?;
    let store = open_store(&loaded.store_url).await?;
    let result = match command {
        DlqCommand::List {
            job,
            all,
            limit,
            json,
        } => list(&store, job.as_deref(), all, limit, json).await,
        DlqCommand::Replay { ids, all, job } => {
            replay(&store, &loaded, &ids, all, job.as_deref()).await
        }
    };
    store.close().await;
    result
}

/// `kedge dlq list`.
async fn list(
    store: &Store,
    job: Option<&str>,
    all: bool,
    limit: i64,
    json: bool,
) -> Result<(), Failure> {
    let letters = store
        .dead_letters(job, all, limit.max(0))
        .await
        .context("listing dead letters")?;
    if json {
        let rows: Vec<serde_json::Value> = letters.iter().map(letter_json).collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    println!(
        "{:<36} {:<24} {:<25} REASON / LAST ERROR",
        "ID", "JOB", "DEAD SINCE"
    );
    for d in &letters {
        println!(
            "{:<36} {:<24} {:<25} {} / {}",
            d.id,
            d.job,
            ms_to_rfc3339(Some(d.created_ms)).unwrap_or_default(),
            d.reason,
            d.last_error.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

/// One dead letter as `kedge dlq list --json` prints it.
fn letter_json(d: &DeadLetter) -> serde_json::Value {
    serde_json::json!({
        "id": d.id,
        "job": d.job,
        "source": d.source,
        "message_id": d.message_id,
        "payload": d.payload,
        "reason": d.reason,
        "attempts": d.attempts,
        "last_error": d.last_error,
        "created_at": ms_to_rfc3339(Some(d.created_ms)),
        "replayed_at": ms_to_rfc3339(d.replayed_ms),
    })
}

/// `kedge dlq replay`.
async fn replay(
    store: &Store,
    cfg: &config::DaemonConfig,
    ids: &[String],
    all: bool,
    job: Option<&str>,
) -> Result<(), Failure> {
    if ids.is_empty() && !all {
        return Err(Failure::Input(
            "dlq replay: name dead letter ids, or --all".into(),
        ));
    }
    let chosen = replay::choose(store, job, ids, all).await.map_err(failed)?;
    let (jobs, _) = config::load_jobs(cfg);
    let mut replayed = 0;
    for d in chosen {
        match replay::replay(store, &jobs, &d).await.map_err(failed)? {
            Replayed::IntoSource => println!("replayed {} into {}", d.id, d.source),
            Replayed::AsRun(run_id) => println!("replayed {} as run {run_id}", d.id),
            Replayed::Closed => continue,
        }
        replayed += 1;
    }
    println!("{replayed} dead letter(s) replayed");
    Ok(())
}

/// A replay error as the command reports it.
fn failed(e: ReplayError) -> Failure {
    match e {
        ReplayError::Store(e) => Failure::Runtime(anyhow::Error::new(e).context("replaying")),
        e @ (ReplayError::Publish { .. }
        | ReplayError::PublishNotUndone { .. }
        | ReplayError::BadPayload { .. }) => {
            Failure::Runtime(anyhow::anyhow!("dlq replay: {}", crate::error_chain(&e)))
        }
        e => Failure::Input(format!("dlq replay: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{tests::parse, Command};
    use super::*;
    use clap::error::ErrorKind;

    fn dlq_command(args: &[&str]) -> DlqCommand {
        match parse(args).unwrap().command {
            Command::Dlq { command } => command,
            other => panic!("not dlq: {other:?}"),
        }
    }

    #[test]
    fn dlq_list_shows_a_hundred_open_letters_by_default() {
        let DlqCommand::List {
            job,
            all,
            limit,
            json,
        } = dlq_command(&["dlq", "list"])
        else {
            panic!("not list")
        };
        assert_eq!((job, all, limit, json), (None, false, 100, false));
    }

    #[test]
    fn dlq_replay_takes_ids_or_all_not_both() {
        let DlqCommand::Replay { ids, all, job } = dlq_command(&["dlq", "replay", "a", "b"]) else {
            panic!("not replay")
        };
        assert_eq!(
            (ids, all, job),
            (vec!["a".to_string(), "b".to_string()], false, None)
        );
        let DlqCommand::Replay { ids, all, job } =
            dlq_command(&["dlq", "replay", "--all", "--job", "q"])
        else {
            panic!("not replay")
        };
        assert_eq!((ids.len(), all, job.as_deref()), (0, true, Some("q")));
        let kind = parse(&["dlq", "replay", "a", "--all"]).unwrap_err().kind();
        assert_eq!(kind, ErrorKind::ArgumentConflict);
        let kind = parse(&["dlq"]).unwrap_err().kind();
        assert_eq!(kind, ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand);
    }

    #[test]
    fn replay_errors_keep_their_exit_codes() {
        let missing = failed(ReplayError::NoSuchLetter("d-1".into()));
        assert!(
            matches!(&missing, Failure::Input(m) if m == "dlq replay: no open dead letter with id d-1"),
            "{missing:?}"
        );
        let raced = failed(ReplayError::ReplayedMeanwhile("d-1".into()));
        assert!(
            matches!(&raced, Failure::Input(m) if m == "dlq replay: dead letter d-1 was replayed meanwhile"),
            "{raced:?}"
        );
    }
}
