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
    /// The zone version of the account's last DNS change: a zone never
    /// replaces newer data with an older snapshot.
    pub version: i64,
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

/// Which accounts [`Store::dns_rows`] reads.
#[derive(Debug, Clone, Copy)]
enum Filter<'a> {
    All,
    Handle(&'a str),
    Since(i64),
}

enum Bind {
    Text(String),
    Int(i64),
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
        let mut all = self.dns_rows(Filter::Handle(handle)).await?;
        Ok(all.remove(handle))
    }

    /// The DNS data of every account, in handle order.
    pub async fn dns_accounts(&self) -> Result<Vec<AccountDns>, StoreError> {
        Ok(self.dns_rows(Filter::All).await?.into_values().collect())
    }

    /// Every account's handle and the zone version of its last DNS change: what
    /// a zone compares to find what it missed, without reading everything.
    pub async fn dns_versions(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT handle, dns_version FROM accounts")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// The DNS data of the accounts changed after zone version `version`.
    pub async fn dns_accounts_since(&self, version: i64) -> Result<Vec<AccountDns>, StoreError> {
        Ok(self
            .dns_rows(Filter::Since(version))
            .await?
            .into_values()
            .collect())
    }

    /// Three queries (accounts with their node, addresses, published records)
    /// for the accounts `filter` selects.
    async fn dns_rows(
        &self,
        filter: Filter<'_>,
    ) -> Result<BTreeMap<String, AccountDns>, StoreError> {
        let (condition, bind): (&str, Option<Bind>) = match filter {
            Filter::All => ("", None),
            Filter::Handle(h) => (" WHERE c.handle = $1", Some(Bind::Text(h.to_string()))),
            Filter::Since(v) => (" WHERE c.dns_version > $1", Some(Bind::Int(v))),
        };
        let run = |sql: String| {
            let query = sqlx::query(sqlx::AssertSqlSafe(sql));
            match &bind {
                Some(Bind::Text(t)) => query.bind(t.clone()),
                Some(Bind::Int(i)) => query.bind(*i),
                None => query,
            }
        };
        let mut out = BTreeMap::new();
        let sql = format!(
            "SELECT c.handle, c.dns_version, n.openpgp_cert FROM accounts c LEFT JOIN nodes n ON n.handle = c.handle{condition}"
        );
        for row in run(sql).fetch_all(&self.pool).await? {
            let handle: String = row.try_get(0)?;
            out.insert(
                handle.clone(),
                AccountDns {
                    handle,
                    version: row.try_get(1)?,
                    cert: row.try_get(2)?,
                    ..AccountDns::default()
                },
            );
        }
        let sql = format!(
            "SELECT a.handle, a.address FROM addresses a JOIN accounts c ON c.handle = a.handle{condition} ORDER BY a.address"
        );
        for row in run(sql).fetch_all(&self.pool).await? {
            let handle: String = row.try_get(0)?;
            if let Some(account) = out.get_mut(&handle) {
                account.addresses.push(row.try_get(1)?);
            }
        }
        let sql = format!(
            "SELECT r.handle, r.kind, r.value FROM account_records r JOIN accounts c ON c.handle = r.handle{condition} ORDER BY r.value"
        );
        for row in run(sql).fetch_all(&self.pool).await? {
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
        bump_zone_version(&mut tx, handle).await?;
        tx.commit().await?;
        self.dns_changed(handle);
        Ok(())
    }
}

/// Counts a change to DNS data, inside the transaction that makes it, and
/// marks `handle` as changed by it.
pub(crate) async fn bump_zone_version(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    handle: &str,
) -> Result<i64, StoreError> {
    let version = next_zone_version(tx).await?;
    sqlx::query("UPDATE accounts SET dns_version = $1 WHERE handle = $2")
        .bind(version)
        .bind(handle)
        .execute(&mut **tx)
        .await?;
    Ok(version)
}

/// A new zone version, for a transaction that marks its accounts itself.
pub(crate) async fn next_zone_version(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
) -> Result<i64, StoreError> {
    let row =
        sqlx::query("UPDATE zone_version SET version = version + 1 WHERE id = 1 RETURNING version")
            .fetch_one(&mut **tx)
            .await?;
    Ok(row.try_get(0)?)
}
