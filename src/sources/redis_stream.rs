//! `redis_stream`: a Redis stream read through a consumer group, claimed
//! with `XREADGROUP` and settled with `XACK`.
//!
//! An entry's `payload` field is the message body; its other fields are
//! the delivery's headers. An entry without `payload` has as body a JSON
//! object of all its fields (values as text). The message id is the entry
//! id.
//!
//! # Expected flow
//!
//! 1. [`Source::connect`] opens two connections (one for blocking commands
//!    only), creates the group if needed (`XGROUP CREATE <stream> <group> 0
//!    MKSTREAM`: a new group reads the stream from its start), and takes
//!    over every entry pending longer than `claim_idle` with any consumer
//!    (`XAUTOCLAIM`, following its cursor). Everything then pending with
//!    this consumer — taken over just now, or left by its previous life —
//!    is the backlog.
//! 2. [`Source::claim`] every `claim_idle / 2` takes over idle entries
//!    again; hands out the backlog first (`XREADGROUP … STREAMS <stream>
//!    <id>` reads our own pending entries, a page of `max` at a time),
//!    marked `redelivered`; otherwise blocks in `XREADGROUP … COUNT <max>
//!    BLOCK <wait> STREAMS <stream> >` for new entries.
//! 3. [`Source::settle`] acknowledges the entries (one `XACK`).
//!
//! # Guarantees
//!
//! An entry handed out stays in the group's pending list until settled; a
//! consumer that dies leaves it there, and after `claim_idle` the next
//! `XAUTOCLAIM` of any consumer of the group takes it over and hands it
//! out again under the same id.
//!
//! A claim dropped while blocked (its future cancelled) may still claim
//! entries on the server: the next claim reads our pending entries again,
//! and the periodic `XAUTOCLAIM` takes over (from us too) whatever stays
//! pending past `claim_idle`, which makes it read them again as well.
//!
//! An entry deleted from the stream (`XDEL`, trimming) while pending has
//! no body to hand out: it is acknowledged away when found.
//!
//! If Redis loses the group (restarted without persistence), the next
//! claim gets `NOGROUP`, creates the group again and goes on; what was
//! pending is lost with the server's data, not by kedge.
//!
//! # Caveats
//!
//! - `claim_idle` must exceed the time from a claim to its settle (storing
//!   one batch); an entry pending longer is taken over by another
//!   consumer, which hands it out again. Intake sees it is stored already,
//!   so it still becomes one work item.
//! - Reading our own pending entries does not reset their idle time, so
//!   a backlog entry may be taken over by another consumer while it is
//!   being stored here: again a duplicate that intake absorbs.
//! - A replayed message is a new entry with a new id.
//! - Consumer names must be unique among live daemons reading the group.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{ErrorKind, RedisError, RedisResult, Value};

use super::redis_list::{open, BLOCK_MARGIN};
use super::{BoxError, Delivery, Letter, Outbox, Receipt, Source, SourceError};
use crate::config::queue::{DeadLetterTarget, RedisStreamSource};

/// The field holding the message body.
const PAYLOAD: &str = "payload";
/// `XAUTOCLAIM … COUNT`: pending entries examined per round trip.
const AUTOCLAIM_PAGE: usize = 100;

pub struct RedisStream {
    cfg: RedisStreamSource,
    consumer: String,
    /// Commands that answer at once. `None` before the first use and after
    /// any error (the caller reconnects).
    conn: Option<MultiplexedConnection>,
    /// `XREADGROUP … BLOCK` only: a blocked command holds its connection
    /// until it returns, and its response timeout is set per call to
    /// outlast the block.
    blocking: Option<MultiplexedConnection>,
    /// Whether [`Source::connect`] ran (group and takeover) since the last
    /// error. The [`Outbox`] only opens `conn`.
    connected: bool,
    /// Where the next read of our own pending entries starts (`0`: from
    /// the first); `None` once all were handed out. Set again whenever we
    /// may own entries nobody handed out. Every claim's deliveries are
    /// settled before the next claim, so a read from `0` finds only those
    /// (and `outstanding` ones, skipped).
    pending_from: Option<String>,
    /// Ids handed out since the last connect and not settled yet. Our own
    /// periodic `XAUTOCLAIM` takes over our own idle entries too (it cannot
    /// tell owners apart); these are not handed out a second time.
    outstanding: HashSet<String>,
    /// When `XAUTOCLAIM` last ran.
    last_takeover: Instant,
    /// True while a claim runs. Still true when the next claim starts means
    /// the last one was dropped half way, and an `XREADGROUP` it sent may
    /// have claimed entries that nobody handed out.
    claiming: bool,
}

impl RedisStream {
    pub fn new(cfg: RedisStreamSource, consumer: &str) -> Self {
        RedisStream {
            cfg,
            consumer: consumer.to_string(),
            conn: None,
            blocking: None,
            connected: false,
            pending_from: None,
            outstanding: HashSet::new(),
            last_takeover: Instant::now(),
            claiming: false,
        }
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
            format!("{what} stream {}", self.cfg.stream),
            self.cfg.url.shown(),
            e,
        )
    }

    /// The command connection, opened if needed (without the group setup).
    async fn conn(&mut self) -> RedisResult<MultiplexedConnection> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let c = open(&self.cfg.url).await?;
        self.conn = Some(c.clone());
        Ok(c)
    }

    async fn create_group(&self, c: &mut MultiplexedConnection) -> RedisResult<()> {
        let created = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.cfg.stream)
            .arg(&self.cfg.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<()>(c)
            .await;
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// Takes over every entry of the group pending longer than
    /// `claim_idle` (ours included), following `XAUTOCLAIM`'s cursor to
    /// the end. Only ids: the entries are read with our own pending ones.
    /// Returns how many were taken over.
    async fn take_over(&mut self, c: &mut MultiplexedConnection) -> RedisResult<usize> {
        let idle_ms = self.cfg.claim_idle.as_millis().max(1) as u64;
        let mut cursor = "0-0".to_string();
        let mut taken = 0;
        loop {
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(&self.cfg.stream)
                .arg(&self.cfg.group)
                .arg(&self.consumer)
                .arg(idle_ms)
                .arg(&cursor)
                .arg("COUNT")
                .arg(AUTOCLAIM_PAGE)
                .arg("JUSTID")
                .query_async(c)
                .await?;
            let (next, ids, deleted) = parse_autoclaim(reply)?;
            taken += ids.len();
            // Redis 7 drops deleted entries from the pending list itself
            // and reports them; acknowledging them again is harmless.
            if !deleted.is_empty() {
                self.ack(c, &deleted).await?;
            }
            if next == "0-0" {
                break;
            }
            cursor = next;
        }
        self.last_takeover = Instant::now();
        if taken > 0 {
            tracing::info!(
                url = %self.cfg.url.shown(),
                stream = %self.cfg.stream,
                group = %self.cfg.group,
                consumer = %self.consumer,
                taken,
                "took over idle pending entries"
            );
        }
        Ok(taken)
    }

    async fn ack(&self, c: &mut MultiplexedConnection, ids: &[String]) -> RedisResult<()> {
        redis::cmd("XACK")
            .arg(&self.cfg.stream)
            .arg(&self.cfg.group)
            .arg(ids)
            .query_async::<()>(c)
            .await
    }

    async fn try_connect(&mut self) -> RedisResult<()> {
        self.disconnect();
        let mut c = open(&self.cfg.url).await?;
        let blocking = open(&self.cfg.url).await?;
        self.create_group(&mut c).await?;
        self.take_over(&mut c).await?;
        self.pending_from = Some("0".into());
        // After an error nothing handed out is known to be settled: the
        // caller gets it all again, and intake sees what it stored.
        self.outstanding.clear();
        self.conn = Some(c);
        self.blocking = Some(blocking);
        self.connected = true;
        self.claiming = false;
        Ok(())
    }

    async fn try_claim(&mut self, max: usize, wait: Duration) -> RedisResult<Vec<Delivery>> {
        if !self.connected {
            self.try_connect().await?;
        }
        if self.claiming {
            // The last claim was dropped mid-way. Its XREADGROUP may still
            // claim entries after we stopped listening: start the blocking
            // connection afresh and hand out all that is pending with us.
            self.blocking = Some(open(&self.cfg.url).await?);
            self.pending_from = Some("0".into());
        }
        self.claiming = true;
        let out = match self.claim_once(max, wait).await {
            Err(e) if e.code() == Some("NOGROUP") => {
                tracing::warn!(
                    url = %self.cfg.url.shown(),
                    stream = %self.cfg.stream,
                    group = %self.cfg.group,
                    "the consumer group is gone (Redis restarted without persistence?); creating it again"
                );
                let mut c = self.conn().await?;
                self.create_group(&mut c).await?;
                // Its pending entries went with it.
                self.pending_from = None;
                self.claim_once(max, wait).await?
            }
            other => other?,
        };
        self.outstanding
            .extend(out.iter().map(|d| d.message_id.clone()));
        self.claiming = false;
        Ok(out)
    }

    async fn claim_once(&mut self, max: usize, wait: Duration) -> RedisResult<Vec<Delivery>> {
        let mut c = self.conn().await?;
        if self.last_takeover.elapsed() >= self.cfg.claim_idle / 2
            && self.take_over(&mut c).await? > 0
        {
            self.pending_from = Some("0".into());
        }

        // Our own pending entries first, a page at a time.
        while let Some(from) = self.pending_from.clone() {
            let reply: Value = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(&self.cfg.group)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(max)
                .arg("STREAMS")
                .arg(&self.cfg.stream)
                .arg(&from)
                .query_async(&mut c)
                .await?;
            let entries = parse_read(reply)?;
            let Some(last) = entries.last() else {
                self.pending_from = None;
                break;
            };
            self.pending_from = Some(last.id.clone());
            let fresh = entries
                .into_iter()
                .filter(|e| !self.outstanding.contains(&e.id))
                .collect();
            let out = self.deliveries(&mut c, fresh, true).await?;
            if !out.is_empty() {
                return Ok(out);
            }
        }

        // Then new entries, waiting for the first.
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(&self.cfg.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(max);
        let reply: Value = if wait >= Duration::from_millis(1) {
            // BLOCK 0 would mean forever; `wait` is at least 1 ms here.
            read.arg("BLOCK")
                .arg(wait.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.cfg.stream)
                .arg(">");
            let mut b = match &self.blocking {
                Some(b) => b.clone(),
                None => {
                    let b = open(&self.cfg.url).await?;
                    self.blocking = Some(b.clone());
                    b
                }
            };
            b.set_response_timeout(wait + BLOCK_MARGIN);
            read.query_async(&mut b).await?
        } else {
            read.arg("STREAMS").arg(&self.cfg.stream).arg(">");
            read.query_async(&mut c).await?
        };
        let entries = parse_read(reply)?;
        self.deliveries(&mut c, entries, false).await
    }

    /// Deliveries for `entries`; entries deleted from the stream while
    /// pending are acknowledged away instead.
    async fn deliveries(
        &self,
        c: &mut MultiplexedConnection,
        entries: Vec<Entry>,
        redelivered: bool,
    ) -> RedisResult<Vec<Delivery>> {
        let mut out = Vec::with_capacity(entries.len());
        let mut deleted = Vec::new();
        for e in entries {
            match e.fields {
                Some(fields) => out.push(delivery(e.id, fields, redelivered)),
                None => deleted.push(e.id),
            }
        }
        if !deleted.is_empty() {
            tracing::warn!(
                stream = %self.cfg.stream,
                group = %self.cfg.group,
                ids = ?deleted,
                "pending entries were deleted from the stream; acknowledging them away"
            );
            self.ack(c, &deleted).await?;
        }
        Ok(out)
    }

    async fn try_settle(&mut self, done: &[Delivery]) -> Result<(), BoxError> {
        let mut ids = Vec::with_capacity(done.len());
        for d in done {
            let Receipt::RedisStream { id } = &d.receipt else {
                return Err(format!("delivery {} is not from a Redis stream", d.message_id).into());
            };
            ids.push(id.clone());
        }
        let mut c = self.conn().await?;
        self.ack(&mut c, &ids).await?;
        for id in &ids {
            self.outstanding.remove(id);
        }
        Ok(())
    }

    async fn xadd(&mut self, key: &str, fields: &[(&str, &[u8])]) -> RedisResult<()> {
        let mut c = self.conn().await?;
        let mut cmd = redis::cmd("XADD");
        cmd.arg(key).arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        let added = cmd.query_async::<()>(&mut c).await;
        if added.is_err() {
            // The connection may be dead (Redis restarted): open a new one
            // next time rather than fail on this one forever.
            self.conn = None;
        }
        added
    }
}

impl Source for RedisStream {
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

    /// The group's `lag` (entries not yet delivered to it) plus its
    /// `pending` (delivered, not yet acknowledged), from `XINFO GROUPS`.
    /// `None` when Redis cannot tell the lag (entries deleted from the
    /// middle of the stream) or the group does not exist yet.
    async fn backlog(&mut self) -> Result<Option<u64>, SourceError> {
        let stream = self.cfg.stream.clone();
        let looked: RedisResult<redis::streams::StreamInfoGroupsReply> = async {
            let mut c = self.conn().await?;
            redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&stream)
                .query_async(&mut c)
                .await
        }
        .await;
        let groups = looked.map_err(|e| self.error("measuring", e))?;
        Ok(groups
            .groups
            .iter()
            .find(|g| g.name == self.cfg.group)
            .and_then(|g| g.lag.map(|lag| (lag + g.pending) as u64)))
    }
}

impl Outbox for RedisStream {
    /// One entry per letter: the [`Letter`]'s fields, `None`s left out.
    async fn dead_letter(
        &mut self,
        target: &DeadLetterTarget,
        letter: &Letter,
    ) -> Result<(), SourceError> {
        let DeadLetterTarget::RedisStream(dead) = target else {
            return Err(SourceError::new(
                format!("dead-lettering from stream {}", self.cfg.stream),
                self.cfg.url.shown(),
                format!("a Redis stream source cannot publish to {target:?}"),
            ));
        };
        let attempts = letter.attempts.to_string();
        let mut fields: Vec<(&str, &[u8])> = vec![
            ("job", letter.job.as_bytes()),
            ("message_id", letter.message_id.as_bytes()),
        ];
        if let Some(p) = &letter.payload {
            fields.push(("payload", p.as_bytes()));
        }
        fields.push(("reason", letter.reason.as_bytes()));
        fields.push(("attempts", attempts.as_bytes()));
        if let Some(e) = &letter.last_error {
            fields.push(("last_error", e.as_bytes()));
        }
        fields.push(("dead_at", letter.dead_at.as_bytes()));
        self.xadd(dead, &fields)
            .await
            .map_err(|e| self.error(&format!("dead-lettering to {dead} from"), e))
    }

    /// A new entry with `payload`: a stream cannot take `message_id` (ids
    /// are `<ms>-<seq>`, increasing), so the replay has a new id.
    async fn replay(&mut self, _message_id: &str, payload: &[u8]) -> Result<(), SourceError> {
        let stream = self.cfg.stream.clone();
        self.xadd(&stream, &[(PAYLOAD, payload)])
            .await
            .map_err(|e| self.error("replaying into", e))
    }
}

fn delivery(id: String, fields: Vec<(String, Vec<u8>)>, redelivered: bool) -> Delivery {
    let mut body = None;
    let mut headers = Vec::with_capacity(fields.len());
    for (name, value) in fields {
        if name == PAYLOAD && body.is_none() {
            body = Some(value);
        } else {
            headers.push((name, String::from_utf8_lossy(&value).into_owned()));
        }
    }
    let body = body.unwrap_or_else(|| {
        let object: serde_json::Map<String, serde_json::Value> = headers
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        serde_json::Value::Object(object).to_string().into_bytes()
    });
    Delivery {
        message_id: id.clone(),
        body,
        headers,
        redelivered,
        receipt: Receipt::RedisStream { id },
    }
}

// ----- replies ----------------------------------------------------------------
// Parsed by hand rather than with redis-rs's stream types: a pending entry
// deleted from the stream comes back as `[id, nil]`, which must be
// acknowledged, not fail the whole read. RESP2 and RESP3 shapes both.

/// A stream entry as read; `fields` is `None` for one deleted from the
/// stream while pending.
#[derive(Debug, PartialEq)]
struct Entry {
    id: String,
    fields: Option<Vec<(String, Vec<u8>)>>,
}

fn unexpected(what: &'static str, got: &Value) -> RedisError {
    (ErrorKind::UnexpectedReturnType, what, format!("{got:?}")).into()
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// The bytes of a string reply (nil as empty); anything else back as is.
fn bytes(v: Value) -> Result<Vec<u8>, Value> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::VerbatimString { text, .. } => Ok(text.into_bytes()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        Value::Nil => Ok(Vec::new()),
        other => Err(other),
    }
}

/// `XREADGROUP`'s reply for one stream: nil (timed out) or its entries.
fn parse_read(reply: Value) -> RedisResult<Vec<Entry>> {
    let streams: Vec<Value> = match reply {
        Value::Nil => return Ok(Vec::new()),
        // RESP2: [[name, entries], …]
        Value::Array(streams) => streams
            .into_iter()
            .map(|s| match s {
                Value::Array(mut pair) if pair.len() == 2 => Ok(pair.swap_remove(1)),
                other => Err(unexpected(
                    "XREADGROUP: stream is not [name, entries]",
                    &other,
                )),
            })
            .collect::<RedisResult<_>>()?,
        // RESP3: {name: entries, …}
        Value::Map(streams) => streams.into_iter().map(|(_, v)| v).collect(),
        other => return Err(unexpected("XREADGROUP: not a list of streams", &other)),
    };
    let mut out = Vec::new();
    for entries in streams {
        match entries {
            Value::Array(entries) => {
                for e in entries {
                    out.push(parse_entry(e)?);
                }
            }
            Value::Nil => {}
            other => return Err(unexpected("XREADGROUP: entries are not a list", &other)),
        }
    }
    Ok(out)
}

/// `[id, [field, value, …]]`, `[id, {field: value}]` or `[id, nil]`.
fn parse_entry(e: Value) -> RedisResult<Entry> {
    let Value::Array(mut parts) = e else {
        return Err(unexpected("stream entry is not [id, fields]", &e));
    };
    if parts.len() != 2 {
        return Err(unexpected(
            "stream entry is not [id, fields]",
            &Value::Array(parts),
        ));
    }
    let raw = parts.swap_remove(1);
    let id = text(&parts[0]).ok_or_else(|| unexpected("stream entry id", &parts[0]))?;
    let pairs: Vec<(Value, Value)> = match raw {
        Value::Nil => return Ok(Entry { id, fields: None }),
        Value::Array(flat) => {
            if flat.len() % 2 != 0 {
                return Err(unexpected(
                    "stream entry fields are not pairs",
                    &Value::Array(flat),
                ));
            }
            let mut it = flat.into_iter();
            let mut pairs = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((k, v));
            }
            pairs
        }
        Value::Map(pairs) => pairs,
        other => return Err(unexpected("stream entry fields", &other)),
    };
    let mut fields = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        let name = text(&k).ok_or_else(|| unexpected("stream field name", &k))?;
        let value = bytes(v).map_err(|v| unexpected("stream field value", &v))?;
        fields.push((name, value));
    }
    Ok(Entry {
        id,
        fields: Some(fields),
    })
}

/// `XAUTOCLAIM … JUSTID`: `[cursor, [id, …], [deleted id, …]]` (the third
/// since Redis 7).
fn parse_autoclaim(reply: Value) -> RedisResult<(String, Vec<String>, Vec<String>)> {
    let Value::Array(parts) = reply else {
        return Err(unexpected("XAUTOCLAIM: not [cursor, ids, deleted]", &reply));
    };
    let mut parts = parts.into_iter();
    let cursor = parts
        .next()
        .and_then(|c| text(&c))
        .ok_or_else(|| unexpected("XAUTOCLAIM: no cursor", &Value::Nil))?;
    let ids = |v: Option<Value>| -> RedisResult<Vec<String>> {
        match v {
            None | Some(Value::Nil) => Ok(Vec::new()),
            Some(Value::Array(items)) => Ok(items.iter().filter_map(text).collect()),
            Some(other) => Err(unexpected("XAUTOCLAIM: ids are not a list", &other)),
        }
    };
    let claimed = ids(parts.next())?;
    let deleted = ids(parts.next())?;
    Ok((cursor, claimed, deleted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn reads_entries_with_and_without_payload_and_deleted_ones() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("payload"), bulk("{}"), bulk("x-h"), bulk("v")]),
                ]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
                Value::Array(vec![
                    bulk("3-0"),
                    Value::Array(vec![bulk("a"), bulk("1"), bulk("b"), bulk("two")]),
                ]),
            ]),
        ])]);
        let entries = parse_read(reply).expect("parse");
        assert_eq!(entries.len(), 3);
        assert_eq!(
            entries[1],
            Entry {
                id: "2-0".into(),
                fields: None
            }
        );

        let mut it = entries.into_iter();
        let d = it
            .next()
            .and_then(|e| e.fields.map(|f| delivery(e.id, f, false)));
        let d = d.expect("first entry");
        assert_eq!(d.body, b"{}");
        assert_eq!(d.headers, vec![("x-h".to_string(), "v".to_string())]);
        assert_eq!(d.message_id, "1-0");

        let third = it.nth(1).expect("third entry");
        let d = delivery(third.id, third.fields.expect("fields"), true);
        assert_eq!(d.body, br#"{"a":"1","b":"two"}"#);
        assert!(d.redelivered);
    }

    #[test]
    fn a_timed_out_read_is_empty_and_garbage_is_an_error() {
        assert!(parse_read(Value::Nil).expect("nil").is_empty());
        assert!(parse_read(Value::Int(3)).is_err());
        assert!(parse_entry(Value::Array(vec![bulk("1-0")])).is_err());
    }

    #[test]
    fn autoclaim_replies_of_redis_6_and_7() {
        let seven = Value::Array(vec![
            bulk("0-0"),
            Value::Array(vec![bulk("1-0")]),
            Value::Array(vec![bulk("2-0")]),
        ]);
        assert_eq!(
            parse_autoclaim(seven).expect("7"),
            ("0-0".into(), vec!["1-0".into()], vec!["2-0".into()])
        );
        let six = Value::Array(vec![bulk("5-0"), Value::Array(vec![])]);
        assert_eq!(
            parse_autoclaim(six).expect("6"),
            ("5-0".into(), vec![], vec![])
        );
    }
}
