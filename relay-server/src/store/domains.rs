//! Users' own domains, per-account API tokens, and the routing of a recipient
//! address to an account (own addresses, `ANYTHING@HANDLE.DOMAIN` aliases,
//! custom domains, and `postmaster@`/`abuse@` to the operator).

use super::{now, recipient_from, token_hash, Recipient, Store, StoreError};
use sqlx::any::AnyRow;
use sqlx::Row;

/// Where a custom domain stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainState {
    /// Added; its records have not been seen yet. Mail is refused.
    Pending,
    /// Its required records are in place: mail is accepted.
    Verified,
    /// It was verified, then its records disappeared: mail is refused until
    /// they are back. Nothing is deleted.
    Suspended,
}

impl DomainState {
    fn as_str(self) -> &'static str {
        match self {
            DomainState::Pending => "pending",
            DomainState::Verified => "verified",
            DomainState::Suspended => "suspended",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "verified" => DomainState::Verified,
            "suspended" => DomainState::Suspended,
            _ => DomainState::Pending,
        }
    }
}

/// A custom domain as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    /// Lower case, without a trailing dot.
    pub domain: String,
    pub handle: String,
    /// The value the user publishes as `omb-verify=TOKEN`.
    pub verify_token: String,
    pub state: DomainState,
    pub created_at: i64,
    pub verified_at: Option<i64>,
    pub checked_at: Option<i64>,
    /// The last check, as JSON.
    pub report: Option<String>,
}

/// The columns [`domain_from`] reads.
const DOMAIN_COLUMNS: &str =
    "domain, handle, verify_token, state, created_at, verified_at, checked_at, report";

/// The joins that turn an account handle (column `c.handle`) into a [`Recipient`].
const RECIPIENT_FROM: &str =
    "SELECT c.handle, n.openpgp_cert, c.quota_bytes, COALESCE(b.bytes, 0) FROM accounts c \
     LEFT JOIN nodes n ON n.handle = c.handle \
     LEFT JOIN spool_bytes b ON b.handle = c.handle";

/// Local parts that reach the relay's operator at every hosted domain
/// (RFC 5321 §4.5.1 for postmaster, RFC 2142 §2 for abuse).
pub const OPERATOR_LOCAL_PARTS: [&str; 2] = ["postmaster", "abuse"];

impl Store {
    /// Adds `domain` to an account, pending verification, with a fresh
    /// verification token. Refused if any account has it already.
    pub async fn add_domain(&self, handle: &str, domain: &str) -> Result<Domain, StoreError> {
        let domain = domain.trim_end_matches('.').to_lowercase();
        if let Some(existing) = self.domain(&domain).await? {
            return Err(StoreError::DomainTaken(existing.domain));
        }
        if !self.account_exists(handle).await? {
            return Err(StoreError::NoAccount(handle.to_string()));
        }
        let token = hex::encode(rand::random::<[u8; 16]>());
        sqlx::query(
            "INSERT INTO domains (domain, handle, verify_token, state, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&domain)
        .bind(handle)
        .bind(&token)
        .bind(DomainState::Pending.as_str())
        .bind(now())
        .execute(&self.pool)
        .await
        .map_err(|e| match e {
            // Two racing adds: the primary key makes one lose.
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                StoreError::DomainTaken(domain.clone())
            }
            other => StoreError::Db(other),
        })?;
        self.domain(&domain)
            .await?
            .ok_or_else(|| StoreError::NoDomain(domain))
    }

    /// One domain, whatever its account.
    pub async fn domain(&self, domain: &str) -> Result<Option<Domain>, StoreError> {
        let sql = format!("SELECT {DOMAIN_COLUMNS} FROM domains WHERE domain = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(domain.trim_end_matches('.').to_lowercase())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(domain_from).transpose()
    }

    /// The domains of an account, or of every account with `None`.
    pub async fn domains(&self, handle: Option<&str>) -> Result<Vec<Domain>, StoreError> {
        let rows = match handle {
            Some(handle) => {
                let sql = format!(
                    "SELECT {DOMAIN_COLUMNS} FROM domains WHERE handle = $1 ORDER BY domain"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(handle)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                let sql = format!("SELECT {DOMAIN_COLUMNS} FROM domains ORDER BY domain");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(domain_from).collect()
    }

    /// Records the outcome of a check: the new state and the report.
    pub async fn set_domain_checked(
        &self,
        domain: &str,
        state: DomainState,
        report: &str,
    ) -> Result<(), StoreError> {
        let at = now();
        let owner = sqlx::query(
            "UPDATE domains SET state = $1, report = $2, checked_at = $3, \
             verified_at = CASE WHEN $4 = 1 THEN COALESCE(verified_at, $3) ELSE verified_at END \
             WHERE domain = $5 RETURNING handle",
        )
        .bind(state.as_str())
        .bind(report)
        .bind(at)
        .bind(i64::from(state == DomainState::Verified))
        .bind(domain)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = owner {
            self.account_changed(&row.try_get::<String, _>(0)?);
        }
        Ok(())
    }

    /// A receiver of the handles whose senders (addresses, verified domains,
    /// aliases) may have changed, sent after each commit of this process.
    pub fn account_changes(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.account_changes.subscribe()
    }

    fn account_changed(&self, handle: &str) {
        let _ = self.account_changes.send(handle.to_string());
    }

    /// What `handle` may send as: its addresses, and the domains any address of
    /// which is its own — its verified custom domains, and `HANDLE.RELAY_DOMAIN`
    /// while aliases are on. The same addresses [`Store::route`] gives it.
    pub async fn senders(
        &self,
        handle: &str,
        relay_domain: &str,
    ) -> Result<(Vec<String>, Vec<String>), StoreError> {
        let addresses = self.addresses(handle).await?;
        let mut domains: Vec<String> = self
            .domains(Some(handle))
            .await?
            .into_iter()
            .filter(|d| d.state == DomainState::Verified)
            .map(|d| d.domain)
            .collect();
        if self.aliases(handle).await? == Some(true) {
            domains.push(format!("{handle}.{relay_domain}").to_lowercase());
        }
        Ok((addresses, domains))
    }

    /// Removes a domain at once: from the next RCPT on, its mail is refused.
    pub async fn remove_domain(&self, handle: &str, domain: &str) -> Result<bool, StoreError> {
        let gone = sqlx::query("DELETE FROM domains WHERE domain = $1 AND handle = $2")
            .bind(domain.trim_end_matches('.').to_lowercase())
            .bind(handle)
            .execute(&self.pool)
            .await?;
        self.account_changed(handle);
        Ok(gone.rows_affected() == 1)
    }

    /// Turns `ANYTHING@HANDLE.DOMAIN` on or off for an account.
    pub async fn set_aliases(&self, handle: &str, on: bool) -> Result<(), StoreError> {
        let changed = sqlx::query("UPDATE accounts SET aliases = $1 WHERE handle = $2")
            .bind(i64::from(on))
            .bind(handle)
            .execute(&self.pool)
            .await?;
        if changed.rows_affected() == 0 {
            return Err(StoreError::NoAccount(handle.to_string()));
        }
        self.account_changed(handle);
        Ok(())
    }

    /// Issues a new API token for an account (for the domain API). Only its
    /// hash is stored.
    pub async fn create_api_token(&self, handle: &str) -> Result<String, StoreError> {
        if !self.account_exists(handle).await? {
            return Err(StoreError::NoAccount(handle.to_string()));
        }
        let token = format!("omb-api-{}", hex::encode(rand::random::<[u8; 24]>()));
        sqlx::query("INSERT INTO api_tokens (token_hash, handle, created_at) VALUES ($1, $2, $3)")
            .bind(token_hash(&token))
            .bind(handle)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(token)
    }

    /// The account an API token belongs to.
    pub async fn api_token_account(&self, token: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT handle FROM api_tokens WHERE token_hash = $1")
            .bind(token_hash(token))
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// The account that receives mail for `address` (any case), in this order:
    /// an address of its own; `postmaster@`/`abuse@` of any hosted domain, to
    /// the `operator` account; `ANYTHING@HANDLE.RELAY_DOMAIN` when the account
    /// allows aliases; `ANYTHING@DOMAIN` of a verified custom domain.
    pub async fn route(
        &self,
        address: &str,
        relay_domain: &str,
        operator: Option<&str>,
    ) -> Result<Option<Recipient>, StoreError> {
        if let Some(found) = self.recipient(address).await? {
            return Ok(Some(found));
        }
        let address = address.to_lowercase();
        let Some((local, domain)) = address.rsplit_once('@') else {
            return Ok(None);
        };
        let relay_domain = relay_domain.trim_end_matches('.').to_lowercase();
        let handle = domain
            .strip_suffix(relay_domain.as_str())
            .and_then(|rest| rest.strip_suffix('.'))
            .filter(|h| !h.is_empty() && !h.contains('.'));
        if OPERATOR_LOCAL_PARTS.contains(&local) {
            let hosted = domain == relay_domain
                || match handle {
                    Some(h) => self.account_exists(h).await?,
                    None => self.verified_domain(domain).await?.is_some(),
                };
            return match (hosted, operator) {
                (true, Some(op)) => self.account_recipient(op).await,
                _ => Ok(None),
            };
        }
        if let Some(handle) = handle {
            let sql = format!("{RECIPIENT_FROM} WHERE c.handle = $1 AND c.aliases = 1");
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(handle)
                .fetch_optional(&self.pool)
                .await?;
            return row.as_ref().map(recipient_from).transpose();
        }
        self.verified_domain(domain).await
    }

    /// The account of a verified custom domain.
    async fn verified_domain(&self, domain: &str) -> Result<Option<Recipient>, StoreError> {
        let sql = format!(
            "{RECIPIENT_FROM} JOIN domains d ON d.handle = c.handle WHERE d.domain = $1 AND d.state = 'verified'"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(domain)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(recipient_from).transpose()
    }
}

fn domain_from(row: &AnyRow) -> Result<Domain, StoreError> {
    Ok(Domain {
        domain: row.try_get(0)?,
        handle: row.try_get(1)?,
        verify_token: row.try_get(2)?,
        state: DomainState::parse(&row.try_get::<String, _>(3)?),
        created_at: row.try_get(4)?,
        verified_at: row.try_get(5)?,
        checked_at: row.try_get(6)?,
        report: row.try_get(7)?,
    })
}
