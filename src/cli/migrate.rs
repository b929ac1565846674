//! `kedge migrate`: bring the store's schema up to date and exit.

use super::{open_store, Failure};
use crate::config::{self, Sources};

/// `kedge migrate`.
pub(super) async fn migrate(src: &Sources) -> Result<(), Failure> {
    let loaded = config::load_daemon(src)?;
    let store = open_store(&loaded.store_url).await?;
    store.close().await;
    println!(
        "store at {} is up to date",
        crate::redact::redact(&loaded.store_url)
    );
    Ok(())
}
