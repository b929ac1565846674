//! `kedge prune [--dry-run]`: one retention pass by hand
//! ([`crate::retention`]), printing the rows per table.

use anyhow::Context;
use clap::Args;

use super::{open_store, pretty_json, Failure};
use crate::config::{self, ExecutorConfig, Sources};
use crate::retention::{Pruner, Report};

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Count what would be pruned now, and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Print a JSON object instead of a table
    #[arg(long)]
    pub json: bool,
}

/// `kedge prune`.
pub(super) async fn prune(src: &Sources, args: PruneArgs) -> Result<(), Failure> {
    let loaded = config::load_daemon(src)?;
    let store = open_store(&loaded.store_url).await?;
    let run_dir = match &loaded.executor {
        ExecutorConfig::Local(l) => Some(l.work_dir.clone()),
        ExecutorConfig::Kubernetes(_) => None,
    };
    let pruner = Pruner::new(store.clone(), loaded.retention, run_dir);
    let result = if args.dry_run {
        pruner.preview().await.context("counting what to prune")
    } else {
        let never = tokio_util::sync::CancellationToken::new();
        pruner.pass(&never).await.context("pruning")
    };
    store.close().await;
    let report = result?;
    let policy = loaded.retention;
    if args.json {
        let out = serde_json::json!({
            "dry_run": args.dry_run,
            "history": humantime::format_duration(policy.history).to_string(),
            "payloads": humantime::format_duration(policy.payloads).to_string(),
            "deleted": report,
        });
        println!("{}", pretty_json(&out)?);
        return Ok(());
    }
    if args.dry_run {
        println!("dry run: nothing was changed; `kedge prune` would now:");
    }
    print!(
        "{}",
        table(
            &report,
            &humantime::format_duration(policy.history).to_string(),
            &humantime::format_duration(policy.payloads).to_string()
        )
    );
    Ok(())
}

/// The report as printed: one line per table.
fn table(r: &Report, history: &str, payloads: &str) -> String {
    let rows = &r.rows;
    let lines = [
        ("work_items", rows.work_items, "deleted", history),
        ("runs", rows.runs, "deleted", history),
        ("batch_members", rows.batch_members, "deleted", history),
        ("dead_letters", rows.dead_letters, "deleted", history),
        ("cron_fires", rows.cron_fires, "deleted", history),
        (
            "work_items.payload",
            rows.work_item_payloads,
            "cleared",
            payloads,
        ),
        (
            "dead_letters.payload",
            rows.dead_letter_payloads,
            "cleared",
            payloads,
        ),
        ("run folders", r.run_folders, "removed", history),
    ];
    let mut out = format!("{:<22} {:>10}  {:<8} OLDER THAN\n", "TABLE", "ROWS", "");
    for (name, n, what, age) in lines {
        out.push_str(&format!("{name:<22} {n:>10}  {what:<8} {age}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{tests::parse, Command};
    use super::*;
    use crate::store::Pruned;

    #[test]
    fn prune_takes_dry_run_and_json() {
        let Command::Prune(a) = parse(&["prune"]).unwrap().command else {
            panic!("not prune")
        };
        assert!(!a.dry_run && !a.json);
        let Command::Prune(a) = parse(&["prune", "--dry-run", "--json"]).unwrap().command else {
            panic!("not prune")
        };
        assert!(a.dry_run && a.json);
    }

    #[test]
    fn the_table_has_a_line_per_table() {
        let r = Report {
            rows: Pruned {
                work_items: 3,
                runs: 4,
                cron_fires: 2,
                work_item_payloads: 7,
                ..Pruned::default()
            },
            run_folders: 4,
        };
        assert_eq!(
            table(&r, "30days", "7days"),
            "TABLE                        ROWS           OLDER THAN\n\
             work_items                      3  deleted  30days\n\
             runs                            4  deleted  30days\n\
             batch_members                   0  deleted  30days\n\
             dead_letters                    0  deleted  30days\n\
             cron_fires                      2  deleted  30days\n\
             work_items.payload              7  cleared  7days\n\
             dead_letters.payload            0  cleared  7days\n\
             run folders                     4  removed  30days\n"
        );
    }
}
