//! `kedge enqueue` and `kedge trigger`: work given by hand. Where it goes
//! (the job's broker, or the store) is [`crate::intake`]'s decision.

use clap::Args;

use super::{one_job, open_store, read_data, Failure};
use crate::config::{self, Sources};
use crate::intake::{self, Accepted, IntakeError};

#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// The job (a queue job)
    pub job: String,
    /// The message: JSON text, or @FILE to read it from a file
    #[arg(long)]
    pub data: Option<String>,
    /// Message id; enqueueing the same id twice stores it once [default: a new id]
    #[arg(long)]
    pub id: Option<String>,
}

/// `kedge enqueue`.
pub(super) async fn enqueue(src: &Sources, args: EnqueueArgs) -> Result<(), Failure> {
    let loaded = config::load_daemon(src)?;
    let job = one_job(&loaded, &args.job)?;
    if job.cron().is_some() {
        return Err(Failure::Input(format!(
            "job {} is triggered by cron and takes no messages; use `kedge trigger {}` to run it now",
            job.name, job.name
        )));
    }
    let bytes = read_data(args.data)?;
    // A broker job's messages go into its broker, where the
    // daemon claims them like any other producer's.
    let broker = match &job.trigger {
        crate::config::job::Trigger::Queue(q) => {
            crate::sources::AnySource::new(&q.source, "kedge-enqueue").map(|s| (s, q.source.name()))
        }
        _ => None,
    };
    if let Some((mut outbox, name)) = broker {
        use crate::sources::Outbox;
        intake::check_payload(&job.name, &job.payload, &bytes)
            .map_err(|e| Failure::Input(format!("--data: {e}")))?;
        let id = args.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        outbox.replay(&id, &bytes).await.map_err(|e| {
            Failure::Runtime(anyhow::anyhow!(
                "cannot publish to {name}: {}",
                crate::error_chain(&e)
            ))
        })?;
        println!("published to {name}");
        return Ok(());
    }
    let store = open_store(&loaded.store_url).await?;
    let accepted = intake::enqueue(&store, &job, &bytes, args.id, None).await;
    store.close().await;
    match accepted {
        Ok(Accepted::New { run_id }) => println!("enqueued: run {run_id}"),
        Ok(Accepted::Duplicate) => {
            println!("already enqueued (same message id): nothing added")
        }
        Err(IntakeError::Store(e)) => return Err(Failure::Runtime(e.into())),
        Err(e) => return Err(Failure::Input(format!("--data: {e}"))),
    }
    Ok(())
}

/// `kedge trigger`.
pub(super) async fn trigger(src: &Sources, name: &str) -> Result<(), Failure> {
    let loaded = config::load_daemon(src)?;
    let job = one_job(&loaded, name)?;
    let store = open_store(&loaded.store_url).await?;
    let accepted = intake::trigger(&store, &job).await;
    store.close().await;
    match accepted.map_err(|e| Failure::Runtime(e.into()))? {
        Accepted::New { run_id } => println!("triggered: run {run_id}"),
        Accepted::Duplicate => println!("already triggered"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{tests::parse, Command};

    #[test]
    fn enqueue_takes_the_job_and_an_optional_message_and_id() {
        let Command::Enqueue(a) = parse(&["enqueue", "q"]).unwrap().command else {
            panic!("not enqueue")
        };
        assert_eq!((a.job.as_str(), a.data, a.id), ("q", None, None));
        let Command::Enqueue(a) = parse(&["enqueue", "q", "--data", "@m.json", "--id", "m-1"])
            .unwrap()
            .command
        else {
            panic!("not enqueue")
        };
        assert_eq!(a.data.as_deref(), Some("@m.json"));
        assert_eq!(a.id.as_deref(), Some("m-1"));
        let e = parse(&["enqueue"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }
}
