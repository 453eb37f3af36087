//! What happens to a recipient and to a message once the SMTP dialogue is done:
//! trace headers (`Received`, `Authentication-Results`), encryption of the whole
//! message to the owner's certificate, and a durable spool write — in that order,
//! so plaintext never reaches the disk.

use super::session::{RcptVerdict, StoreVerdict, Transaction};
use crate::auth::Authenticator;
use crate::store::{Recipient, SpoolEntry, Store};
use crate::tunnel::Hub;
use omb_shared::types::{Address, QueueId};
use omb_shared::{mime, pgp};
use sequoia_openpgp::Cert;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tracing::{info, warn};

/// Messages up to this size (headers added) are encrypted on the session's
/// own task; larger ones on the blocking pool. An 8 KiB message takes about
/// 0.3 ms (one X25519, AES, the MDC's SHA-1, armour), less than what handing
/// it to a pool thread and back cost in thread wake-ups: in bench/inbound's
/// profile the scheduler's wake-up and switch paths were a third of the
/// sandbox's CPU.
const INLINE_ENCRYPT_MAX: usize = 64 * 1024;

/// A certificate's stored bytes and its parsed form.
type CachedCert = (Vec<u8>, Arc<Cert>);

/// What decides which account an address reaches, besides the addresses
/// table (see [`Store::route`]).
#[derive(Debug, Clone)]
pub struct Routing {
    /// The relay's domain: `ANYTHING@HANDLE.DOMAIN` reaches HANDLE when it
    /// allows aliases.
    pub relay_domain: String,
    /// The account that receives `postmaster@` and `abuse@` of every hosted
    /// domain; without one, those addresses are refused.
    pub operator: Option<String>,
}

pub struct Acceptor {
    pub store: Store,
    pub auth: Authenticator,
    pub hub: Arc<Hub>,
    pub hostname: String,
    /// How recipient addresses map to accounts.
    pub routing: Routing,
    /// Parsed certificates by account, checked against the stored bytes, so a
    /// certificate is parsed once, not for every message.
    certs: Mutex<HashMap<String, CachedCert>>,
}

impl Acceptor {
    pub fn new(
        store: Store,
        auth: Authenticator,
        hub: Arc<Hub>,
        hostname: String,
        routing: Routing,
    ) -> Self {
        Acceptor {
            store,
            auth,
            hub,
            hostname,
            routing,
            certs: Mutex::new(HashMap::new()),
        }
    }

    fn cert(&self, handle: &str, bytes: &[u8]) -> Result<Arc<Cert>, pgp::PgpError> {
        if let Ok(cache) = self.certs.lock() {
            if let Some((cached, cert)) = cache.get(handle) {
                if cached == bytes {
                    return Ok(cert.clone());
                }
            }
        }
        let cert = Arc::new(pgp::parse_cert(bytes)?);
        if let Ok(mut cache) = self.certs.lock() {
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(handle.to_string(), (bytes.to_vec(), cert.clone()));
        }
        Ok(cert)
    }

    /// RCPT TO: hosted, linked, and not over quota.
    pub async fn check_recipient(&self, address: &Address) -> RcptVerdict {
        self.check_recipient_keep(address).await.0
    }

    /// [`Acceptor::check_recipient`], with the account as it was read when it
    /// is accepted: the MX hands it to [`Acceptor::store_checked`] at the end
    /// of the same transaction instead of reading it again.
    pub async fn check_recipient_keep(
        &self,
        address: &Address,
    ) -> (RcptVerdict, Option<Recipient>) {
        let routed = self
            .store
            .route(
                &address.canonical(),
                &self.routing.relay_domain,
                self.routing.operator.as_deref(),
            )
            .await;
        match routed {
            Ok(None) => (RcptVerdict::Unknown, None),
            Ok(Some(r)) if r.cert.is_none() => (RcptVerdict::NotActive, None),
            Ok(Some(r)) if r.spooled_bytes >= r.quota_bytes => (RcptVerdict::OverQuota, None),
            Ok(Some(r)) => (RcptVerdict::Accept(r.handle.clone()), Some(r)),
            Err(e) => {
                warn!(error = %e, "recipient look-up failed");
                (RcptVerdict::TempFail, None)
            }
        }
    }

    /// End of DATA: returns only once every copy is durably spooled.
    pub async fn store(&self, tx: Transaction, remote_ip: IpAddr) -> StoreVerdict {
        self.store_checked(tx, remote_ip, &HashMap::new()).await
    }

    /// [`Acceptor::store`] with the accounts read at RCPT in this transaction
    /// (by handle; see [`Acceptor::check_recipient_keep`]): an account found
    /// there is not read again, which was a second database round trip per
    /// message. Its quota is checked against the spool as it was at RCPT, a
    /// moment before; an account missing there is read now.
    pub async fn store_checked(
        &self,
        tx: Transaction,
        remote_ip: IpAddr,
        checked: &HashMap<String, Recipient>,
    ) -> StoreVerdict {
        let results = self
            .auth
            .authentication_results(remote_ip, &tx.helo, &tx.mail_from, &tx.data)
            .await;
        let already_encrypted = mime::is_encrypted(&tx.data);
        let received_at = crate::store::now();

        // One copy per account, encrypted to that account's certificate.
        let mut by_handle: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in &tx.recipients {
            by_handle
                .entry(r.handle.clone())
                .or_default()
                .push(r.address.to_string());
        }
        let mut entries = Vec::with_capacity(by_handle.len());
        for (handle, rcpts) in by_handle {
            let id = QueueId::generate();
            let read;
            let recipient = match checked.get(&handle) {
                Some(r) => r,
                None => match self.store.account_recipient(&handle).await {
                    Ok(Some(r)) => {
                        read = r;
                        &read
                    }
                    Ok(None) => return StoreVerdict::TempFail,
                    Err(e) => {
                        warn!(error = %e, "recipient look-up failed at end of DATA");
                        return StoreVerdict::TempFail;
                    }
                },
            };
            if recipient.spooled_bytes + tx.data.len() as i64 > recipient.quota_bytes {
                return StoreVerdict::OverQuota;
            }
            let Some(cert_bytes) = recipient.cert.as_deref() else {
                return StoreVerdict::TempFail;
            };
            let for_clause = if rcpts.len() == 1 {
                format!("\r\n\tfor <{}>", rcpts[0])
            } else {
                String::new()
            };
            let received = format!(
                "Received: from {} ([{}])\r\n\tby {} (Own-Mailbox relay) with {} id {}{}; {}\r\n",
                sanitize(&tx.helo),
                remote_ip,
                self.hostname,
                tx.protocol,
                id,
                for_clause,
                chrono::Utc::now().to_rfc2822()
            );
            let mut full = Vec::with_capacity(tx.data.len() + results.len() + received.len());
            full.extend_from_slice(results.as_bytes());
            full.extend_from_slice(received.as_bytes());
            full.extend_from_slice(&tx.data);

            let plain_size = full.len() as i64;
            let data = if already_encrypted {
                full
            } else {
                let cert = match self.cert(&handle, cert_bytes) {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(%handle, error = %e, "the account's certificate does not parse");
                        return StoreVerdict::TempFail;
                    }
                };
                let encrypted = if full.len() <= INLINE_ENCRYPT_MAX {
                    Ok(pgp::encrypt_whole_message(&cert, &full))
                } else {
                    tokio::task::spawn_blocking(move || pgp::encrypt_whole_message(&cert, &full))
                        .await
                };
                match encrypted {
                    Ok(Ok(data)) => data,
                    Ok(Err(e)) => {
                        warn!(%handle, error = %e, "cannot encrypt to the account's certificate");
                        return StoreVerdict::TempFail;
                    }
                    Err(_) => return StoreVerdict::TempFail,
                }
            };
            entries.push(Arc::new(SpoolEntry {
                id,
                handle,
                mail_from: tx.mail_from.clone(),
                rcpt_to: rcpts,
                received_at,
                relay_encrypted: !already_encrypted,
                plain_size,
                data,
            }));
        }
        if let Err(e) = self.store.spool_insert_shared(&entries).await {
            warn!(error = %e, "spool write failed");
            return StoreVerdict::TempFail;
        }
        let first_id = entries.first().map(|e| e.id.to_string());
        for e in entries {
            info!(queue_id = %e.id, handle = %e.handle, size = e.data.len(), encrypted_here = e.relay_encrypted, "spooled");
            self.hub.offer(e);
        }
        match first_id {
            Some(id) => StoreVerdict::Stored(id),
            None => StoreVerdict::TempFail,
        }
    }
}

/// Keeps a client-given name from breaking the header it is put in.
fn sanitize(s: &str) -> String {
    let clean: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic() && !matches!(c, '(' | ')' | ';' | '\\'))
        .take(255)
        .collect();
    if clean.is_empty() {
        "unknown".to_string()
    } else {
        clean
    }
}
