//! Online signing (RFC 4033–4035): the zone's one key, and RRSIGs made when a query
//! with the DO bit asks for an RRset, cached so that a popular RRset is signed once.
//!
//! The key is a CSK (one key for the whole zone, flags 257: Zone Key and Secure Entry
//! Point, RFC 4034 §2.1.1) on ECDSA P-256 with SHA-256 (algorithm 13, RFC 6605), made
//! with ring on first start and kept as PKCS#8 in the data folder, readable by the owner
//! only.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use hickory_proto::dnssec::crypto::EcdsaSigningKey;
use hickory_proto::dnssec::rdata::{DNSSECRData, SigInput, DNSKEY, DS, RRSIG};
use hickory_proto::dnssec::{Algorithm, DigestType, PublicKey, SigningKey, TBS};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, SerialNumber};
use hickory_proto::serialize::binary::BinEncodable;
use rustls::pki_types::PrivatePkcs8KeyDer;
use sha2::{Digest, Sha256};

/// DNSKEY flags of a CSK: Zone Key (bit 7) and Secure Entry Point (bit 15).
const CSK_FLAGS: u16 = 257;
/// The algorithm of every key: ECDSA P-256 with SHA-256 (RFC 6605 §2).
const ALGORITHM: Algorithm = Algorithm::ECDSAP256SHA256;
/// How long a signature is valid after it is made (RFC 4034 §3.1.5).
pub(super) const VALIDITY_SECS: u64 = 14 * 24 * 3600;
/// How far in the past a signature's inception lies, for validators whose clocks are
/// behind (RFC 6781 §4.4.2.2 calls it the inception offset).
pub(super) const INCEPTION_SKEW_SECS: u64 = 3600;
/// A cached signature is served for this long after it is made, and then made again, so
/// every signature served is valid for at least `VALIDITY_SECS - REFRESH_SECS` more.
const REFRESH_SECS: u64 = 3 * 24 * 3600;
/// Signatures kept at most; beyond, the cache starts again from empty.
const MAX_CACHED: usize = 500_000;

/// A zone key that cannot be read, made or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("DNSSEC key file {path}: {source}; check the data folder's permissions")]
    Io {
        /// The key file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The key file holds something that is not an ECDSA P-256 key.
    #[error("DNSSEC key file {path} is not a PKCS#8 ECDSA P-256 key ({reason}); move it away to make a new key (the DS at the parent must then change)")]
    Invalid {
        /// The key file.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// The crypto library failed.
    #[error("DNSSEC: {0}")]
    Crypto(String),
}

/// The zone's signing key and its DNSKEY.
pub struct ZoneKey {
    key: EcdsaSigningKey,
    dnskey: DNSKEY,
    tag: u16,
}

impl std::fmt::Debug for ZoneKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZoneKey").field("tag", &self.tag).finish()
    }
}

impl ZoneKey {
    /// Reads the key at `path`, or makes one and writes it there (mode 0600) when the
    /// file does not exist.
    pub fn load_or_generate(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        match fs::read(path) {
            Ok(der) => Self::from_pkcs8(&der).map_err(|e| KeyError::Invalid {
                path: path.to_owned(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let der = EcdsaSigningKey::generate_pkcs8(ALGORITHM)
                    .map_err(|e| KeyError::Crypto(e.to_string()))?;
                let key = Self::from_pkcs8(der.secret_pkcs8_der())?;
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir).map_err(io)?;
                }
                write_private(path, der.secret_pkcs8_der()).map_err(io)?;
                Ok(key)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// A new key that lives in memory only (tests, fuzzing).
    pub fn generate() -> Result<Self, KeyError> {
        let der = EcdsaSigningKey::generate_pkcs8(ALGORITHM)
            .map_err(|e| KeyError::Crypto(e.to_string()))?;
        Self::from_pkcs8(der.secret_pkcs8_der())
    }

    fn from_pkcs8(der: &[u8]) -> Result<Self, KeyError> {
        let crypto = |e: &dyn std::fmt::Display| KeyError::Crypto(e.to_string());
        let key = EcdsaSigningKey::from_pkcs8(&PrivatePkcs8KeyDer::from(der.to_vec()), ALGORITHM)
            .map_err(|e| crypto(&e))?;
        let public = key.to_public_key().map_err(|e| crypto(&e))?;
        let dnskey = DNSKEY::with_flags(CSK_FLAGS, public);
        let tag = dnskey.calculate_key_tag().map_err(|e| crypto(&e))?;
        Ok(Self { key, dnskey, tag })
    }

    /// The key tag (RFC 4034 Appendix B).
    pub fn key_tag(&self) -> u16 {
        self.tag
    }

    /// The DNSKEY record published at `origin`.
    pub fn dnskey_record(&self, origin: &Name, ttl: u32) -> Record {
        Record::from_rdata(
            origin.clone(),
            ttl,
            RData::DNSSEC(DNSSECRData::DNSKEY(self.dnskey.clone())),
        )
    }

    /// The DS record (SHA-256 digest, RFC 4509) that the parent zone publishes for
    /// `origin` (RFC 4034 §5).
    pub fn ds_record(&self, origin: &Name, ttl: u32) -> Result<Record, KeyError> {
        let digest = self
            .dnskey
            .to_digest(origin, DigestType::SHA256)
            .map_err(|e| KeyError::Crypto(e.to_string()))?;
        let ds = DS::new(
            self.tag,
            ALGORITHM,
            DigestType::SHA256,
            digest.as_ref().to_vec(),
        );
        Ok(Record::from_rdata(
            origin.clone(),
            ttl,
            RData::DNSSEC(DNSSECRData::DS(ds)),
        ))
    }

    /// The public key in base64, as DNSKEY presentation format and trust-anchor files
    /// write it.
    pub fn public_key_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.dnskey.public_key().public_bytes())
    }
}

/// Writes `bytes` to `path` readable by the owner only, through a temporary file so that
/// a crash leaves either no key or the whole key.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temporary, path)
}

/// One cached signature.
struct Cached {
    /// SHA-256 of the RRset it covers (owner, type, TTL, RDATA), so that a changed
    /// RRset is never served an old signature, whatever else changed.
    digest: [u8; 32],
    /// The RRSIG, owned by the lower-case owner name.
    rrsig: Record,
    /// Unix time after which it is made again.
    refresh_at: u64,
}

/// Signs RRsets of one zone and remembers the signatures.
pub(super) struct Signer {
    key: ZoneKey,
    origin: Name,
    cache: Mutex<HashMap<(Name, RecordType), Cached>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("origin", &self.origin)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Signer {
    pub(super) fn new(key: ZoneKey, origin: Name) -> Self {
        Self {
            key,
            origin,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn key(&self) -> &ZoneKey {
        &self.key
    }

    /// How many signatures are cached.
    #[cfg(test)]
    pub(super) fn cached(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Name, RecordType), Cached>> {
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The RRSIG over `rrset` (records of one owner and type), owned by the owner name
    /// as the records write it; `None` for an empty set or when signing fails.
    ///
    /// RFC 4034 §3.1: the labels field counts the owner's labels (no wildcards here),
    /// the original TTL is the RRset's; the signature covers the canonical form
    /// (§6.2–6.3), so the owner's letter case does not matter.
    pub(super) fn sign(&self, rrset: &[Record]) -> Option<Record> {
        let first = rrset.first()?;
        let owner = first.name.to_lowercase();
        let key = (owner.clone(), first.record_type());
        let digest = rrset_digest(&owner, rrset);
        let now = unix_now();
        if let Some(cached) = self.lock().get(&key) {
            if cached.digest == digest && now < cached.refresh_at {
                return Some(renamed(&cached.rrsig, &first.name));
            }
        }
        let rrsig = match self.make(&owner, rrset, now) {
            Ok(rrsig) => rrsig,
            Err(error) => {
                tracing::warn!(%owner, %error, "dns: could not sign an RRset");
                return None;
            }
        };
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(
            key,
            Cached {
                digest,
                rrsig: rrsig.clone(),
                refresh_at: now + REFRESH_SECS,
            },
        );
        Some(renamed(&rrsig, &first.name))
    }

    fn make(&self, owner: &Name, rrset: &[Record], now: u64) -> Result<Record, String> {
        let first = rrset.first().ok_or("empty RRset")?;
        let ttl = first.ttl;
        let input = SigInput {
            type_covered: first.record_type(),
            algorithm: ALGORITHM,
            num_labels: owner.num_labels(),
            original_ttl: ttl,
            sig_expiration: serial(now + VALIDITY_SECS),
            sig_inception: serial(now.saturating_sub(INCEPTION_SKEW_SECS)),
            key_tag: self.key.tag,
            signer_name: self.origin.clone(),
        };
        let lower: Vec<Record> = rrset
            .iter()
            .map(|r| Record::from_rdata(owner.clone(), ttl, r.data.clone()))
            .collect();
        let tbs = TBS::from_input(owner, DNSClass::IN, &input, lower.iter())
            .map_err(|e| e.to_string())?;
        let signature = self.key.key.sign(&tbs).map_err(|e| e.to_string())?;
        Ok(Record::from_rdata(
            owner.clone(),
            ttl,
            RData::DNSSEC(DNSSECRData::RRSIG(RRSIG::from_sig(input, signature))),
        ))
    }

    /// `records` followed by one RRSIG per RRset among them (records of one owner and
    /// type must be adjacent, as the zone keeps them).
    pub(super) fn with_signatures(&self, records: Vec<Record>) -> Vec<Record> {
        let mut signatures = Vec::new();
        for rrset in rrsets(&records) {
            signatures.extend(self.sign(rrset));
        }
        let mut out = records;
        out.extend(signatures);
        out
    }
}

/// Splits records into runs of one owner and type.
pub(super) fn rrsets(records: &[Record]) -> impl Iterator<Item = &[Record]> {
    records.chunk_by(|a, b| a.record_type() == b.record_type() && a.name == b.name)
}

fn renamed(record: &Record, owner: &Name) -> Record {
    let mut record = record.clone();
    record.name = owner.clone();
    record
}

fn rrset_digest(owner: &Name, rrset: &[Record]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(owner.to_ascii().as_bytes());
    for record in rrset {
        hash.update(u16::from(record.record_type()).to_be_bytes());
        hash.update(record.ttl.to_be_bytes());
        let data = record.data.to_bytes().unwrap_or_default();
        hash.update((data.len() as u64).to_be_bytes());
        hash.update(&data);
    }
    hash.finalize().into()
}

/// A Unix time as an RRSIG time field (RFC 4034 §3.1.5: serial number arithmetic
/// modulo 2^32).
fn serial(unix: u64) -> SerialNumber {
    SerialNumber::new((unix % (1 << 32)) as u32)
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
