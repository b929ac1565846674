//! "New work is in the store": how another process (`kedge enqueue`,
//! `kedge trigger`, `kedge dlq replay`) tells a running daemon, so the
//! builtin queue is event-driven like the broker sources instead of waiting
//! for the daemon's store poll.
//!
//! - PostgreSQL: `pg_notify('kedge_work', <store instance id>)` after the
//!   write commits; the daemon `LISTEN`s on one extra connection and ignores
//!   other stores' instance ids (several stores may share a database).
//! - SQLite (one machine): a Unix datagram socket beside the database file,
//!   `<db>.wake`, bound by the daemon; a writer sends one byte to it.
//!
//! Both are best effort: a lost signal (no daemon running, a dropped
//! `LISTEN` connection, a full socket buffer) costs at most one
//! `store.poll_interval`, which stays the backstop. Nothing is ever lost,
//! only seen later.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The `LISTEN` channel on PostgreSQL.
const CHANNEL: &str = "kedge_work";

/// How this store's writers reach its daemon.
#[derive(Clone)]
pub(crate) enum Signal {
    /// The daemon's socket path (`None`: an in-memory database, or a path
    /// too long for a Unix socket address, so only the poll sees work).
    Sqlite(Option<PathBuf>),
    Postgres {
        url: String,
    },
}

/// The longest path a Unix socket address holds (`sun_path`, 108 bytes on
/// Linux, with its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

impl std::fmt::Debug for Signal {
    // By hand: the URL may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Signal::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Signal::Postgres { url } => f
                .debug_struct("Postgres")
                .field("url", &crate::redact::redact(url))
                .finish(),
        }
    }
}

impl Signal {
    pub(crate) fn sqlite(db_path: Option<&str>) -> Signal {
        let path = db_path
            .map(|p| PathBuf::from(format!("{p}.wake")))
            .filter(|p| p.as_os_str().len() <= MAX_SOCKET_PATH);
        Signal::Sqlite(path)
    }
}

impl super::Store {
    /// Tells a listening daemon that work was stored. Best effort: errors
    /// are logged at debug level and otherwise ignored (see the module doc).
    pub(crate) async fn announce_work(&self) {
        match &self.signal {
            Signal::Sqlite(None) => {}
            Signal::Sqlite(Some(path)) => {
                if let Err(e) = send_datagram(path) {
                    tracing::debug!(socket = %path.display(), error = %e, "no daemon woken (it will see the work on its next poll)");
                }
            }
            Signal::Postgres { .. } => {
                let res = sqlx::query(
                    "SELECT pg_notify($1, (SELECT value FROM kedge_meta WHERE key = 'instance_id'))",
                )
                .bind(CHANNEL)
                .execute(&self.pool)
                .await;
                if let Err(e) = res {
                    tracing::debug!(error = %e, "cannot notify the daemon (it will see the work on its next poll)");
                }
            }
        }
    }

    /// Wakes `wake` whenever another process announces work to this store,
    /// until `stop`. The SQLite socket is bound before this returns, so a
    /// writer that starts afterwards is heard.
    pub async fn listen_for_work(&self, wake: Arc<Notify>, stop: CancellationToken) {
        match &self.signal {
            Signal::Sqlite(None) => {
                tracing::info!("no wake-up socket for this store; other processes' work is seen on the store poll");
            }
            Signal::Sqlite(Some(path)) => match bind_socket(path) {
                Ok(Some(socket)) => {
                    tokio::spawn(serve_socket(socket, path.clone(), wake, stop));
                }
                Ok(None) => {
                    tracing::warn!(socket = %path.display(), "another daemon is listening on this store's wake-up socket; work from other processes is seen on the store poll");
                }
                Err(e) => {
                    tracing::warn!(socket = %path.display(), error = %e, "cannot bind the wake-up socket; work from other processes is seen on the store poll");
                }
            },
            Signal::Postgres { url } => {
                let instance = match self.instance_id().await {
                    Ok(id) => id,
                    Err(e) => {
                        tracing::warn!(error = %crate::error_chain(&e), "cannot read the store's instance id; work from other processes is seen on the store poll");
                        return;
                    }
                };
                tokio::spawn(listen_postgres(url.clone(), instance, wake, stop));
            }
        }
    }
}

fn send_datagram(path: &std::path::Path) -> std::io::Result<()> {
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    // A full buffer means the daemon has wake-ups queued already.
    socket.set_nonblocking(true)?;
    socket.send_to(b"w", path)?;
    Ok(())
}

/// Binds the daemon's socket. `Ok(None)`: a live daemon holds it already.
/// A socket file left by a daemon that died is replaced.
fn bind_socket(path: &std::path::Path) -> std::io::Result<Option<tokio::net::UnixDatagram>> {
    match tokio::net::UnixDatagram::bind(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let probe = std::os::unix::net::UnixDatagram::unbound()?;
            if probe.connect(path).is_ok() {
                return Ok(None);
            }
            std::fs::remove_file(path)?;
            tokio::net::UnixDatagram::bind(path).map(Some)
        }
        Err(e) => Err(e),
    }
}

async fn serve_socket(
    socket: tokio::net::UnixDatagram,
    path: PathBuf,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut buf = [0u8; 16];
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            got = socket.recv(&mut buf) => match got {
                Ok(_) => wake.notify_one(),
                Err(e) => {
                    tracing::warn!(socket = %path.display(), error = %e, "wake-up socket failed; work from other processes is seen on the store poll");
                    stop.cancelled().await;
                    break;
                }
            },
        }
    }
    drop(socket);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(socket = %path.display(), error = %e, "cannot remove the wake-up socket; the next start replaces it");
        }
        _ => {}
    }
}

async fn listen_postgres(
    url: String,
    instance: String,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let listener = async {
            let mut l = sqlx::postgres::PgListener::connect(&url).await?;
            l.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = tokio::select! {
            _ = stop.cancelled() => return,
            l = listener => match l {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot LISTEN for work from other processes; retrying (the store poll sees it meanwhile)");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(200);
        // Anything announced while not listening is waiting already.
        wake.notify_one();
        loop {
            let got = tokio::select! {
                _ = stop.cancelled() => return,
                got = listener.try_recv() => got,
            };
            match got {
                Ok(Some(n)) if n.payload() == instance => wake.notify_one(),
                Ok(Some(_)) => {}
                // The connection dropped: notifications may have been lost
                // (the next try_recv reconnects).
                Ok(None) => wake.notify_one(),
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN connection failed; reconnecting");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_path_sits_beside_the_database_and_fits_an_address() {
        let Signal::Sqlite(Some(p)) = Signal::sqlite(Some("/var/lib/kedge/kedge.db")) else {
            panic!("expected a socket path");
        };
        assert_eq!(p, PathBuf::from("/var/lib/kedge/kedge.db.wake"));
        let long = format!("/{}/kedge.db", "x".repeat(120));
        assert!(matches!(Signal::sqlite(Some(&long)), Signal::Sqlite(None)));
        assert!(matches!(Signal::sqlite(None), Signal::Sqlite(None)));
    }

    #[tokio::test]
    async fn a_stale_socket_file_is_replaced_and_a_live_one_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db.wake");
        // A daemon that died leaves its socket file behind.
        drop(std::os::unix::net::UnixDatagram::bind(&path).unwrap());
        let live = bind_socket(&path)
            .unwrap()
            .expect("the stale file is replaced");
        assert!(
            bind_socket(&path).unwrap().is_none(),
            "a live socket is not taken over"
        );
        send_datagram(&path).unwrap();
        let mut buf = [0u8; 4];
        let n = tokio::time::timeout(Duration::from_secs(5), live.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"w");
    }
}
