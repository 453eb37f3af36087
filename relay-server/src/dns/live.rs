//! The zone the server answers from: [`ZoneData`] in memory, kept in step with
//! the database, so that a new account or key is served at once, without a
//! reload.
//!
//! Changes reach it three ways: the store's change feed (this process's own
//! writes, applied within milliseconds); the zone version in the database,
//! polled every [`POLL`] (writes of the operator CLI or of another relay
//! instance on the same PostgreSQL); and a full reconcile every [`RECONCILE`],
//! which repairs anything a race between the two could have missed.

use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use hickory_proto::op::Query;
use hickory_proto::rr::Name;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{interval, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::zone::{ZoneConfig, ZoneData, ZoneError};
use super::{Answer, ZoneSource};
use crate::store::{AccountDns, Store, StoreError};

/// How often the database's zone version is read.
const POLL: Duration = Duration::from_secs(1);
/// How often the whole zone is compared with the database.
const RECONCILE: Duration = Duration::from_secs(300);

/// The relay's zone, shared by the DNS server and the task that follows the
/// database.
#[derive(Debug)]
pub struct RelayZone {
    origin: Name,
    data: RwLock<ZoneData>,
}

impl RelayZone {
    /// The zone with its fixed names only; [`RelayZone::load`] adds the accounts.
    pub fn new(config: &ZoneConfig) -> Result<Self, ZoneError> {
        let data = ZoneData::new(config)?;
        Ok(Self {
            origin: data.origin().clone(),
            data: RwLock::new(data),
        })
    }

    /// The zone as it is now, for readers that need more than one question
    /// (zone transfers, signing). Hold the guard briefly: writers wait for it.
    pub fn read(&self) -> RwLockReadGuard<'_, ZoneData> {
        // A panic while writing leaves data that is still a valid zone.
        self.data
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ZoneData> {
        self.data
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The SOA serial now.
    pub fn serial(&self) -> u32 {
        self.read().serial()
    }

    /// Makes the zone match the database: every account's names as stored, and
    /// none of accounts that are gone.
    pub async fn load(&self, store: &Store) -> Result<(), StoreError> {
        let accounts = store.dns_accounts().await?;
        let mut data = self.write();
        let stale: Vec<String> = {
            let live: std::collections::HashSet<&str> =
                accounts.iter().map(|a| a.handle.as_str()).collect();
            data.handles()
                .filter(|h| !live.contains(h))
                .map(str::to_string)
                .collect()
        };
        for handle in stale {
            data.remove_account(&handle);
        }
        for account in &accounts {
            data.set_account(account);
        }
        Ok(())
    }

    /// Puts (or replaces) one account's names.
    pub fn set_account(&self, account: &AccountDns) {
        self.write().set_account(account);
    }

    /// Takes one account's names out.
    pub fn remove_account(&self, handle: &str) {
        self.write().remove_account(handle);
    }

    /// Re-reads one account from the store.
    async fn refresh(&self, store: &Store, handle: &str) -> Result<(), StoreError> {
        match store.dns_account(handle).await? {
            Some(account) => self.set_account(&account),
            None => self.remove_account(handle),
        }
        Ok(())
    }

    /// Follows the database until the task is dropped (see the module comment).
    pub async fn follow(self: Arc<Self>, store: Store) {
        let mut changes = store.dns_changes();
        let mut seen = store.zone_version().await.unwrap_or_default();
        if let Err(error) = self.load(&store).await {
            warn!(%error, "dns: could not load the accounts into the zone");
        }
        let mut poll = interval(POLL);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut reconcile = interval(RECONCILE);
        reconcile.set_missed_tick_behavior(MissedTickBehavior::Delay);
        reconcile.tick().await;
        loop {
            let result = tokio::select! {
                change = changes.recv() => match change {
                    Ok(handle) => {
                        let refreshed = self.refresh(&store, &handle).await;
                        // This process's own change moved the version: not news.
                        if let Ok(version) = store.zone_version().await {
                            seen = seen.max(version);
                        }
                        debug!(%handle, serial = self.serial(), "dns: account changed");
                        refreshed
                    }
                    Err(RecvError::Lagged(missed)) => {
                        info!(missed, "dns: many changes at once; reloading the zone");
                        self.load(&store).await
                    }
                    Err(RecvError::Closed) => return,
                },
                _ = poll.tick() => match store.zone_version().await {
                    Ok(version) if version != seen => {
                        seen = version;
                        self.load(&store).await
                    }
                    Ok(_) => Ok(()),
                    Err(error) => Err(error),
                },
                _ = reconcile.tick() => self.load(&store).await,
            };
            if let Err(error) = result {
                warn!(%error, "dns: could not bring the zone up to date; retrying");
            }
        }
    }
}

impl ZoneSource for RelayZone {
    fn answer(&self, query: &Query) -> Answer {
        self.read().answer(query)
    }

    fn origin(&self) -> &Name {
        &self.origin
    }
}
