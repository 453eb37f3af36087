//! The zone the server answers from: [`ZoneData`] in memory, kept in step with
//! the database, so that a new account or key is served at once, without a
//! reload.
//!
//! Changes reach it three ways: the store's change feed (this process's own
//! writes, applied within milliseconds); every [`POLL`], the accounts whose
//! `dns_version` is above the highest seen (writes of the operator CLI or of
//! another relay instance on the same PostgreSQL: one indexed query); and a
//! full comparison every [`RECONCILE`] on a task of its own, which also drops
//! accounts that are gone. Every account's data carries the zone version of
//! its last change, so whichever way data arrives, older never replaces newer.

use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use hickory_proto::op::Query;
use hickory_proto::rr::{Name, Record, RecordType};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;
use tokio::time::{interval, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::dnssec::{Signer, ZoneKey};
use super::nsec;
use super::zone::{ZoneConfig, ZoneData, ZoneError};
use super::{Answer, ZoneSource};
use crate::store::{AccountDns, Store, StoreError};

/// How often the database's zone version is read.
const POLL: Duration = Duration::from_secs(1);
/// How often the whole zone is compared with the database.
const RECONCILE: Duration = Duration::from_secs(300);
/// Accounts written per hold of the write lock.
const WRITE_BATCH: usize = 256;
/// How often a signed zone's serial moves without a change, so that secondaries
/// transfer it again and never serve signatures near their expiry (RFC 6781 §4.4.2).
const RESIGN: Duration = Duration::from_secs(24 * 3600);

/// The relay's zone, shared by the DNS server and the task that follows the
/// database.
#[derive(Debug)]
pub struct RelayZone {
    origin: Name,
    data: RwLock<ZoneData>,
    /// Present when the zone is signed.
    signer: Option<Arc<Signer>>,
    /// The serial, for the tasks that tell secondaries about changes.
    serial: watch::Sender<u32>,
}

impl RelayZone {
    /// The zone with its fixed names only; [`RelayZone::load`] adds the accounts.
    pub fn new(config: &ZoneConfig) -> Result<Self, ZoneError> {
        let data = ZoneData::new(config)?;
        Ok(Self {
            origin: data.origin().clone(),
            serial: watch::Sender::new(data.serial()),
            data: RwLock::new(data),
            signer: None,
        })
    }

    /// Signs the zone with `key`: publishes its DNSKEY at the apex and answers queries
    /// with the DO bit with signatures and NSEC proofs (RFC 4035 §3.1).
    pub fn signed(mut self, key: ZoneKey) -> Self {
        let dnskey = key.dnskey_record(&self.origin, 3600);
        self.write().set_dnskey(dnskey);
        self.signer = Some(Arc::new(Signer::new(key, self.origin.clone())));
        self
    }

    /// The signing key, when the zone is signed.
    pub fn key(&self) -> Option<&ZoneKey> {
        self.signer.as_deref().map(Signer::key)
    }

    /// Follows the serial: the receiver sees every change (for NOTIFY).
    pub fn watch_serial(&self) -> watch::Receiver<u32> {
        self.serial.subscribe()
    }

    /// The zone as it is now, for readers that need more than one question
    /// (zone transfers, signing). Hold the guard briefly: writers wait for it.
    pub fn read(&self) -> RwLockReadGuard<'_, ZoneData> {
        // A panic while writing leaves data that is still a valid zone.
        self.data
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> SerialGuard<'_> {
        SerialGuard {
            data: self
                .data
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            serial: &self.serial,
        }
    }

    /// Moves the serial with no other change (see [`RESIGN`]).
    pub fn touch(&self) {
        self.write().touch();
    }

    /// The SOA serial now.
    pub fn serial(&self) -> u32 {
        self.read().serial()
    }

    /// Makes the zone match the database: every account's names as stored, and
    /// none of accounts that are gone. Records are computed under the read lock
    /// (queries go on); only changed accounts are written, a few hundred per
    /// write lock, so answers never wait long. Returns the highest account
    /// version seen.
    pub async fn load(&self, store: &Store) -> Result<i64, StoreError> {
        let accounts = store.dns_accounts().await?;
        let newest = self.apply(&accounts);
        let live: std::collections::HashSet<&str> =
            accounts.iter().map(|a| a.handle.as_str()).collect();
        let stale: Vec<String> = self
            .read()
            .handles()
            .filter(|h| !live.contains(h))
            .map(str::to_string)
            .collect();
        for chunk in stale.chunks(WRITE_BATCH) {
            let mut data = self.write();
            for handle in chunk {
                data.remove_account(handle);
            }
        }
        Ok(newest)
    }

    /// Applies account data (newer than what the zone has) in batches; returns
    /// the highest version among `accounts`.
    fn apply(&self, accounts: &[AccountDns]) -> i64 {
        let changed: Vec<(&str, i64, Vec<Record>)> = {
            let data = self.read();
            accounts
                .iter()
                .filter_map(|a| {
                    let records = data.account_records(a);
                    data.account_differs(&a.handle, a.version, &records)
                        .then_some((a.handle.as_str(), a.version, records))
                })
                .collect()
        };
        let mut changed = changed.into_iter().peekable();
        while changed.peek().is_some() {
            let mut data = self.write();
            for (handle, version, records) in changed.by_ref().take(WRITE_BATCH) {
                data.apply_account(handle, version, records);
            }
        }
        accounts.iter().map(|a| a.version).max().unwrap_or_default()
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

    /// Finds what the zone missed by comparing each account's version with
    /// the database's (one small row per account), then reads only those.
    pub async fn reconcile(&self, store: &Store) -> Result<(), StoreError> {
        let versions = store.dns_versions().await?;
        let (outdated, stale) = {
            let data = self.read();
            let outdated: Vec<&str> = versions
                .iter()
                .filter(|(h, v)| data.account_version(h).is_none_or(|have| have < *v))
                .map(|(h, _)| h.as_str())
                .collect();
            let live: std::collections::HashSet<&str> =
                versions.iter().map(|(h, _)| h.as_str()).collect();
            let stale: Vec<String> = data
                .handles()
                .filter(|h| !live.contains(h))
                .map(str::to_string)
                .collect();
            (outdated, stale)
        };
        for handle in outdated {
            self.refresh(store, handle).await?;
        }
        for handle in stale {
            self.remove_account(&handle);
        }
        Ok(())
    }

    /// Follows the database until the task is dropped (see the module
    /// comment), from a zone [`RelayZone::load`]ed up to version `seen`.
    pub async fn follow(self: Arc<Self>, store: Store, mut seen: i64) {
        let mut changes = store.dns_changes();
        // Changes between the load and this subscription have higher versions:
        // the first poll finds them.
        // The full comparison runs on its own task: at 100,000 accounts it
        // reads for a second or more, and changes must not wait for it.
        let reconciler = tokio::spawn(reconcile(self.clone(), store.clone()));
        let _stop_reconciler = AbortOnDrop(reconciler);
        let mut poll = interval(POLL);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut resign = interval(RESIGN);
        resign.set_missed_tick_behavior(MissedTickBehavior::Delay);
        resign.tick().await;
        loop {
            let result = tokio::select! {
                change = changes.recv() => match change {
                    Ok(handle) => {
                        let refreshed = self.refresh(&store, &handle).await;
                        debug!(%handle, serial = self.serial(), "dns: account changed");
                        refreshed
                    }
                    // The poll below catches up with whatever was missed.
                    Err(RecvError::Lagged(missed)) => {
                        info!(missed, "dns: many changes at once; catching up from the database");
                        Ok(())
                    }
                    Err(RecvError::Closed) => return,
                },
                _ = poll.tick() => match store.dns_accounts_since(seen).await {
                    Ok(accounts) => {
                        seen = seen.max(self.apply(&accounts));
                        Ok(())
                    }
                    Err(error) => Err(error),
                },
                _ = resign.tick(), if self.signer.is_some() => {
                    self.touch();
                    Ok(())
                }
            };
            if let Err(error) = result {
                warn!(%error, "dns: could not bring the zone up to date; retrying");
            }
        }
    }
}

/// Every [`RECONCILE`], compares the whole zone with the database.
async fn reconcile(zone: Arc<RelayZone>, store: Store) {
    let mut tick = interval(RECONCILE);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(error) = zone.reconcile(&store).await {
            warn!(%error, "dns: could not compare the zone with the database");
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct SerialGuard<'a> {
    data: std::sync::RwLockWriteGuard<'a, ZoneData>,
    serial: &'a watch::Sender<u32>,
}

impl std::ops::Deref for SerialGuard<'_> {
    type Target = ZoneData;
    fn deref(&self) -> &ZoneData {
        &self.data
    }
}

impl std::ops::DerefMut for SerialGuard<'_> {
    fn deref_mut(&mut self) -> &mut ZoneData {
        &mut self.data
    }
}

impl Drop for SerialGuard<'_> {
    fn drop(&mut self) {
        let serial = self.data.serial();
        self.serial.send_if_modified(|seen| {
            let changed = *seen != serial;
            *seen = serial;
            changed
        });
    }
}

impl ZoneSource for RelayZone {
    fn answer(&self, query: &Query, dnssec_ok: bool) -> Answer {
        let Some(signer) = self.signer.as_deref().filter(|_| dnssec_ok) else {
            return self.read().answer(query);
        };
        // Collect under the lock, sign after it (a signature costs tens of µs).
        let answer = {
            let data = self.read();
            match data.answer(query) {
                Answer::NoData(_) => Answer::NoData(nsec::nodata(&data, &lower(query))),
                Answer::NxDomain(_) => Answer::NxDomain(nsec::nxdomain(&data, &lower(query))),
                other => other,
            }
        };
        match answer {
            Answer::Records(records) => Answer::Records(signer.with_signatures(records)),
            Answer::NoData(proof) => Answer::NoData(signer.with_signatures(proof)),
            Answer::NxDomain(proof) => Answer::NxDomain(signer.with_signatures(proof)),
            Answer::Refused => Answer::Refused,
        }
    }

    fn origin(&self) -> &Name {
        &self.origin
    }

    fn transfer(&self) -> Option<Box<dyn Iterator<Item = Record> + Send>> {
        // A snapshot of the records under the lock, one group per name with its NSEC;
        // signatures are made (or taken from the cache) as the transfer goes.
        let (soa, names) = {
            let data = self.read();
            let soa: Vec<Record> = data
                .records()
                .filter(|r| r.record_type() == RecordType::SOA)
                .cloned()
                .collect();
            let mut names: Vec<Vec<Record>> = Vec::new();
            for record in data.records() {
                match names.last_mut() {
                    Some(group) if group.first().is_some_and(|f| f.name == record.name) => {
                        group.push(record.clone());
                    }
                    _ => names.push(vec![record.clone()]),
                }
            }
            if self.signer.is_some() {
                for group in &mut names {
                    group.sort_by_key(|r| u16::from(r.record_type()));
                    let nsec = group.first().and_then(|f| nsec::nsec_at(&data, &f.name));
                    group.extend(nsec);
                }
            }
            (soa, names)
        };
        let signer = self.signer.clone();
        let body = names.into_iter().flat_map(move |group| {
            let group = match &signer {
                Some(signer) => signer.with_signatures(group),
                None => group,
            };
            // The SOA opens and closes the transfer (RFC 5936 §2.2); its RRSIG stays.
            group
                .into_iter()
                .filter(|r| r.record_type() != RecordType::SOA)
        });
        Some(Box::new(soa.clone().into_iter().chain(body).chain(soa)))
    }
}

fn lower(query: &Query) -> Name {
    let mut name = query.name().to_lowercase();
    name.set_fqdn(true);
    name
}
