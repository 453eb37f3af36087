//! Logging in. A node serves one account; its password is kept only as an
//! Argon2id hash (PHC string) in `DATA_DIR/password.argon2`, read at each
//! attempt so `omb-node password set` takes effect at once. Failed attempts are
//! slowed down and, past a limit, refused per client address for a while.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures from one address within this window count towards the limit.
const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Failures from one address within `WINDOW` after which it is refused.
const MAX_FAILURES: usize = 8;
/// Every failure is answered this late, so guessing is slow even in parallel.
const FAILURE_DELAY: Duration = Duration::from_millis(300);

const FILE: &str = "password.argon2";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoginError {
    #[error("wrong user name or password")]
    Failed,
    #[error("too many failed logins from this address; try again later")]
    Throttled,
    #[error("no password is set on this node (run `omb-node password set`)")]
    NoPassword,
}

pub struct Login {
    address: String,
    local_part: String,
    hash_file: PathBuf,
    failures: Mutex<HashMap<IpAddr, Vec<Instant>>>,
    /// The last password that passed Argon2, as a keyed digest, with the hash
    /// it matched: mail apps log in again and again (a connection per folder,
    /// per check), and each Argon2 check costs 19 MiB and tens of milliseconds.
    verified: Mutex<Option<Verified>>,
    /// The key of those digests, made at start and never stored.
    digest_key: [u8; 32],
}

struct Verified {
    hash: String,
    digest: [u8; 32],
}

impl Login {
    /// The login of the account `address`, whose hash lives in `data_dir`.
    pub fn new(data_dir: &Path, address: &str) -> Self {
        let address = address.to_lowercase();
        let local_part = address
            .rsplit_once('@')
            .map(|(l, _)| l.to_string())
            .unwrap_or_else(|| address.clone());
        Login {
            address,
            local_part,
            hash_file: data_dir.join(FILE),
            failures: Mutex::new(HashMap::new()),
            verified: Mutex::new(None),
            digest_key: rand::random(),
        }
    }

    /// The user name apps log in with: the whole address, or its local part.
    pub fn is_user(&self, user: &str) -> bool {
        let user = user.to_lowercase();
        user == self.address || user == self.local_part
    }

    /// The account's address (what a successful login is for).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Checks a user name and password from a client at `peer`.
    pub async fn check(&self, peer: IpAddr, user: &str, password: &str) -> Result<(), LoginError> {
        if self.throttled(peer) {
            tokio::time::sleep(FAILURE_DELAY).await;
            return Err(LoginError::Throttled);
        }
        let hash = match std::fs::read_to_string(&self.hash_file) {
            Ok(h) => h.trim().to_string(),
            Err(_) => return Err(LoginError::NoPassword),
        };
        let user_ok = self.is_user(user);
        let digest = self.digest(password);
        // Verify even for a wrong user name, so timing does not tell them apart.
        let password_ok = self.verified_before(&hash, &digest)
            || verify_on_login_thread(hash.clone(), password.to_string()).await;
        if password_ok {
            *self.verified.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(Verified { hash, digest });
        }
        if user_ok && password_ok {
            return Ok(());
        }
        self.record_failure(peer);
        tracing::warn!(%peer, "failed login");
        tokio::time::sleep(FAILURE_DELAY).await;
        Err(LoginError::Failed)
    }

    fn digest(&self, password: &str) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.digest_key);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// Whether this password (by digest) passed Argon2 against `hash` before:
    /// the hash file unchanged, the digest equal (compared in constant time).
    fn verified_before(&self, hash: &str, digest: &[u8; 32]) -> bool {
        let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        verified.as_ref().is_some_and(|v| {
            v.hash == hash
                && v.digest
                    .iter()
                    .zip(digest)
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        })
    }

    fn throttled(&self, peer: IpAddr) -> bool {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        failures.retain(|_, times| {
            times.retain(|t| now.duration_since(*t) < WINDOW);
            !times.is_empty()
        });
        failures.get(&peer).is_some_and(|t| t.len() >= MAX_FAILURES)
    }

    fn record_failure(&self, peer: IpAddr) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.entry(peer).or_default().push(Instant::now());
    }
}

type Check = (String, String, tokio::sync::oneshot::Sender<bool>);

/// Argon2id takes 19 MiB per check. On tokio's blocking pool every thread
/// that ever checked a password would keep that much (the allocator holds on
/// to it), so checks run one at a time on one thread of their own, and the
/// memory is given back after each (a password that passed is not checked
/// with Argon2 again, so checks are rare).
async fn verify_on_login_thread(hash: String, password: String) -> bool {
    static CHECKS: std::sync::OnceLock<Option<Mutex<std::sync::mpsc::Sender<Check>>>> =
        std::sync::OnceLock::new();
    let sender = CHECKS.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Check>();
        std::thread::Builder::new()
            .name("omb-login".into())
            .spawn(move || {
                while let Ok((hash, password, reply)) = rx.recv() {
                    let _ = reply.send(verify_with(&hash, &password, &mut Vec::new()));
                }
            })
            .ok()
            .map(|_| Mutex::new(tx))
    });
    let Some(sender) = sender else {
        return false;
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let sent = sender
        .lock()
        .map(|tx| tx.send((hash, password, reply)).is_ok())
        .unwrap_or(false);
    sent && answer.await.unwrap_or(false)
}

/// Like [`verify`], with Argon2's work memory supplied by the caller.
fn verify_with(hash: &str, password: &str, memory: &mut Vec<argon2::Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        argon2::Algorithm::try_from(parsed.algorithm),
        argon2::Params::try_from(&parsed),
    ) else {
        return false;
    };
    let version = parsed
        .version
        .and_then(|v| argon2::Version::try_from(v).ok())
        .unwrap_or_default();
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, argon2::Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(algorithm, version, params);
    if argon
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut memory[..blocks])
        .is_err()
    {
        return false;
    }
    // Constant time: every byte is compared.
    out.iter()
        .zip(expected.as_bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

#[cfg_attr(not(test), allow(dead_code))]
fn verify(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// The Argon2id hash (PHC string, fresh salt, the crate's default cost) of a password.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))
}

/// Sets the account's password (only its hash is written, mode 0600).
pub fn set_password(data_dir: &Path, password: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        password.chars().count() >= 8,
        "a password must have at least 8 characters"
    );
    let hash = hash_password(password)?;
    let tmp = data_dir.join(format!("{FILE}.tmp"));
    omb_shared::pgp::write_private_file(&tmp, hash.as_bytes())?;
    std::fs::rename(&tmp, data_dir.join(FILE))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reused_memory_checks_like_the_library() {
        let hash = hash_password("correct horse").unwrap();
        let mut memory = Vec::new();
        assert!(verify_with(&hash, "correct horse", &mut memory));
        assert!(!verify_with(&hash, "correct hors", &mut memory));
        assert!(verify_with(&hash, "correct horse", &mut memory));
        assert!(verify(&hash, "correct horse"));
    }

    #[tokio::test]
    async fn right_password_logs_in_and_repeated_failures_are_refused() {
        let dir = std::env::temp_dir().join(format!("omb-login-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let login = Login::new(&dir, "Alice@Sandbox.test");
        let peer: IpAddr = [127, 0, 0, 1].into();
        assert_eq!(
            login.check(peer, "alice", "whatever").await,
            Err(LoginError::NoPassword)
        );
        set_password(&dir, "correct horse").unwrap();
        assert!(login
            .check(peer, "alice@sandbox.test", "correct horse")
            .await
            .is_ok());
        assert!(login.check(peer, "ALICE", "correct horse").await.is_ok());
        // A new password replaces the one that passed before.
        let third: IpAddr = [127, 0, 0, 3].into();
        set_password(&dir, "battery staple").unwrap();
        assert_eq!(
            login.check(third, "alice", "correct horse").await,
            Err(LoginError::Failed)
        );
        assert!(login.check(third, "alice", "battery staple").await.is_ok());
        set_password(&dir, "correct horse").unwrap();
        assert!(login.check(third, "alice", "correct horse").await.is_ok());
        assert_eq!(
            login.check(peer, "bob", "correct horse").await,
            Err(LoginError::Failed)
        );
        for _ in 1..MAX_FAILURES {
            assert_eq!(
                login.check(peer, "alice", "wrong").await,
                Err(LoginError::Failed)
            );
        }
        // Now even the right password is refused from that address ...
        assert_eq!(
            login.check(peer, "alice", "correct horse").await,
            Err(LoginError::Throttled)
        );
        // ... but not from another one.
        let other: IpAddr = [127, 0, 0, 2].into();
        assert!(login.check(other, "alice", "correct horse").await.is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
