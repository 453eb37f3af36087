//! What apps see of a stored message. The store keeps OpenPGP ciphertext to the
//! node's key; apps get the message decrypted (exactly as it arrived at the
//! relay, with the headers the relay added), or, when the account asks for it
//! (`access.ciphertext_to_apps`), the stored PGP/MIME message for apps that
//! decrypt themselves.

use crate::keys::Keys;
use std::sync::Arc;

#[derive(Clone)]
pub struct MailView {
    keys: Arc<Keys>,
    ciphertext_to_apps: bool,
}

impl MailView {
    pub fn new(keys: Arc<Keys>, ciphertext_to_apps: bool) -> Self {
        MailView {
            keys,
            ciphertext_to_apps,
        }
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

    /// The message as apps get it. A stored message this node's key cannot
    /// decrypt (kept as it came) is handed over as stored.
    pub fn render(&self, stored: &[u8]) -> Vec<u8> {
        if self.ciphertext_to_apps || !omb_shared::mime::is_encrypted(stored) {
            return stored.to_vec();
        }
        match omb_shared::pgp::decrypt_message(&self.keys.openpgp, stored) {
            Ok(plain) => plain,
            Err(e) => {
                tracing::warn!(error = %e, "a stored message does not decrypt; handing it over as stored");
                stored.to_vec()
            }
        }
    }
}
