//! What apps see of a stored message. The store keeps OpenPGP ciphertext to the
//! node's key; apps get the message decrypted (exactly as it arrived at the
//! relay, with the headers the relay added), or, when the account asks for it
//! (`access.ciphertext_to_apps`), the stored PGP/MIME message for apps that
//! decrypt themselves.

use crate::keys::Keys;
use omb_shared::pgp::MessageKey;
use std::sync::Arc;

#[derive(Clone)]
pub struct MailView {
    keys: Arc<Keys>,
    ciphertext_to_apps: bool,
    /// OpenPGP work runs on a few threads of its own, one per core: more only
    /// adds threads and memory (each thread's allocator arena), not speed.
    crypto: Arc<CryptoPool>,
}

impl MailView {
    pub fn new(keys: Arc<Keys>, ciphertext_to_apps: bool) -> Self {
        MailView {
            keys,
            ciphertext_to_apps,
            crypto: Arc::new(CryptoPool::new()),
        }
    }

    /// Runs OpenPGP work (render, seal) on the crypto threads; None if they
    /// are gone or the job panicked.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.crypto.jobs.lock().ok()?.send(job).ok()?;
        rx.await.ok()
    }

    /// True when apps get the ciphertext.
    pub fn ciphertext_to_apps(&self) -> bool {
        self.ciphertext_to_apps
    }

    /// A message an app hands in (APPEND), encrypted to the node's key for
    /// the store like every delivery (RFC 3156 PGP/MIME, headers included).
    pub fn seal(&self, message: &[u8]) -> Result<Vec<u8>, omb_shared::pgp::PgpError> {
        omb_shared::pgp::encrypt_whole_message(&self.keys.openpgp, message)
    }

    /// Like [`MailView::seal`], also giving the message's session key for
    /// the metadata cache: its first reading then skips the public-key
    /// step, as for any message read before.
    ///
    /// The message comes back as the store keeps it, packed
    /// (`store::packed`): the OpenPGP message is made in binary and never
    /// armoured here.
    pub fn seal_keyed(
        &self,
        message: &[u8],
    ) -> Result<(Vec<u8>, MessageKey), omb_shared::pgp::PgpError> {
        let (parts, key) =
            omb_shared::pgp::encrypt_whole_message_parts(&self.keys.openpgp, message)?;
        let packed = crate::store::packed::from_parts(&parts.head, &parts.binary, &parts.tail)
            .ok_or_else(|| std::io::Error::other("the message is too large to store"))?;
        Ok((packed, key))
    }

    /// The message as apps get it. A stored message this node's key cannot
    /// decrypt (kept as it came) is handed over as stored.
    pub fn render(&self, stored: &[u8]) -> Vec<u8> {
        self.render_with(stored, None).0
    }

    /// Like [`MailView::render`], with the message's session key when it was
    /// kept from an earlier reading (the public-key step is then skipped), and
    /// giving the key back for next time.
    ///
    /// `stored` is a row of the store, packed or not (`store::packed`).
    pub fn render_with(
        &self,
        stored: &[u8],
        known: Option<&MessageKey>,
    ) -> (Vec<u8>, Option<MessageKey>) {
        use crate::store::packed;
        let keys = &self.keys.openpgp;
        let done = match packed::split(stored) {
            _ if self.ciphertext_to_apps => return (packed::unpack(stored).into_owned(), None),
            // Kept binary: no armour to take off.
            packed::Stored::Packed { binary, .. } => {
                omb_shared::pgp::decrypt_bytes_with(keys, binary, known)
            }
            packed::Stored::AsIs(m) if !omb_shared::mime::is_encrypted(m) => {
                return (m.to_vec(), None)
            }
            // The armour taken off here is far cheaper than by sequoia's reader.
            packed::Stored::AsIs(m) => match super::armor::dearmor(m) {
                Some(binary) => omb_shared::pgp::decrypt_bytes_with(keys, &binary, known),
                None => omb_shared::pgp::decrypt_message_with(keys, m, known),
            },
        };
        match done {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(error = %e, "a stored message does not decrypt; handing it over as stored");
                (packed::unpack(stored).into_owned(), None)
            }
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads for CPU-bound OpenPGP work.
struct CryptoPool {
    jobs: std::sync::Mutex<std::sync::mpsc::Sender<Job>>,
}

impl CryptoPool {
    fn new() -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("omb-crypto-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    match job {
                        // A panicking job only loses its own answer.
                        Ok(job) => {
                            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                        }
                        Err(_) => return,
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a crypto thread");
            }
        }
        CryptoPool {
            jobs: std::sync::Mutex::new(tx),
        }
    }
}
