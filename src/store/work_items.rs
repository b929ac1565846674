//! `work_items`: intake. One row per message, cron fire or manual trigger,
//! unique per (source, job, message id), stored with its first run.

use super::rows::{insert_batch_item_tx, insert_dead_item_tx, insert_items_tx, NewWorkItem};
use super::{Result, Store, Tx};

/// How intake stores one message ([`Store::intake_many`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intake {
    /// A work item and its first pending run.
    Run,
    /// A work item waiting for a batch run.
    AwaitBatch,
    /// Refused: a dead work item and its dead letter.
    Dead { reason: String, error: String },
}

impl Store {
    /// Stores a work item and its first run. Returns `false` (and writes
    /// nothing) when the (source, job, message id) is already stored.
    /// A running daemon is woken to launch it (see `store::signal`).
    pub async fn insert_work_item(&self, item: &NewWorkItem) -> Result<bool> {
        let _t = crate::metrics::store_timer("insert_work_item");
        self.intake_one(item, &Intake::Run).await
    }

    /// Stores what intake made of one claim's messages, all in one
    /// transaction (one commit per claim rather than per message). Returns,
    /// per item, whether it was written (`false`: stored before).
    pub async fn intake_many(&self, items: &[(NewWorkItem, Intake)]) -> Result<Vec<bool>> {
        let _t = crate::metrics::store_timer("intake_many");
        let mut tx = self.begin_write().await?;
        let now = self.clock.now_ms();
        let mut out = Vec::with_capacity(items.len());
        for (item, how) in items {
            out.push(intake_tx(&mut tx, item, how, now).await?);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Stores one message as `how` says, in a transaction of its own, and
    /// wakes a running daemon when anything was written.
    pub(super) async fn intake_one(&self, item: &NewWorkItem, how: &Intake) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let stored = intake_tx(&mut tx, item, how, self.clock.now_ms()).await?;
        tx.commit().await?;
        if stored {
            self.announce_work().await;
        }
        Ok(stored)
    }
}

/// Stores one message as `how` says. False when it was stored before.
async fn intake_tx(tx: &mut Tx, item: &NewWorkItem, how: &Intake, now: i64) -> Result<bool> {
    match how {
        Intake::Run => {
            let id = uuid::Uuid::new_v4().to_string();
            Ok(insert_items_tx(tx, &[(item, id)], now).await? == [true])
        }
        Intake::AwaitBatch => insert_batch_item_tx(tx, item, now).await,
        Intake::Dead { reason, error } => insert_dead_item_tx(tx, item, reason, error, now).await,
    }
}
