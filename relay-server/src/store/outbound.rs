//! The outbound queue's SQL: submitted messages and the recipients each still
//! has to reach (migration 0007).

use super::{Store, StoreError};
use omb_shared::types::QueueId;
use sqlx::Row;

/// A message to queue.
#[derive(Debug, Clone)]
pub struct NewOutbound {
    pub handle: String,
    pub submission_id: String,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub data: Vec<u8>,
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
}

/// Seconds since the epoch at the start of the current UTC day.
fn today(now: i64) -> i64 {
    now - now.rem_euclid(86_400)
}

impl Store {
    /// Queues a message durably (one transaction) and counts it towards the
    /// account's day. A submission id the account used already is not queued
    /// again: its queue id is returned.
    pub async fn outbound_insert(&self, m: &NewOutbound) -> Result<String, StoreError> {
        let now = super::now();
        let mut tx = self.pool.begin().await?;
        // The write comes first: a SQLite transaction that read before writing
        // fails at once ("database is locked") when another connection wrote
        // meanwhile, whatever the busy timeout; one that starts by writing waits.
        let id = QueueId::generate().to_string();
        let inserted = sqlx::query("INSERT INTO outbound (id, handle, submission_id, mail_from, data, created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (handle, submission_id) DO NOTHING")
            .bind(&id)
            .bind(&m.handle)
            .bind(&m.submission_id)
            .bind(&m.mail_from)
            .bind(&m.data)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if inserted == 0 {
            let existing =
                sqlx::query("SELECT id FROM outbound WHERE handle = $1 AND submission_id = $2")
                    .bind(&m.handle)
                    .bind(&m.submission_id)
                    .fetch_one(&mut *tx)
                    .await?;
            return Ok(existing.try_get(0)?);
        }
        let mut seen = std::collections::HashSet::new();
        for rcpt in &m.rcpt_to {
            let lower = rcpt.to_lowercase();
            if !seen.insert(lower.clone()) {
                continue;
            }
            let domain = lower.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
            sqlx::query("INSERT INTO outbound_rcpts (id, rcpt, domain, attempts, next_at, last_error) VALUES ($1, $2, $3, 0, $4, NULL)")
                .bind(&id)
                .bind(rcpt)
                .bind(domain)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("INSERT INTO outbound_counts (handle, day, messages) VALUES ($1, $2, 1) ON CONFLICT (handle, day) DO UPDATE SET messages = outbound_counts.messages + 1")
            .bind(&m.handle)
            .bind(today(now))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(id)
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

    /// When the account was created (seconds since the epoch).
    pub async fn account_created_at(&self, handle: &str) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT created_at FROM accounts WHERE handle = $1")
            .bind(handle)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Claims up to `limit` recipients due now: each is pushed `lease` seconds
    /// ahead, so no other worker (or relay instance) takes it meanwhile.
    pub async fn outbound_claim(&self, limit: i64, lease: i64) -> Result<Vec<DueRcpt>, StoreError> {
        let now = super::now();
        let rows = sqlx::query("SELECT r.id, r.rcpt, r.domain, r.attempts, o.handle, o.mail_from, o.created_at, r.next_at FROM outbound_rcpts r JOIN outbound o ON o.id = r.id WHERE r.next_at <= $1 ORDER BY r.next_at LIMIT $2")
            .bind(now)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        if rows.is_empty() {
            return Ok(out);
        }
        // One transaction for the whole batch: one commit (one fsync) instead of
        // one per recipient.
        let mut tx = self.pool.begin().await?;
        for row in rows {
            let due = DueRcpt {
                id: row.try_get(0)?,
                rcpt: row.try_get(1)?,
                domain: row.try_get(2)?,
                attempts: row.try_get(3)?,
                handle: row.try_get(4)?,
                mail_from: row.try_get(5)?,
                created_at: row.try_get(6)?,
            };
            let next_at: i64 = row.try_get(7)?;
            let claimed = sqlx::query("UPDATE outbound_rcpts SET next_at = $1 WHERE id = $2 AND rcpt = $3 AND next_at = $4")
                .bind(now + lease)
                .bind(&due.id)
                .bind(&due.rcpt)
                .bind(next_at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if claimed == 1 {
                out.push(due);
            }
        }
        tx.commit().await?;
        Ok(out)
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
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM outbound_rcpts WHERE id = $1 AND rcpt = $2")
            .bind(id)
            .bind(rcpt)
            .execute(&mut *tx)
            .await?;
        let left = sqlx::query("SELECT COUNT(*) FROM outbound_rcpts WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let left: i64 = left.try_get(0)?;
        if left == 0 {
            sqlx::query("DELETE FROM outbound WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
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
        sqlx::query("UPDATE outbound_rcpts SET attempts = attempts + 1, next_at = $1, last_error = $2 WHERE id = $3 AND rcpt = $4")
            .bind(next_at)
            .bind(error)
            .bind(id)
            .bind(rcpt)
            .execute(&self.pool)
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
