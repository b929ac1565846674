//! `kedge validate`: every problem of the config and the job definitions.

use super::Failure;
use crate::config::{self, Sources};

/// `kedge validate`.
pub(super) fn validate(src: &Sources) -> Result<(), Failure> {
    let loaded = config::load(src)?;
    if !loaded.job_problems.is_empty() {
        return Err(loaded.job_problems.into());
    }
    println!(
        "ok: {} job(s) in {}",
        loaded.jobs.len(),
        loaded.daemon.jobs_dir.display()
    );
    Ok(())
}
