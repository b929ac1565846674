//! `kedge dlq list | replay`: dead letters. Replaying them is
//! [`crate::finalizer::replay`]'s work; this file parses and prints.

use anyhow::Context;
use clap::Subcommand;

use super::{ms_to_rfc3339, open_store, Failure};
use crate::config::{self, Sources};
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
    let letters = store
        .dead_letters(job, false, i64::MAX)
        .await
        .context("listing dead letters")?;
    let chosen: Vec<_> = if all {
        letters
    } else {
        let mut chosen = Vec::new();
        for id in ids {
            match letters.iter().find(|d| &d.id == id) {
                Some(d) => chosen.push(d.clone()),
                None => {
                    return Err(Failure::Input(format!(
                        "dlq replay: no open dead letter with id {id}"
                    )))
                }
            }
        }
        chosen
    };
    let (jobs, _) = config::load_jobs(cfg);
    let mut replayed = 0;
    for d in chosen {
        // A broker message goes back into its broker (when the job
        // still reads from that source); everything else is queued
        // again in the store.
        let broker = jobs
            .iter()
            .find(|j| j.name == d.job)
            .and_then(|j| match &j.trigger {
                crate::config::job::Trigger::Queue(q) if q.source.name() == d.source => {
                    crate::sources::AnySource::new(&q.source, "kedge-dlq-replay")
                }
                _ => None,
            });
        if let Some(mut outbox) = broker {
            replay_to_source(store, &mut outbox, &d).await?;
            println!("replayed {} into {}", d.id, d.source);
            replayed += 1;
            continue;
        }
        let last = store
            .last_attempt(&d.work_item_id)
            .await
            .context("reading attempts")?;
        let next = last + 1;
        let trigger = if d.source == "cron" {
            crate::lifecycle::TriggerKind::Cron
        } else {
            crate::lifecycle::TriggerKind::Queue
        };
        let run_id = crate::lifecycle::attempt_run_name(&d.job, trigger, &d.message_id, next);
        if store
            .replay_dead_letter(&d.id, &run_id, next, store.clock().now_ms())
            .await
            .context("replaying")?
        {
            println!("replayed {} as run {run_id}", d.id);
            replayed += 1;
        }
    }
    println!("{replayed} dead letter(s) replayed");
    Ok(())
}

/// Publishes a dead letter's message back into its broker source. The
/// work item is marked `replayed` first, so the source's delivery of it
/// revives the item rather than being dropped as a duplicate; if the
/// publish fails the item is dead again and the letter stays open.
async fn replay_to_source(
    store: &Store,
    outbox: &mut crate::sources::AnySource,
    d: &DeadLetter,
) -> Result<(), Failure> {
    use crate::sources::Outbox;
    let Some(letter) = store
        .begin_source_replay(&d.id, store.clock().now_ms())
        .await
        .context("replaying")?
    else {
        return Err(Failure::Input(format!(
            "dlq replay: dead letter {} was replayed meanwhile",
            d.id
        )));
    };
    let payload: Vec<u8> = match letter.payload.as_deref() {
        Some(p) => match p.strip_prefix("base64:") {
            Some(b) => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .unwrap_or_else(|_| p.as_bytes().to_vec())
            }
            None => p.as_bytes().to_vec(),
        },
        None => Vec::new(),
    };
    if let Err(e) = outbox.replay(&letter.message_id, &payload).await {
        let _ = store
            .abort_source_replay(&letter.work_item_id, store.clock().now_ms())
            .await;
        return Err(Failure::Runtime(anyhow::anyhow!(
            "dlq replay: cannot return {} to {}: {}",
            d.id,
            d.source,
            crate::error_chain(&e)
        )));
    }
    store
        .finish_source_replay(&d.id, store.clock().now_ms())
        .await
        .context("replaying")?;
    Ok(())
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
}
