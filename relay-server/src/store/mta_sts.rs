//! MTA-STS policies of recipient domains, cached until they expire
//! (migration 0008).

use super::{Store, StoreError};
use sqlx::Row;

/// A policy as fetched and kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPolicy {
    pub policy_id: String,
    pub policy: String,
    pub fetched_at: i64,
    pub expires_at: i64,
}

impl Store {
    /// The kept policy of `domain` (lowercase), expired or not.
    pub async fn mta_sts_policy(&self, domain: &str) -> Result<Option<StoredPolicy>, StoreError> {
        let row = sqlx::query("SELECT policy_id, policy, fetched_at, expires_at FROM mta_sts_policies WHERE domain = $1")
            .bind(domain)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(StoredPolicy {
                policy_id: r.try_get(0)?,
                policy: r.try_get(1)?,
                fetched_at: r.try_get(2)?,
                expires_at: r.try_get(3)?,
            })
        })
        .transpose()
    }

    /// Keeps a newly fetched policy of `domain`, replacing the one before.
    pub async fn mta_sts_save(&self, domain: &str, p: &StoredPolicy) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO mta_sts_policies (domain, policy_id, policy, fetched_at, expires_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (domain) DO UPDATE SET policy_id = excluded.policy_id, policy = excluded.policy, fetched_at = excluded.fetched_at, expires_at = excluded.expires_at")
            .bind(domain)
            .bind(&p.policy_id)
            .bind(&p.policy)
            .bind(p.fetched_at)
            .bind(p.expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
