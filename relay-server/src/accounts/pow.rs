//! Proof of work for signups: the client spends about a second of CPU per
//! account, which a person does not notice and a bulk registrar pays for each
//! address, with no third-party captcha.
//!
//! A challenge is stateless: `RANDOM.EXPIRES.DIFFICULTY.MAC`, where RANDOM is
//! 16 random bytes in hex, EXPIRES seconds since the epoch, DIFFICULTY the
//! leading zero bits asked for, and MAC the HMAC-SHA256 (RFC 2104) of the
//! first three fields under a secret only the relay knows (`DATA_DIR/pow-secret`,
//! made on first start). The client finds a NONCE (1 to 64 ASCII letters or
//! digits) such that SHA-256(CHALLENGE || NONCE), over the ASCII bytes of both,
//! begins with DIFFICULTY zero bits. Each challenge is good for one signup: the
//! relay remembers spent ones until they expire.
//!
//! The spent set is in memory. Relays that share one PostgreSQL state behind
//! one name must share `pow-secret`, and then a challenge could be spent once
//! on each instance; the per-IP limit still holds per instance.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

/// What the client is told: the challenge and the rules to solve it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Challenge {
    pub challenge: String,
    /// Leading zero bits SHA-256(challenge || nonce) must have.
    pub difficulty: u8,
    /// Seconds since the epoch after which the challenge is refused.
    pub expires_at: i64,
    /// How to solve it, for a client to check it knows this scheme.
    pub algorithm: String,
}

/// The name of the scheme in [`Challenge::algorithm`].
pub const ALGORITHM: &str = "sha256-leading-zero-bits";

/// What the client sends back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Solution {
    pub challenge: String,
    pub nonce: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PowError {
    #[error("the proof of work is malformed: get a challenge from GET /api/v1/pow and send {{\"challenge\", \"nonce\"}}")]
    Malformed,
    #[error("this challenge was not issued by this relay: get a new one from GET /api/v1/pow")]
    Forged,
    #[error("the challenge has expired: get a new one from GET /api/v1/pow and solve it sooner")]
    Expired,
    #[error(
        "the challenge is easier than this relay now asks: get a new one from GET /api/v1/pow"
    )]
    TooEasy,
    #[error("the nonce does not solve the challenge: SHA-256(challenge || nonce) must begin with {0} zero bits")]
    Unsolved(u8),
    #[error("this challenge was used already: get a new one from GET /api/v1/pow")]
    Replayed,
}

impl PowError {
    pub fn code(&self) -> &'static str {
        match self {
            PowError::Malformed => "pow_malformed",
            PowError::Forged => "pow_forged",
            PowError::Expired => "pow_expired",
            PowError::TooEasy => "pow_too_easy",
            PowError::Unsolved(_) => "pow_unsolved",
            PowError::Replayed => "pow_replayed",
        }
    }
}

/// Issues and checks challenges.
pub struct Pow {
    secret: [u8; 32],
    difficulty: u8,
    ttl_secs: i64,
    /// RANDOM of each spent challenge, with its expiry.
    spent: Mutex<HashMap<[u8; 16], i64>>,
}

/// The secret's file name in the data folder.
pub const SECRET_FILE: &str = "pow-secret";

impl Pow {
    pub fn new(secret: [u8; 32], difficulty: u8, ttl_secs: u64) -> Pow {
        Pow {
            secret,
            difficulty: difficulty.min(64),
            ttl_secs: i64::try_from(ttl_secs).unwrap_or(i64::MAX / 2),
            spent: Mutex::new(HashMap::new()),
        }
    }

    /// With the secret of `data_dir`, made (owner-only) on first use.
    pub fn load_or_create(data_dir: &Path, difficulty: u8, ttl_secs: u64) -> std::io::Result<Pow> {
        let path = data_dir.join(SECRET_FILE);
        let secret = match std::fs::read(&path) {
            Ok(bytes) => <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{} must hold 32 bytes; delete it to make a new one",
                        path.display()
                    ),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret: [u8; 32] = rand::random();
                omb_shared::pgp::write_private_file(&path, &secret)?;
                secret
            }
            Err(e) => return Err(e),
        };
        Ok(Pow::new(secret, difficulty, ttl_secs))
    }

    pub fn difficulty(&self) -> u8 {
        self.difficulty
    }

    /// A new challenge, valid until `now` + the configured lifetime.
    pub fn issue(&self, now: i64) -> Challenge {
        let random: [u8; 16] = rand::random();
        let expires_at = now.saturating_add(self.ttl_secs);
        let body = format!("{}.{expires_at}.{}", hex::encode(random), self.difficulty);
        let challenge = format!("{body}.{}", hex::encode(self.mac(&body)));
        Challenge {
            challenge,
            difficulty: self.difficulty,
            expires_at,
            algorithm: ALGORITHM.to_string(),
        }
    }

    fn mac(&self, body: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(body.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Checks a solution at time `now` and, if it holds, spends its challenge.
    pub fn verify(&self, solution: &Solution, now: i64) -> Result<(), PowError> {
        let fields: Vec<&str> = solution.challenge.split('.').collect();
        let [random_hex, expires, difficulty, mac_hex] = fields[..] else {
            return Err(PowError::Malformed);
        };
        let random: [u8; 16] = hex::decode(random_hex)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(PowError::Malformed)?;
        let expires_at: i64 = expires.parse().map_err(|_| PowError::Malformed)?;
        let difficulty: u8 = difficulty.parse().map_err(|_| PowError::Malformed)?;
        let given_mac = hex::decode(mac_hex).map_err(|_| PowError::Malformed)?;
        let nonce = &solution.nonce;
        if nonce.is_empty() || nonce.len() > 64 || !nonce.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(PowError::Malformed);
        }
        let body = &solution.challenge[..solution.challenge.len() - mac_hex.len() - 1];
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(body.as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&given_mac).map_err(|_| PowError::Forged)?;
        if now >= expires_at {
            return Err(PowError::Expired);
        }
        if difficulty < self.difficulty {
            return Err(PowError::TooEasy);
        }
        if leading_zero_bits(&work(&solution.challenge, nonce)) < u32::from(difficulty) {
            return Err(PowError::Unsolved(difficulty));
        }
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        spent.retain(|_, expiry| *expiry > now);
        if spent.insert(random, expires_at).is_some() {
            return Err(PowError::Replayed);
        }
        Ok(())
    }
}

/// SHA-256(challenge || nonce).
pub fn work(challenge: &str, nonce: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(challenge.as_bytes());
    h.update(nonce.as_bytes());
    h.finalize().into()
}

/// How many zero bits `hash` begins with.
pub fn leading_zero_bits(hash: &[u8]) -> u32 {
    let mut bits = 0;
    for byte in hash {
        if *byte == 0 {
            bits += 8;
        } else {
            return bits + byte.leading_zeros();
        }
    }
    bits
}

/// Solves `challenge` (what a client does; for tests and tools): counts up
/// decimal nonces until one works.
pub fn solve(challenge: &Challenge) -> Solution {
    let mut n: u64 = 0;
    loop {
        let nonce = n.to_string();
        if leading_zero_bits(&work(&challenge.challenge, &nonce)) >= u32::from(challenge.difficulty)
        {
            return Solution {
                challenge: challenge.challenge.clone(),
                nonce,
            };
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    #[test]
    fn leading_zero_bits_counts_across_bytes() {
        assert_eq!(leading_zero_bits(&[0x80]), 0);
        assert_eq!(leading_zero_bits(&[0x01]), 7);
        assert_eq!(leading_zero_bits(&[0x00, 0x00, 0x10]), 19);
        assert_eq!(leading_zero_bits(&[0x00, 0x00]), 16);
    }

    #[test]
    fn a_solved_challenge_passes_once() {
        let pow = Pow::new([7; 32], 8, 600);
        let c = pow.issue(NOW);
        assert_eq!(c.difficulty, 8);
        assert_eq!(c.expires_at, NOW + 600);
        let s = solve(&c);
        assert!(leading_zero_bits(&work(&s.challenge, &s.nonce)) >= 8);
        assert_eq!(pow.verify(&s, NOW + 1), Ok(()));
        assert_eq!(pow.verify(&s, NOW + 2), Err(PowError::Replayed));
        // Another challenge is not affected.
        let other = solve(&pow.issue(NOW));
        assert_eq!(pow.verify(&other, NOW + 2), Ok(()));
    }

    #[test]
    fn an_unsolved_nonce_is_refused_and_leaves_the_challenge_usable() {
        let pow = Pow::new([7; 32], 12, 600);
        let c = pow.issue(NOW);
        let good = solve(&c);
        let bad = (0u64..)
            .map(|n| n.to_string())
            .find(|n| leading_zero_bits(&work(&c.challenge, n)) < 12)
            .map(|nonce| Solution {
                challenge: c.challenge.clone(),
                nonce,
            })
            .unwrap_or_else(|| unreachable!());
        assert_eq!(pow.verify(&bad, NOW), Err(PowError::Unsolved(12)));
        assert_eq!(pow.verify(&good, NOW), Ok(()));
    }

    #[test]
    fn expired_challenges_are_refused() {
        let pow = Pow::new([7; 32], 4, 60);
        let s = solve(&pow.issue(NOW));
        assert_eq!(pow.verify(&s, NOW + 60), Err(PowError::Expired));
        assert_eq!(pow.verify(&s, NOW + 59), Ok(()));
        // Spent challenges are forgotten once expired, and stay refused.
        assert_eq!(pow.verify(&s, NOW + 61), Err(PowError::Expired));
        assert!(pow.spent.lock().map(|m| m.len() <= 1).unwrap_or(false));
    }

    #[test]
    fn forged_or_altered_challenges_are_refused() {
        let pow = Pow::new([7; 32], 4, 600);
        let other_relay = Pow::new([8; 32], 4, 600);
        let s = solve(&other_relay.issue(NOW));
        assert_eq!(pow.verify(&s, NOW), Err(PowError::Forged));

        // Lowering the difficulty or pushing back the expiry breaks the MAC.
        let c = pow.issue(NOW);
        let f: Vec<&str> = c.challenge.split('.').collect();
        for altered in [
            format!("{}.{}.0.{}", f[0], f[1], f[3]),
            format!("{}.{}.{}.{}", f[0], NOW + 99_999, f[2], f[3]),
        ] {
            let s = solve(&Challenge {
                challenge: altered,
                difficulty: 0,
                ..c.clone()
            });
            assert_eq!(pow.verify(&s, NOW), Err(PowError::Forged));
        }
        for junk in ["", "a.b.c.d", "x", &format!("{}.{}", c.challenge, "1")] {
            let s = Solution {
                challenge: junk.to_string(),
                nonce: "1".into(),
            };
            assert_eq!(pow.verify(&s, NOW), Err(PowError::Malformed), "{junk:?}");
        }
        for nonce in ["", "a b", &"1".repeat(65), "é"] {
            let s = Solution {
                challenge: c.challenge.clone(),
                nonce: nonce.to_string(),
            };
            assert_eq!(pow.verify(&s, NOW), Err(PowError::Malformed), "{nonce:?}");
        }
    }

    #[test]
    fn challenges_easier_than_the_current_difficulty_are_refused() {
        let secret = [9; 32];
        let easy = solve(&Pow::new(secret, 2, 600).issue(NOW));
        let pow = Pow::new(secret, 6, 600);
        assert_eq!(pow.verify(&easy, NOW), Err(PowError::TooEasy));
    }

    #[test]
    fn the_secret_is_made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!(
            "omb-pow-{}",
            hex::encode(rand::random::<[u8; 6]>())
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let a = Pow::load_or_create(&dir, 4, 600).unwrap_or_else(|e| panic!("{e}"));
        let b = Pow::load_or_create(&dir, 4, 600).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.secret, b.secret);
        let s = solve(&a.issue(NOW));
        assert_eq!(
            b.verify(&s, NOW),
            Ok(()),
            "a restarted relay accepts its challenges"
        );
        std::fs::write(dir.join(SECRET_FILE), b"short").unwrap_or_else(|e| panic!("{e}"));
        assert!(Pow::load_or_create(&dir, 4, 600).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
