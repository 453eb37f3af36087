//! The outbound queue's SQL: submitted messages and the recipients each still
//! has to reach (migration 0007). Its writes go through the group-committing
//! writer (`writer`).

use super::writer::{WriteOp, Written};
use super::{value_rows, Store, StoreError, MAX_ROWS};
use omb_shared::types::QueueId;
use sqlx::{Any, Row, Transaction};

/// A message to queue.
#[derive(Debug, Clone)]
pub struct NewOutbound {
    pub handle: String,
    pub submission_id: String,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub data: Vec<u8>,
    /// Milliseconds this message moves the account's rate on (60 000 / the
    /// messages allowed a minute; 0 without a limit).
    pub rate_interval_ms: i64,
}

/// What an account has sent lately: its limits are judged from this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// When the account was made (seconds since the epoch).
    pub created_at: i64,
    /// Messages submitted this UTC day.
    pub today: i64,
    /// The rate's theoretical arrival time (see migration 0009).
    pub tat_ms: i64,
}

/// One recipient whose time has come, with its message's envelope.
#[derive(Debug, Clone)]
pub struct DueRcpt {
    pub id: String,
    pub rcpt: String,
    pub domain: String,
    pub attempts: i64,
    pub handle: String,
    pub mail_from: String,
    pub created_at: i64,
    /// The message, read with the claim when it is small (at most
    /// `CLAIM_DATA` bytes); else read when it is sent.
    pub data: Option<std::sync::Arc<Vec<u8>>>,
}

/// Messages up to this size are read with their claim, saving a query per
/// message; larger ones are read one at a time as they are sent.
const CLAIM_DATA: i64 = 64 * 1024;

/// Seconds since the epoch at the start of the current UTC day.
fn today(now: i64) -> i64 {
    now - now.rem_euclid(86_400)
}

impl Store {
    /// Queues a message durably and counts it towards the account's day. A
    /// submission id the account used already is not queued again: its queue
    /// id is returned.
    pub async fn outbound_insert(&self, m: &NewOutbound) -> Result<String, StoreError> {
        match self
            .write(WriteOp::OutboundInsert(Box::new(m.clone())))
            .await?
        {
            Written::Queued(id) => Ok(id),
            _ => Err(StoreError::Batch(
                "the writer did not queue the message".into(),
            )),
        }
    }

    /// Messages the account submitted today (UTC).
    pub async fn outbound_today(&self, handle: &str) -> Result<i64, StoreError> {
        let row =
            sqlx::query("SELECT messages FROM outbound_counts WHERE handle = $1 AND day = $2")
                .bind(handle)
                .bind(today(super::now()))
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?.unwrap_or(0))
    }

    /// When the account was created (seconds since the epoch) and how many
    /// messages it submitted today (UTC), in one query; `None` for no such
    /// account.
    pub async fn outbound_standing(&self, handle: &str) -> Result<Option<Standing>, StoreError> {
        let row = sqlx::query("SELECT a.created_at, COALESCE(c.messages, 0), COALESCE(c.tat_ms, 0) FROM accounts a LEFT JOIN outbound_counts c ON c.handle = a.handle AND c.day = $2 WHERE a.handle = $1")
            .bind(handle)
            .bind(today(super::now()))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(Standing {
                created_at: r.try_get(0)?,
                today: r.try_get(1)?,
                tat_ms: r.try_get(2)?,
            })
        })
        .transpose()
    }

    /// Claims up to `limit` recipients due now: each is pushed `lease` seconds
    /// ahead, so no other worker (or relay instance) takes it meanwhile.
    pub async fn outbound_claim(&self, limit: i64, lease: i64) -> Result<Vec<DueRcpt>, StoreError> {
        match self.write(WriteOp::OutboundClaim { limit, lease }).await? {
            Written::Claimed(due) => Ok(due),
            _ => Ok(Vec::new()),
        }
    }

    /// The message data of a queued message.
    pub async fn outbound_data(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row = sqlx::query("SELECT data FROM outbound WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// A recipient is done with (delivered, or failed for good with its DSN
    /// spooled); the message goes with its last recipient.
    pub async fn outbound_done(&self, id: &str, rcpt: &str) -> Result<(), StoreError> {
        self.outbound_done_many(vec![(id.to_string(), rcpt.to_string())])
            .await
    }

    /// [`Store::outbound_done`] for several `(queue id, recipient)` in one
    /// commit.
    pub async fn outbound_done_many(&self, done: Vec<(String, String)>) -> Result<(), StoreError> {
        if !done.is_empty() {
            self.write(WriteOp::OutboundDone(done)).await?;
        }
        Ok(())
    }

    /// Claimed recipients not tried in their pass: due again now, no attempt
    /// counted.
    pub async fn outbound_release(&self, rcpts: Vec<(String, String)>) -> Result<(), StoreError> {
        if !rcpts.is_empty() {
            self.write(WriteOp::OutboundRelease(rcpts)).await?;
        }
        Ok(())
    }

    /// A temporary failure: try again at `next_at`.
    pub async fn outbound_defer(
        &self,
        id: &str,
        rcpt: &str,
        next_at: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        self.write(WriteOp::OutboundDefer(
            id.to_string(),
            rcpt.to_string(),
            next_at,
            error.to_string(),
        ))
        .await?;
        Ok(())
    }

    /// Recipients waiting in the outbound queue (for tools and tests).
    pub async fn outbound_pending(
        &self,
    ) -> Result<Vec<(String, String, i64, Option<String>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, rcpt, attempts, last_error FROM outbound_rcpts ORDER BY id, rcpt",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            .collect()
    }
}

/// Queues the messages `ms` in the writer's transaction `tx` (see `writer`)
/// in a few statements for the lot, not three per message (each statement
/// is a round trip to SQLite's connection thread); returns their queue ids,
/// in order. A submission id an account used already (before, or earlier in
/// `ms`) is not queued again: its queue id is returned.
pub(super) async fn insert(
    tx: &mut Transaction<'_, Any>,
    ms: &[&NewOutbound],
    now: i64,
) -> Result<Vec<String>, sqlx::Error> {
    use std::collections::{BTreeMap, HashMap, HashSet};
    // The writes come first: on SQLite a transaction that read before writing
    // fails at once ("database is locked") when another connection wrote
    // meanwhile, whatever the busy timeout; one that starts by writing waits.
    let fresh: Vec<String> = ms.iter().map(|_| QueueId::generate().to_string()).collect();
    let mut inserted = HashSet::new();
    for (chunk, ids) in ms.chunks(MAX_ROWS).zip(fresh.chunks(MAX_ROWS)) {
        let sql = format!(
            "INSERT INTO outbound (id, handle, submission_id, mail_from, data, created_at) VALUES {} ON CONFLICT (handle, submission_id) DO NOTHING RETURNING id",
            value_rows(chunk.len(), 6, 1)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (m, id) in chunk.iter().zip(ids) {
            q = q
                .bind(id)
                .bind(&m.handle)
                .bind(&m.submission_id)
                .bind(&m.mail_from)
                .bind(&m.data)
                .bind(now);
        }
        for row in q.fetch_all(&mut **tx).await? {
            inserted.insert(row.try_get::<String, _>(0)?);
        }
    }
    // One row per recipient, whatever its letter case.
    let mut rcpts: Vec<(&str, &str, String)> = Vec::new();
    // Per account: messages, and how far they move its rate on.
    let mut per_handle: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for (m, id) in ms.iter().zip(&fresh) {
        if !inserted.contains(id) {
            continue;
        }
        let (messages, rate_ms) = per_handle.entry(&m.handle).or_default();
        *messages += 1;
        *rate_ms += m.rate_interval_ms;
        let mut seen = HashSet::new();
        for rcpt in &m.rcpt_to {
            let lower = rcpt.to_lowercase();
            let domain = lower
                .rsplit_once('@')
                .map(|(_, d)| d)
                .unwrap_or_default()
                .to_string();
            if seen.insert(lower) {
                rcpts.push((id, rcpt, domain));
            }
        }
    }
    for chunk in rcpts.chunks(MAX_ROWS) {
        let sql = format!(
            "INSERT INTO outbound_rcpts (id, rcpt, domain, attempts, next_at, last_error) VALUES {}",
            (0..chunk.len())
                .map(|r| format!("(${}, ${}, ${}, 0, ${}, NULL)", 4 * r + 1, 4 * r + 2, 4 * r + 3, 4 * r + 4))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (id, rcpt, domain) in chunk {
            q = q.bind(*id).bind(*rcpt).bind(domain).bind(now);
        }
        q.execute(&mut **tx).await?;
    }
    // The day's count and the rate (migration 0009), in one statement.
    let now_ms = super::now_ms();
    for (handle, (n, rate_ms)) in per_handle {
        sqlx::query("INSERT INTO outbound_counts (handle, day, messages, tat_ms) VALUES ($1, $2, $3, $4 + $5) ON CONFLICT (handle, day) DO UPDATE SET messages = outbound_counts.messages + excluded.messages, tat_ms = CASE WHEN outbound_counts.tat_ms > $4 THEN outbound_counts.tat_ms ELSE $4 END + $5")
            .bind(handle)
            .bind(today(now))
            .bind(n)
            .bind(now_ms)
            .bind(rate_ms)
            .execute(&mut **tx)
            .await?;
    }
    // Submissions seen before: the queue id they already have.
    let mut existing: HashMap<(&str, &str), String> = HashMap::new();
    let mut out = Vec::with_capacity(ms.len());
    for (m, id) in ms.iter().zip(fresh) {
        if inserted.contains(&id) {
            existing.insert((&m.handle, &m.submission_id), id.clone());
            out.push(id);
            continue;
        }
        let key = (m.handle.as_str(), m.submission_id.as_str());
        if let Some(id) = existing.get(&key) {
            out.push(id.clone());
            continue;
        }
        let row = sqlx::query("SELECT id FROM outbound WHERE handle = $1 AND submission_id = $2")
            .bind(&m.handle)
            .bind(&m.submission_id)
            .fetch_one(&mut **tx)
            .await?;
        let id: String = row.try_get(0)?;
        existing.insert(key, id.clone());
        out.push(id);
    }
    Ok(out)
}

/// Claims up to `limit` due recipients in the writer's transaction `tx`.
///
/// One UPDATE takes them (it writes first, for the reason in [`insert`]); a
/// row another relay instance claimed meanwhile no longer has `next_at <=
/// now` when PostgreSQL re-checks it, so it is skipped, never taken twice.
/// One SELECT then reads their messages' envelopes.
pub(super) async fn claim(
    tx: &mut Transaction<'_, Any>,
    limit: i64,
    lease: i64,
    now: i64,
) -> Result<Vec<DueRcpt>, sqlx::Error> {
    let until = now + lease;
    let rows = sqlx::query("UPDATE outbound_rcpts SET next_at = $1 WHERE next_at <= $2 AND (id, rcpt) IN (SELECT id, rcpt FROM outbound_rcpts WHERE next_at <= $2 ORDER BY next_at LIMIT $3) RETURNING id, rcpt, domain, attempts")
        .bind(until)
        .bind(now)
        .bind(limit)
        .fetch_all(&mut **tx)
        .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // The envelopes of every message with a recipient leased until `until`:
    // those just claimed, and perhaps some claimed in the same second by
    // another worker, which are left out below.
    let envelopes = sqlx::query("SELECT id, handle, mail_from, created_at, CASE WHEN length(data) <= $2 THEN data END FROM outbound WHERE id IN (SELECT id FROM outbound_rcpts WHERE next_at = $1)")
        .bind(until)
        .bind(CLAIM_DATA)
        .fetch_all(&mut **tx)
        .await?;
    let mut by_id = std::collections::HashMap::new();
    for e in &envelopes {
        let id: String = e.try_get(0)?;
        let data: Option<Vec<u8>> = e.try_get(4)?;
        by_id.insert(
            id,
            (
                e.try_get(1)?,
                e.try_get(2)?,
                e.try_get(3)?,
                data.map(std::sync::Arc::new),
            ),
        );
    }
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let id: String = row.try_get(0)?;
        let Some((handle, mail_from, created_at, data)) = by_id.get(&id).cloned() else {
            continue;
        };
        out.push(DueRcpt {
            id,
            rcpt: row.try_get(1)?,
            domain: row.try_get(2)?,
            attempts: row.try_get(3)?,
            handle,
            mail_from,
            created_at,
            data,
        });
    }
    out.sort_by_key(|d| d.created_at);
    Ok(out)
}

/// Removes recipients done with in the writer's transaction `tx`, and each
/// message whose last recipient that was.
pub(super) async fn done(
    tx: &mut Transaction<'_, Any>,
    done: &[(String, String)],
) -> Result<(), sqlx::Error> {
    // A few statements for the lot (row values: SQLite 3.15+, PostgreSQL).
    for chunk in done.chunks(MAX_ROWS) {
        let sql = format!(
            "DELETE FROM outbound_rcpts WHERE (id, rcpt) IN (VALUES {})",
            value_rows(chunk.len(), 2, 1)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (id, rcpt) in chunk {
            q = q.bind(id).bind(rcpt);
        }
        q.execute(&mut **tx).await?;
    }
    let ids: Vec<&String> = done
        .iter()
        .map(|(id, _)| id)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for chunk in ids.chunks(MAX_ROWS) {
        let list = (1..=chunk.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "DELETE FROM outbound WHERE id IN ({list}) AND NOT EXISTS (SELECT 1 FROM outbound_rcpts r WHERE r.id = outbound.id)"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in chunk {
            q = q.bind(*id);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Hands claimed recipients back to the queue, due at `now`, without
/// counting an attempt (a delivery pass that ran out of its lease).
pub(super) async fn release(
    tx: &mut Transaction<'_, Any>,
    rcpts: &[(String, String)],
    now: i64,
) -> Result<(), sqlx::Error> {
    for chunk in rcpts.chunks(MAX_ROWS) {
        let sql = format!(
            "UPDATE outbound_rcpts SET next_at = $1 WHERE (id, rcpt) IN (VALUES {})",
            value_rows(chunk.len(), 2, 2)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
        for (id, rcpt) in chunk {
            q = q.bind(id).bind(rcpt);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Records a temporary failure in the writer's transaction `tx`.
pub(super) async fn defer(
    tx: &mut Transaction<'_, Any>,
    id: &str,
    rcpt: &str,
    next_at: i64,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE outbound_rcpts SET attempts = attempts + 1, next_at = $1, last_error = $2 WHERE id = $3 AND rcpt = $4")
        .bind(next_at)
        .bind(error)
        .bind(id)
        .bind(rcpt)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
