//! What the relay's DNS zone publishes for each account, and the feed of
//! changes that lets the zone serve a new account or key at once.

use super::{now, Store, StoreError};
use sqlx::Row;
use std::collections::BTreeMap;

/// The DNS-relevant state of one account: its names exist in the zone from the
/// moment the account does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountDns {
    /// The account's handle (lower case): `HANDLE.DOMAIN` exists.
    pub handle: String,
    /// The addresses delivered to the account (lower case), for OPENPGPKEY.
    pub addresses: Vec<String>,
    /// The linked node's OpenPGP certificate (binary), if a node is linked.
    pub cert: Option<Vec<u8>>,
    /// The node's DKIM key records (`v=DKIM1; k=…; p=…`).
    pub dkim: Vec<String>,
    /// The `_acme-challenge` TXT values the node has set.
    pub acme: Vec<String>,
}

/// A kind of record the relay publishes on a node's behalf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// The node's DKIM public key record, at `HANDLE._domainkey.DOMAIN`.
    Dkim,
    /// A DNS-01 challenge value, at `_acme-challenge.HANDLE.DOMAIN` (RFC 8555 §8.4).
    Acme,
}

impl RecordKind {
    fn as_str(self) -> &'static str {
        match self {
            RecordKind::Dkim => "dkim",
            RecordKind::Acme => "acme",
        }
    }
}

impl Store {
    /// A receiver of the handles whose DNS data changed, sent after each commit
    /// of this process. (Other relay instances sharing a PostgreSQL database are
    /// seen by the zone's periodic reload.)
    pub fn dns_changes(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.dns_changes.subscribe()
    }

    /// The zone version: it grows with every committed change to DNS data,
    /// made by any process sharing this database.
    pub async fn zone_version(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT version FROM zone_version WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?.unwrap_or(0))
    }

    /// Tells the zone that `handle`'s DNS data changed (after the commit).
    pub(crate) fn dns_changed(&self, handle: &str) {
        // No receiver (no DNS server in this process) is fine.
        let _ = self.dns_changes.send(handle.to_string());
    }

    /// The DNS data of one account, or `None` if there is no such account.
    pub async fn dns_account(&self, handle: &str) -> Result<Option<AccountDns>, StoreError> {
        let exists = sqlx::query("SELECT 1 FROM accounts WHERE handle = $1")
            .bind(handle)
            .fetch_optional(&self.pool)
            .await?;
        if exists.is_none() {
            return Ok(None);
        }
        let mut all = self.dns_rows(Some(handle)).await?;
        Ok(all.remove(handle).or_else(|| {
            Some(AccountDns {
                handle: handle.to_string(),
                ..AccountDns::default()
            })
        }))
    }

    /// The DNS data of every account, in handle order.
    pub async fn dns_accounts(&self) -> Result<Vec<AccountDns>, StoreError> {
        Ok(self.dns_rows(None).await?.into_values().collect())
    }

    /// Three queries (accounts with their node, addresses, published records),
    /// for one account or all of them.
    async fn dns_rows(
        &self,
        handle: Option<&str>,
    ) -> Result<BTreeMap<String, AccountDns>, StoreError> {
        let filter = |column: &str| match handle {
            Some(_) => format!(" WHERE {column} = $1"),
            None => String::new(),
        };
        let bind = |sql: String| {
            let query = sqlx::query(sqlx::AssertSqlSafe(sql));
            match handle {
                Some(h) => query.bind(h.to_string()),
                None => query,
            }
        };
        let mut out = BTreeMap::new();
        let sql = format!(
            "SELECT c.handle, n.openpgp_cert FROM accounts c LEFT JOIN nodes n ON n.handle = c.handle{}",
            filter("c.handle")
        );
        for row in bind(sql).fetch_all(&self.pool).await? {
            let handle: String = row.try_get(0)?;
            out.insert(
                handle.clone(),
                AccountDns {
                    handle,
                    cert: row.try_get(1)?,
                    ..AccountDns::default()
                },
            );
        }
        let sql = format!(
            "SELECT handle, address FROM addresses{} ORDER BY address",
            filter("handle")
        );
        for row in bind(sql).fetch_all(&self.pool).await? {
            let handle: String = row.try_get(0)?;
            if let Some(account) = out.get_mut(&handle) {
                account.addresses.push(row.try_get(1)?);
            }
        }
        let sql = format!(
            "SELECT handle, kind, value FROM account_records{} ORDER BY value",
            filter("handle")
        );
        for row in bind(sql).fetch_all(&self.pool).await? {
            let handle: String = row.try_get(0)?;
            let kind: String = row.try_get(1)?;
            let Some(account) = out.get_mut(&handle) else {
                continue;
            };
            match kind.as_str() {
                "dkim" => account.dkim.push(row.try_get(2)?),
                "acme" => account.acme.push(row.try_get(2)?),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Replaces the account's records of `kind` with `values` (an empty list
    /// removes them), and tells the zone.
    pub async fn set_account_records(
        &self,
        handle: &str,
        kind: RecordKind,
        values: &[String],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM account_records WHERE handle = $1 AND kind = $2")
            .bind(handle)
            .bind(kind.as_str())
            .execute(&mut *tx)
            .await?;
        for value in values {
            sqlx::query(
                "INSERT INTO account_records (handle, kind, value, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (handle, kind, value) DO NOTHING",
            )
            .bind(handle)
            .bind(kind.as_str())
            .bind(value)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        }
        bump_zone_version(&mut tx).await?;
        tx.commit().await?;
        self.dns_changed(handle);
        Ok(())
    }
}

/// Counts a change to DNS data, inside the transaction that makes it.
pub(crate) async fn bump_zone_version(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE zone_version SET version = version + 1 WHERE id = 1")
        .execute(&mut **tx)
        .await?;
    Ok(())
}
