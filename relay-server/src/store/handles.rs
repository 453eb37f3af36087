//! Handles as signups see them: look-alike skeletons, creating an account only
//! when no look-alike exists, and the aliases switch's state (the switch,
//! `set_aliases`, is in `domains`).

use super::{now, Store, StoreError};
use crate::accounts::handle::{skeleton, Handle};
use sqlx::Row;

impl Store {
    /// Gives every account without a skeleton its skeleton (accounts made
    /// before migration 0004). Run when the store opens.
    pub(super) async fn fill_skeletons(&self) -> Result<(), StoreError> {
        let rows = sqlx::query("SELECT handle FROM accounts WHERE skeleton IS NULL")
            .fetch_all(&self.pool)
            .await?;
        for row in rows {
            let handle: String = row.try_get(0)?;
            sqlx::query("UPDATE accounts SET skeleton = $1 WHERE handle = $2")
                .bind(skeleton(&handle))
                .bind(&handle)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// An existing handle that looks like `handle` (same skeleton), if any.
    pub async fn look_alike(&self, handle: &Handle) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT handle FROM accounts WHERE skeleton = $1 LIMIT 1")
            .bind(handle.skeleton())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Creates an account with its address `handle@domain`, unless the handle
    /// is taken ([`StoreError::AccountExists`]) or looks like one that is
    /// ([`StoreError::LookAlike`]). `allow_look_alike` is for the operator.
    ///
    /// The look-alike check and the insert are one transaction; on PostgreSQL
    /// (read committed) two look-alike signups racing in the same instant
    /// could both pass, which the per-IP limit and proof of work make rare.
    pub async fn create_account_checked(
        &self,
        handle: &Handle,
        domain: &str,
        quota_bytes: i64,
        allow_look_alike: bool,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // The insert comes first: on SQLite a transaction that read before
        // writing fails at once ("database is locked") when another signup
        // wrote meanwhile; one that starts by writing waits for the lock, and
        // then holds it through the look-alike check.
        let inserted = sqlx::query(
            "INSERT INTO accounts (handle, quota_bytes, created_at, skeleton) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (handle) DO NOTHING",
        )
        .bind(handle.as_str())
        .bind(quota_bytes)
        .bind(now())
        .bind(handle.skeleton())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(StoreError::AccountExists(handle.to_string()));
        }
        if !allow_look_alike {
            let similar = sqlx::query(
                "SELECT handle FROM accounts WHERE skeleton = $1 AND handle <> $2 LIMIT 1",
            )
            .bind(handle.skeleton())
            .bind(handle.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = similar {
                return Err(StoreError::LookAlike {
                    handle: handle.to_string(),
                    existing: row.try_get(0)?,
                });
            }
        }
        sqlx::query("INSERT INTO addresses (address, handle) VALUES ($1, $2)")
            .bind(format!("{handle}@{domain}").to_lowercase())
            .bind(handle.as_str())
            .execute(&mut *tx)
            .await?;
        super::dns::bump_zone_version(&mut tx, handle.as_str()).await?;
        tx.commit().await?;
        self.dns_changed(handle.as_str());
        Ok(())
    }

    /// Whether `ANYTHING@HANDLE.DOMAIN` delivers to the account; `None` when
    /// there is no such account.
    pub async fn aliases(&self, handle: &str) -> Result<Option<bool>, StoreError> {
        let row = sqlx::query("SELECT aliases FROM accounts WHERE handle = $1")
            .bind(handle)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|r| r.try_get::<i64, _>(0))
            .transpose()?
            .map(|v| v != 0))
    }

    /// Whether `domain` is a custom domain whose records are verified (so the
    /// relay serves its MTA-STS policy).
    pub async fn domain_verified(&self, domain: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM domains WHERE domain = $1 AND state = 'verified'")
            .bind(domain.to_ascii_lowercase())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }
}
