//! `kedge enqueue` and `kedge trigger`: work given by hand. Where it goes
//! (the job's broker, or the store) is [`crate::intake`]'s decision.

use clap::Args;

use super::{one_job, open_store, read_data, Failure};
use crate::config::{self, Sources};
use crate::intake::{self, Accepted, Destination, IntakeError};

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
    let destination = intake::destination(&job, "kedge-enqueue").map_err(|e| {
        Failure::Input(format!(
            "{e}; use `kedge trigger {}` to run it now",
            job.name
        ))
    })?;
    let bytes = read_data(args.data)?;
    match destination {
        Destination::Broker(mut broker) => {
            broker
                .publish(&job, &bytes, args.id)
                .await
                .map_err(refused)?;
            println!("published to {}", broker.name);
        }
        Destination::Store => {
            let store = open_store(&loaded.store_url).await?;
            let accepted = intake::enqueue(&store, &job, &bytes, args.id, None).await;
            store.close().await;
            match accepted.map_err(refused)? {
                Accepted::New { run_id } => println!("enqueued: run {run_id}"),
                Accepted::Duplicate => {
                    println!("already enqueued (same message id): nothing added")
                }
            }
        }
    }
    Ok(())
}

/// An intake error as the command reports it: the message's own problems
/// are bad input (`--data`), the store's or broker's are runtime failures.
fn refused(e: IntakeError) -> Failure {
    match e {
        IntakeError::Store(e) => Failure::Runtime(e.into()),
        e @ IntakeError::Publish { .. } => {
            Failure::Runtime(anyhow::anyhow!("{}", crate::error_chain(&e)))
        }
        e => Failure::Input(format!("--data: {e}")),
    }
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
    use super::*;

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

    #[test]
    fn a_bad_message_is_bad_input_and_a_store_error_is_not() {
        let bad = IntakeError::BadDeadline("deadline at /d: soon".into());
        assert!(matches!(refused(bad), Failure::Input(m) if m == "--data: deadline at /d: soon"));
        let store = IntakeError::Store(crate::store::StoreError::UnsupportedUrl("x".into()));
        assert!(matches!(refused(store), Failure::Runtime(_)));
    }
}
