//! Accounts, their addresses, link tokens and linked nodes.

use super::{now, recipient_from, token_hash, LinkRefusal, Recipient, Store, StoreError};
use omb_shared::types::NodeKey;
use sqlx::Row;

/// An account to import (from another relay, or a benchmark), with its
/// linked node when it has one.
#[derive(Debug, Clone)]
pub struct ImportedAccount {
    pub handle: String,
    pub node: Option<ImportedNode>,
}

/// A linked node of an [`ImportedAccount`].
#[derive(Debug, Clone)]
pub struct ImportedNode {
    pub node_key: NodeKey,
    pub cert: Vec<u8>,
    pub fingerprint: String,
}

impl Store {
    /// Creates many accounts in one transaction (addresses `handle@domain`,
    /// and their nodes), skipping handles that exist; returns how many were
    /// created. The DNS zone sees them by the zone version, within a second.
    pub async fn import_accounts(
        &self,
        domain: &str,
        quota_bytes: i64,
        accounts: &[ImportedAccount],
    ) -> Result<usize, StoreError> {
        let mut tx = self.pool.begin().await?;
        let at = now();
        let version = super::dns::next_zone_version(&mut tx).await?;
        let mut created = 0;
        for account in accounts {
            let inserted = sqlx::query(
                "INSERT INTO accounts (handle, quota_bytes, created_at, skeleton, dns_version) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (handle) DO NOTHING",
            )
            .bind(&account.handle)
            .bind(quota_bytes)
            .bind(at)
            .bind(crate::accounts::handle::skeleton(&account.handle))
            .bind(version)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() != 1 {
                continue;
            }
            created += 1;
            sqlx::query("INSERT INTO addresses (address, handle) VALUES ($1, $2)")
                .bind(format!("{}@{domain}", account.handle).to_lowercase())
                .bind(&account.handle)
                .execute(&mut *tx)
                .await?;
            if let Some(node) = &account.node {
                sqlx::query("INSERT INTO nodes (node_key, handle, openpgp_cert, fingerprint, linked_at) VALUES ($1, $2, $3, $4, $5)")
                    .bind(node.node_key.to_hex())
                    .bind(&account.handle)
                    .bind(node.cert.clone())
                    .bind(&node.fingerprint)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(created)
    }

    /// Creates an account with its primary address `handle@domain`, without
    /// the handle rules (see `create_account_checked` for those).
    pub async fn create_account(
        &self,
        handle: &str,
        domain: &str,
        quota_bytes: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // Written first, so that on SQLite it waits for the lock (see
        // `create_account_checked`).
        let inserted = sqlx::query(
            "INSERT INTO accounts (handle, quota_bytes, created_at, skeleton) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (handle) DO NOTHING",
        )
        .bind(handle)
        .bind(quota_bytes)
        .bind(now())
        .bind(crate::accounts::handle::skeleton(handle))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(StoreError::AccountExists(handle.to_string()));
        }
        sqlx::query("INSERT INTO addresses (address, handle) VALUES ($1, $2)")
            .bind(format!("{handle}@{domain}").to_lowercase())
            .bind(handle)
            .execute(&mut *tx)
            .await?;
        super::dns::bump_zone_version(&mut tx, handle).await?;
        tx.commit().await?;
        self.dns_changed(handle);
        Ok(())
    }

    /// Issues a new one-time link token for an account. Only its hash is stored.
    pub async fn create_link_token(&self, handle: &str) -> Result<String, StoreError> {
        let exists = sqlx::query("SELECT handle FROM accounts WHERE handle = $1")
            .bind(handle)
            .fetch_optional(&self.pool)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NoAccount(handle.to_string()));
        }
        let token = format!("omb-link-{}", hex::encode(rand::random::<[u8; 20]>()));
        sqlx::query("INSERT INTO link_tokens (token_hash, handle, created_at) VALUES ($1, $2, $3)")
            .bind(token_hash(&token))
            .bind(handle)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(token)
    }

    /// Spends a link token: binds `node_key` and its certificate to the token's
    /// account, replacing any node linked before. Refused when the token is
    /// unknown or used, or when the key already belongs to another account.
    pub async fn link_node(
        &self,
        token: &str,
        node_key: &NodeKey,
        cert: &[u8],
        fingerprint: &str,
    ) -> Result<Result<String, LinkRefusal>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Marking the token used first makes two racing links see one winner.
        let spent = sqlx::query(
            "UPDATE link_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL",
        )
        .bind(now())
        .bind(token_hash(token))
        .execute(&mut *tx)
        .await?;
        if spent.rows_affected() != 1 {
            return Ok(Err(LinkRefusal::BadToken));
        }
        let handle: String = sqlx::query("SELECT handle FROM link_tokens WHERE token_hash = $1")
            .bind(token_hash(token))
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        let owner = sqlx::query("SELECT handle FROM nodes WHERE node_key = $1")
            .bind(node_key.to_hex())
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = owner {
            let owner: String = row.try_get(0)?;
            if owner != handle {
                return Ok(Err(LinkRefusal::KeyTaken));
            }
        }
        sqlx::query("DELETE FROM nodes WHERE handle = $1")
            .bind(&handle)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO nodes (node_key, handle, openpgp_cert, fingerprint, linked_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(node_key.to_hex())
            .bind(&handle)
            .bind(cert.to_vec())
            .bind(fingerprint)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        super::dns::bump_zone_version(&mut tx, &handle).await?;
        tx.commit().await?;
        self.dns_changed(&handle);
        Ok(Ok(handle))
    }

    /// The account a node key is linked to.
    pub async fn node_account(&self, node_key: &NodeKey) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT handle FROM nodes WHERE node_key = $1")
            .bind(node_key.to_hex())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Whether an account with this handle exists.
    pub async fn account_exists(&self, handle: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM accounts WHERE handle = $1")
            .bind(handle)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    pub async fn addresses(&self, handle: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT address FROM addresses WHERE handle = $1 ORDER BY address")
            .bind(handle)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(StoreError::from))
            .collect()
    }

    /// Looks up a recipient address (any case), with its account's spool use.
    pub async fn recipient(&self, address: &str) -> Result<Option<Recipient>, StoreError> {
        let row = sqlx::query(
            "SELECT a.handle, n.openpgp_cert, c.quota_bytes, COALESCE(b.bytes, 0) FROM addresses a \
             JOIN accounts c ON c.handle = a.handle \
             LEFT JOIN nodes n ON n.handle = a.handle \
             LEFT JOIN spool_bytes b ON b.handle = a.handle WHERE a.address = $1",
        )
        .bind(address.to_lowercase())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(recipient_from).transpose()
    }

    /// The same for an account, by handle: one query for what the end of DATA
    /// needs (certificate, quota, spool use).
    pub async fn account_recipient(&self, handle: &str) -> Result<Option<Recipient>, StoreError> {
        let row = sqlx::query(
            "SELECT c.handle, n.openpgp_cert, c.quota_bytes, COALESCE(b.bytes, 0) FROM accounts c \
             LEFT JOIN nodes n ON n.handle = c.handle \
             LEFT JOIN spool_bytes b ON b.handle = c.handle WHERE c.handle = $1",
        )
        .bind(handle)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(recipient_from).transpose()
    }
}
