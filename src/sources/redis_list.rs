//! `redis_list`: a plain Redis list as a queue, claimed reliably with
//! `BLMOVE` into a per-consumer processing list.
//!
//! # Keys
//!
//! For `list: orders` and consumer `c1`:
//!
//! - `orders` — the queue. Producers `RPUSH`; consumers take from the left.
//! - `orders:kedge:processing:c1` — what `c1` claimed and has not settled.
//! - `orders:kedge:consumers` — a set of the consumers that may own a
//!   processing list.
//! - `orders:kedge:alive:c1` — `c1`'s heartbeat, a key with a TTL (the
//!   lease, default 30 s).
//!
//! # Expected flow
//!
//! 1. [`Source::connect`] opens two connections (one for blocking commands
//!    only), registers the consumer and starts its heartbeat, then recovers
//!    every registered consumer whose heartbeat expired: its processing
//!    list is moved, element by element with `LMOVE`, into this consumer's
//!    own, and it is removed from the set. Everything then in the own
//!    processing list (recovered, or left by this consumer's previous life)
//!    is the backlog.
//! 2. [`Source::claim`] hands out the backlog first, marked `redelivered`.
//!    Otherwise it blocks in `BLMOVE <list> <processing> LEFT RIGHT <wait>`
//!    for a first message and takes up to `max - 1` more with pipelined,
//!    non-blocking `LMOVE`s.
//! 3. [`Source::settle`] removes each settled body from the processing list
//!    (`LREM <processing> 1 <body>`, pipelined).
//!
//! # Guarantees
//!
//! A message is always in exactly one of the list and a processing list
//! until it is settled: `LMOVE`/`BLMOVE` are atomic, and recovery moves
//! element by element, so two consumers recovering the same dead one at
//! once split its messages and never duplicate or drop one. A consumer
//! that dies at any point leaves its messages in its processing list,
//! where a live consumer finds them after its lease ran out (every consumer
//! looks for dead ones at connect and once per lease while claiming).
//! A claim dropped while blocked (its future cancelled) may still move a
//! message on the server; the next claim reads the processing list again,
//! and once more after that `BLMOVE` would have timed out, so the message
//! is handed out all the same.
//!
//! Lists carry no message ids: the id is [`body_id`] of the body.
//!
//! # Caveats
//!
//! - Identical bodies are one message (same id); intake stores it once and
//!   settling removes every copy that was claimed.
//! - A consumer is presumed dead when its heartbeat expires: the lease must
//!   exceed the time between two claims (kedge settles right after storing
//!   a batch, so that is the time to store one). A consumer that was only
//!   slow finds its messages redelivered elsewhere; intake sees they are
//!   stored already, so they still become one work item each.
//! - Recovery runs at [`Source::connect`], not while consuming: a dead
//!   consumer's messages wait until some consumer (re)connects.
//! - Consumer names must be unique among live daemons reading the list.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisResult};

use super::{body_id, BoxError, Delivery, Letter, Outbox, Receipt, Source, SourceError};
use crate::config::queue::{BrokerUrl, DeadLetterTarget, RedisListSource};

/// How long a command that answers at once may take before the connection
/// is considered broken.
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How much longer than its block time a blocking command may take to
/// answer before the connection is considered broken.
pub(super) const BLOCK_MARGIN: Duration = Duration::from_secs(5);

/// Opens one multiplexed connection to `url` (its secret form; callers show
/// `url.shown()` in errors). Shared by the Redis sources.
pub(super) async fn open(url: &BrokerUrl) -> RedisResult<MultiplexedConnection> {
    let client = redis::Client::open(url.secret())?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

pub struct RedisList {
    cfg: RedisListSource,
    consumer: String,
    lease: Duration,
    /// `<list>:kedge:processing:<consumer>`.
    processing: String,
    /// `<list>:kedge:consumers`.
    consumers: String,
    /// Commands that answer at once. `None` before the first use and after
    /// any error (the caller reconnects).
    conn: Option<MultiplexedConnection>,
    /// `BLMOVE` only. A blocked command holds its connection until it
    /// returns, and its response timeout is set per call to outlast the
    /// block; keeping it apart leaves `conn` free for everything else.
    blocking: Option<MultiplexedConnection>,
    /// Whether [`Source::connect`] ran (registration and recovery) since
    /// the last error. The [`Outbox`] only opens `conn`.
    connected: bool,
    /// Bodies in our processing list not handed out since the last
    /// connect. Every one of them is also in the processing list, so
    /// losing this (on an error) loses nothing: connect reloads it.
    backlog: VecDeque<Vec<u8>>,
    /// True while a claim runs. Still true when the next claim starts means
    /// the last one was dropped half way, and a `BLMOVE` it sent may have
    /// moved a message into our processing list that nobody handed out.
    claiming: bool,
    /// When the last `BLMOVE` sent stops blocking on the server.
    block_ends: Option<Instant>,
    /// After a dropped claim: when its `BLMOVE` can no longer move anything,
    /// so one more look at the processing list finds all it moved.
    recheck_at: Option<Instant>,
    /// When to look for dead consumers again (every lease).
    next_recovery: Instant,
}

impl RedisList {
    pub fn new(cfg: RedisListSource, consumer: &str) -> Self {
        let processing = format!("{}:kedge:processing:{consumer}", cfg.list);
        let consumers = format!("{}:kedge:consumers", cfg.list);
        RedisList {
            lease: cfg.lease,
            cfg,
            consumer: consumer.to_string(),
            processing,
            consumers,
            conn: None,
            blocking: None,
            connected: false,
            backlog: VecDeque::new(),
            claiming: false,
            block_ends: None,
            recheck_at: None,
            next_recovery: Instant::now(),
        }
    }

    fn alive_key(&self, consumer: &str) -> String {
        format!("{}:kedge:alive:{consumer}", self.cfg.list)
    }

    fn processing_key(&self, consumer: &str) -> String {
        format!("{}:kedge:processing:{consumer}", self.cfg.list)
    }

    /// Drops both connections: after an error their state is unknown.
    fn disconnect(&mut self) {
        self.conn = None;
        self.blocking = None;
        self.connected = false;
    }

    fn error(&mut self, what: &str, e: impl Into<BoxError>) -> SourceError {
        self.disconnect();
        SourceError::new(
            format!("{what} list {}", self.cfg.list),
            self.cfg.url.shown(),
            e,
        )
    }

    /// The command connection, opened if needed (without registering).
    async fn conn(&mut self) -> RedisResult<MultiplexedConnection> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let c = open(&self.cfg.url).await?;
        self.conn = Some(c.clone());
        Ok(c)
    }

    /// Appends the heartbeat to `p`: (re)register in the consumer set and
    /// set the alive key to expire after `ttl`.
    ///
    /// Invariant: a consumer registers after every move into its processing
    /// list (the heartbeat follows each claim), so a recovery that removed
    /// it from the set while it was merely slow cannot orphan its list.
    fn heartbeat(&self, p: &mut redis::Pipeline, ttl: Duration) {
        p.cmd("SADD")
            .arg(&self.consumers)
            .arg(&self.consumer)
            .ignore();
        p.cmd("SET")
            .arg(self.alive_key(&self.consumer))
            .arg(1)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .ignore();
    }

    /// All of our processing list. It holds only claimed, unsettled
    /// messages: at most a few batches, so reading it whole is fine.
    async fn processing_list(&self, c: &mut MultiplexedConnection) -> RedisResult<Vec<Vec<u8>>> {
        redis::cmd("LRANGE")
            .arg(&self.processing)
            .arg(0)
            .arg(-1)
            .query_async(c)
            .await
    }

    /// Moves the processing lists of consumers whose heartbeat expired into
    /// ours. With `into_backlog`, the moved messages are also queued to be
    /// handed out by the next claims (at connect, the caller reloads the
    /// whole processing list instead). Runs at connect and every lease
    /// while claiming, so a consumer that died while this one kept running
    /// is recovered within about two leases.
    async fn recover_dead(
        &mut self,
        c: &mut MultiplexedConnection,
        into_backlog: bool,
    ) -> RedisResult<()> {
        self.next_recovery = Instant::now() + self.lease;
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&self.consumers)
            .query_async(c)
            .await?;
        for other in members.iter().filter(|m| **m != self.consumer) {
            let alive: bool = redis::cmd("EXISTS")
                .arg(self.alive_key(other))
                .query_async(c)
                .await?;
            if alive {
                continue;
            }
            // Element by element: each LMOVE is atomic, so a crash here or
            // a second consumer recovering the same list at once cannot
            // lose or duplicate a message.
            let from = self.processing_key(other);
            let mut moved = 0usize;
            loop {
                let body: Option<Vec<u8>> = redis::cmd("LMOVE")
                    .arg(&from)
                    .arg(&self.processing)
                    .arg("LEFT")
                    .arg("RIGHT")
                    .query_async(c)
                    .await?;
                if body.is_none() {
                    break;
                }
                if let (true, Some(b)) = (into_backlog, body) {
                    self.backlog.push_back(b);
                }
                moved += 1;
            }
            // Only once its list is empty: a crash before this leaves it
            // registered, to be recovered again.
            redis::cmd("SREM")
                .arg(&self.consumers)
                .arg(other)
                .query_async::<()>(c)
                .await?;
            if moved > 0 {
                tracing::info!(
                    url = %self.cfg.url.shown(),
                    list = %self.cfg.list,
                    consumer = %self.consumer,
                    dead = %other,
                    moved,
                    "recovered the messages of a dead consumer"
                );
            }
        }

        Ok(())
    }

    async fn try_connect(&mut self) -> RedisResult<()> {
        self.disconnect();
        let mut c = open(&self.cfg.url).await?;
        let blocking = open(&self.cfg.url).await?;

        let mut p = redis::pipe();
        self.heartbeat(&mut p, self.lease);
        p.query_async::<()>(&mut c).await?;

        self.recover_dead(&mut c, false).await?;

        // Everything in our processing list is unsettled: recovered just
        // now, or claimed by our previous life and never settled.
        self.backlog = self.processing_list(&mut c).await?.into();
        self.conn = Some(c);
        self.blocking = Some(blocking);
        self.connected = true;
        self.claiming = false;
        self.recheck_at = None;
        Ok(())
    }

    async fn try_claim(&mut self, max: usize, wait: Duration) -> RedisResult<Vec<Delivery>> {
        if !self.connected {
            self.try_connect().await?;
        }
        let mut c = self.conn().await?;
        let now = Instant::now();
        if self.claiming {
            // The last claim was dropped mid-way. Its BLMOVE may still move
            // a message after we stopped listening: start the blocking
            // connection afresh (closing the old one ends the BLMOVE, but
            // the server may see that only later) and hand out all our
            // processing list holds, now and once more when that BLMOVE
            // would have timed out anyway.
            self.blocking = Some(open(&self.cfg.url).await?);
            self.recheck_at = self.block_ends.filter(|t| *t > now);
            self.backlog = self.processing_list(&mut c).await?.into();
        } else if self.recheck_at.is_some_and(|t| t <= now) {
            self.recheck_at = None;
            self.backlog = self.processing_list(&mut c).await?.into();
        }
        if now >= self.next_recovery {
            self.recover_dead(&mut c, true).await?;
        }
        self.claiming = true;

        if !self.backlog.is_empty() {
            let mut p = redis::pipe();
            self.heartbeat(&mut p, self.lease);
            p.query_async::<()>(&mut c).await?;
            let n = max.min(self.backlog.len());
            let out = self
                .backlog
                .drain(..n)
                .map(|body| delivery(&self.processing, body, true))
                .collect();
            self.claiming = false;
            return Ok(out);
        }

        // Blocked in BLMOVE, we are alive: the lease covers the wait.
        let mut p = redis::pipe();
        self.heartbeat(&mut p, self.lease + wait);
        p.query_async::<()>(&mut c).await?;

        let first: Option<Vec<u8>> = if wait >= Duration::from_millis(1) {
            let mut b = match &self.blocking {
                Some(b) => b.clone(),
                None => {
                    let b = open(&self.cfg.url).await?;
                    self.blocking = Some(b.clone());
                    b
                }
            };
            b.set_response_timeout(wait + BLOCK_MARGIN);
            self.block_ends = Some(Instant::now() + wait + BLOCK_MARGIN);
            redis::cmd("BLMOVE")
                .arg(&self.cfg.list)
                .arg(&self.processing)
                .arg("LEFT")
                .arg("RIGHT")
                .arg(format!("{:.3}", wait.as_secs_f64()))
                .query_async(&mut b)
                .await?
        } else {
            // BLMOVE's timeout 0 means forever: no wait is a plain LMOVE.
            redis::cmd("LMOVE")
                .arg(&self.cfg.list)
                .arg(&self.processing)
                .arg("LEFT")
                .arg("RIGHT")
                .query_async(&mut c)
                .await?
        };
        let Some(first) = first else {
            self.claiming = false;
            return Ok(Vec::new());
        };

        let mut bodies = vec![first];
        let mut p = redis::pipe();
        for _ in 1..max {
            p.cmd("LMOVE")
                .arg(&self.cfg.list)
                .arg(&self.processing)
                .arg("LEFT")
                .arg("RIGHT");
        }
        self.heartbeat(&mut p, self.lease);
        let more: Vec<Option<Vec<u8>>> = p.query_async(&mut c).await?;
        bodies.extend(more.into_iter().flatten());
        self.claiming = false;
        Ok(bodies
            .into_iter()
            .map(|body| delivery(&self.processing, body, false))
            .collect())
    }

    async fn try_settle(&mut self, done: &[Delivery]) -> Result<(), BoxError> {
        let mut p = redis::pipe();
        for d in done {
            let Receipt::RedisList { processing } = &d.receipt else {
                return Err(format!("delivery {} is not from a Redis list", d.message_id).into());
            };
            p.cmd("LREM").arg(processing).arg(1).arg(&d.body).ignore();
        }
        self.heartbeat(&mut p, self.lease);
        let mut c = self.conn().await?;
        p.query_async::<()>(&mut c).await?;
        Ok(())
    }

    async fn rpush(&mut self, key: &str, value: &[u8]) -> RedisResult<()> {
        let mut c = self.conn().await?;
        let pushed = redis::cmd("RPUSH")
            .arg(key)
            .arg(value)
            .query_async::<()>(&mut c)
            .await;
        if pushed.is_err() {
            // The connection may be dead (Redis restarted): open a new one
            // next time rather than fail on this one forever.
            self.conn = None;
        }
        pushed
    }
}

fn delivery(processing: &str, body: Vec<u8>, redelivered: bool) -> Delivery {
    Delivery {
        message_id: body_id(&body),
        body,
        headers: Vec::new(),
        redelivered,
        receipt: Receipt::RedisList {
            processing: processing.to_string(),
        },
    }
}

impl Source for RedisList {
    async fn connect(&mut self) -> Result<(), SourceError> {
        self.try_connect()
            .await
            .map_err(|e| self.error("connecting to", e))
    }

    async fn claim(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, SourceError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        self.try_claim(max, wait)
            .await
            .map_err(|e| self.error("claiming from", e))
    }

    async fn settle(&mut self, done: &[Delivery]) -> Result<(), SourceError> {
        if done.is_empty() {
            return Ok(());
        }
        self.try_settle(done)
            .await
            .map_err(|e| self.error("settling on", e))
    }

    /// `LLEN` of the list: the messages no consumer has claimed yet.
    async fn backlog(&mut self) -> Result<Option<u64>, SourceError> {
        let list = self.cfg.list.clone();
        let looked: RedisResult<u64> = async {
            let mut c = self.conn().await?;
            redis::cmd("LLEN").arg(&list).query_async(&mut c).await
        }
        .await;
        looked.map(Some).map_err(|e| self.error("measuring", e))
    }
}

impl Outbox for RedisList {
    async fn dead_letter(
        &mut self,
        target: &DeadLetterTarget,
        letter: &Letter,
    ) -> Result<(), SourceError> {
        let DeadLetterTarget::RedisList(dead) = target else {
            return Err(SourceError::new(
                format!("dead-lettering from list {}", self.cfg.list),
                self.cfg.url.shown(),
                format!("a Redis list source cannot publish to {target:?}"),
            ));
        };
        let json = serde_json::to_vec(letter).map_err(|e| self.error("dead-lettering from", e))?;
        self.rpush(dead, &json)
            .await
            .map_err(|e| self.error(&format!("dead-lettering to {dead} from"), e))
    }

    /// Lists carry no ids: the replayed message is identified by its body,
    /// so `message_id` is implied.
    async fn replay(&mut self, _message_id: &str, payload: &[u8]) -> Result<(), SourceError> {
        let list = self.cfg.list.clone();
        self.rpush(&list, payload)
            .await
            .map_err(|e| self.error("replaying into", e))
    }
}
