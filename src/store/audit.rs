//! `audit_log`: every operator action, who made it, when and why. Written
//! only inside the transaction of the change it records (see
//! `rows::insert_audit_tx`); read here. Never pruned.

use super::{Result, Store};

/// One recorded operator action.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct AuditRecord {
    pub id: String,
    /// When (Unix ms).
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub job: Option<String>,
    pub run_id: Option<String>,
    pub reason: Option<String>,
    /// What the action did, as JSON text.
    pub details: Option<String>,
}

impl Store {
    /// The newest `limit` operator actions (of `job`, when given), oldest
    /// first.
    pub async fn audit_log(&self, job: Option<&str>, limit: i64) -> Result<Vec<AuditRecord>> {
        let mut rows: Vec<AuditRecord> = sqlx::query_as(
            "SELECT id, at_ms, actor, action, job, run_id, reason, details FROM audit_log \
             WHERE ($1 IS NULL OR job = $1) ORDER BY at_ms DESC, id DESC LIMIT $2",
        )
        .bind(job)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.reverse();
        Ok(rows)
    }
}
