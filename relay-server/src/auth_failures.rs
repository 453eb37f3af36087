//! Negative caching of DNS resolution failures (RFC 9520) for the MX's SPF
//! and DMARC checks.
//!
//! A TXT name whose lookup failed — SERVFAIL, REFUSED, a timeout: not NXDOMAIN
//! or NODATA, which the resolver caches itself by the zone's SOA (RFC 2308) —
//! is not asked again for [`FAILURE_TTL`]; checks of the messages meanwhile
//! get the same temporary error at once (RFC 9520 §3: "MUST cache resolution
//! failures for at least 1 second"). Without it every message from such a
//! domain sends the same doomed queries, each with the resolver's retries,
//! and waits for them.
//!
//! mail-auth consults a [`ResolverCache`] before each TXT lookup and stores
//! what it parsed after each successful one, but never a failed lookup. So a
//! check runs with a [`Lookups`] view: it serves the failures remembered, and
//! notes the names the check had to look up itself. A failure is remembered
//! only when it is certain which name failed: the check ended in a temporary
//! error and none of its TXT lookups was answered, so it never got past the
//! policy record itself (SPF, RFC 7208 §4.4; the DMARC record walk, where
//! mail-auth stops at the first such error); the name that failed is then the
//! last one asked (names are looked up one after the other).

use mail_auth::{DnsError, Error, ResolverCache, Txt};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a failed lookup is not repeated.
pub(crate) const FAILURE_TTL: Duration = Duration::from_secs(5);
/// Names remembered at most; beyond, expired ones are dropped, then all.
const MAX_NAMES: usize = 10_000;

/// Failed TXT names, by hash (mail-auth hands the cache a borrowed form of the
/// name, so the hash is what both sides can compute), until when.
#[derive(Default)]
pub(crate) struct FailureCache {
    hasher: RandomState,
    failed: Mutex<HashMap<u64, Instant>>,
}

impl FailureCache {
    fn hash<Q: Hash + ?Sized>(&self, name: &Q) -> u64 {
        self.hasher.hash_one(name)
    }

    fn is_failed(&self, hash: u64) -> bool {
        let Ok(mut failed) = self.failed.lock() else {
            return false;
        };
        match failed.get(&hash) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                failed.remove(&hash);
                false
            }
            None => false,
        }
    }

    fn remember(&self, hash: u64) {
        let Ok(mut failed) = self.failed.lock() else {
            return;
        };
        let now = Instant::now();
        if failed.len() >= MAX_NAMES {
            failed.retain(|_, until| *until > now);
            if failed.len() >= MAX_NAMES {
                failed.clear();
            }
        }
        failed.insert(hash, now + FAILURE_TTL);
    }

    /// A view for one check.
    pub(crate) fn lookups(&self) -> Lookups<'_> {
        Lookups {
            cache: self,
            asked: Mutex::new(Asked::default()),
        }
    }
}

/// One check's view of the [`FailureCache`].
pub(crate) struct Lookups<'a> {
    cache: &'a FailureCache,
    asked: Mutex<Asked>,
}

/// What a check looked up on the network.
#[derive(Default)]
struct Asked {
    /// The last name asked.
    last: Option<u64>,
    /// Whether any lookup was answered.
    answered: bool,
}

impl Lookups<'_> {
    /// The check ended; `temporary_error`: in a temporary DNS error.
    pub(crate) fn finish(self, temporary_error: bool) {
        if !temporary_error {
            return;
        }
        if let Ok(Asked {
            last: Some(hash),
            answered: false,
        }) = self.asked.into_inner()
        {
            self.cache.remember(hash);
        }
    }
}

impl ResolverCache<Box<str>, Txt> for Lookups<'_> {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.cache.hash(name);
        if self.cache.is_failed(hash) {
            return Some(Txt::Error(Error::Dns(DnsError::Resolver(
                "lookup failed moments ago (RFC 9520)".to_string(),
            ))));
        }
        if let Ok(mut asked) = self.asked.lock() {
            asked.last = Some(hash);
        }
        None
    }

    fn remove<Q>(&self, _name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _name: Box<str>, _value: Txt, _valid_until: Instant) {
        // Answered (records, even unparsable ones): the check got past the
        // policy record, and which later lookup failed is not known here.
        if let Ok(mut asked) = self.asked.lock() {
            asked.answered = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_remembered_only_after_a_temporary_error() {
        let cache = FailureCache::default();
        let view = cache.lookups();
        assert!(view.get::<str>("a.example.").is_none());
        view.finish(false);
        assert!(cache.lookups().get::<str>("a.example.").is_none());

        let view = cache.lookups();
        assert!(view.get::<str>("a.example.").is_none());
        view.finish(true);
        let served = cache.lookups().get::<str>("a.example.");
        assert!(matches!(
            served,
            Some(Txt::Error(Error::Dns(DnsError::Resolver(_))))
        ));
        assert!(cache.lookups().get::<str>("b.example.").is_none());
    }

    #[test]
    fn nothing_is_blamed_once_a_lookup_was_answered() {
        let cache = FailureCache::default();
        let view = cache.lookups();
        assert!(view.get::<str>("a.example.").is_none());
        view.insert(
            "a.example.".into(),
            Txt::Error(Error::ParseError),
            Instant::now(),
        );
        assert!(view.get::<str>("b.example.").is_none());
        view.finish(true);
        assert!(cache.lookups().get::<str>("a.example.").is_none());
        assert!(cache.lookups().get::<str>("b.example.").is_none());
    }

    #[test]
    fn failures_expire() {
        let cache = FailureCache::default();
        let hash = cache.hash::<str>("a.example.");
        if let Ok(mut failed) = cache.failed.lock() {
            failed.insert(hash, Instant::now());
        }
        assert!(cache.lookups().get::<str>("a.example.").is_none());
    }
}
