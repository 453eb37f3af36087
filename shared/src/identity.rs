//! The node's tunnel identity: an Ed25519 key pair. The node proves it holds the
//! key by signing the relay's challenge bound to the transport's channel binding,
//! so a signature can't be replayed on another connection.

use crate::types::NodeKey;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use std::path::Path;

/// Domain separation for tunnel authentication signatures.
const AUTH_CONTEXT: &[u8] = b"omb-tunnel-auth-v1\0";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read or write the tunnel identity at {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the tunnel identity file {0} is damaged (expected 64 hex digits)")]
    Damaged(String),
}

pub struct Identity {
    key: SigningKey,
}

impl Identity {
    pub fn generate() -> Self {
        Identity {
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// Loads the identity from `path`, creating it (mode 0600) on first start.
    pub fn load_or_create(path: &Path) -> Result<Self, IdentityError> {
        let io = |source| IdentityError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = hex::decode(text.trim())
                    .map_err(|_| IdentityError::Damaged(path.display().to_string()))?;
                let seed: [u8; 32] = bytes
                    .try_into()
                    .map_err(|_| IdentityError::Damaged(path.display().to_string()))?;
                Ok(Identity {
                    key: SigningKey::from_bytes(&seed),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = Identity::generate();
                crate::pgp::write_private_file(path, hex::encode(id.key.to_bytes()).as_bytes())
                    .map_err(io)?;
                Ok(id)
            }
            Err(e) => Err(io(e)),
        }
    }

    pub fn public(&self) -> NodeKey {
        NodeKey(self.key.verifying_key().to_bytes())
    }

    /// Signs a relay challenge for this connection.
    pub fn sign_challenge(&self, nonce: &[u8; 32], binding: &[u8]) -> Vec<u8> {
        self.key
            .sign(&challenge_message(&self.public(), nonce, binding))
            .to_bytes()
            .to_vec()
    }
}

fn challenge_message(key: &NodeKey, nonce: &[u8; 32], binding: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(AUTH_CONTEXT.len() + 32 + 32 + binding.len());
    m.extend_from_slice(AUTH_CONTEXT);
    m.extend_from_slice(&key.0);
    m.extend_from_slice(nonce);
    m.extend_from_slice(binding);
    m
}

/// Checks a node's answer to a challenge.
pub fn verify_challenge(key: &NodeKey, nonce: &[u8; 32], binding: &[u8], signature: &[u8]) -> bool {
    let Ok(vk) = VerifyingKey::from_bytes(&key.0) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(signature) else {
        return false;
    };
    vk.verify(&challenge_message(key, nonce, binding), &sig)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_to_nonce_and_channel() {
        let id = Identity::generate();
        let nonce = [7u8; 32];
        let sig = id.sign_challenge(&nonce, b"chan-a");
        assert!(verify_challenge(&id.public(), &nonce, b"chan-a", &sig));
        assert!(!verify_challenge(&id.public(), &nonce, b"chan-b", &sig));
        assert!(!verify_challenge(&id.public(), &[8u8; 32], b"chan-a", &sig));
        assert!(!verify_challenge(
            &Identity::generate().public(),
            &nonce,
            b"chan-a",
            &sig
        ));
        assert!(!verify_challenge(&id.public(), &nonce, b"chan-a", b"short"));
    }

    #[test]
    fn identity_persists() {
        let dir = std::env::temp_dir().join(format!("omb-id-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tunnel.key");
        let a = Identity::load_or_create(&path).unwrap();
        let b = Identity::load_or_create(&path).unwrap();
        assert_eq!(a.public(), b.public());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
