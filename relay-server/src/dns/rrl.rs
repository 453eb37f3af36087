//! Response-rate limiting for UDP, after BIND's RRL (and Vixie & Schryver's "DNS
//! Response Rate Limiting" technical note): a forged source address cannot turn the
//! server into an amplifier, and a flood from one network leaves others answered.
//!
//! Responses are counted per client network (an IPv4 /24 or IPv6 /56 by default) and
//! per kind of answer: the same name and type for positive answers and NODATA, and one
//! count per client for NXDOMAIN (random-subdomain floods) and for errors. Over the
//! rate a response is dropped, except every `slip`-th one, which goes out as an empty
//! response with TC set (RFC 1035 §4.1.1): a real client behind the forged address
//! retries over TCP, which is not limited, and still gets its answer.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::time::Instant;

use serde::Deserialize;

/// The header (RFC 1035 §4.1.1) ends here; the question starts.
const HEADER_LEN: usize = 12;
/// Buckets kept at most; beyond, idle ones are forgotten.
const MAX_BUCKETS: usize = 65_536;

/// How responses are limited (`[dns.rrl]` in the relay's configuration).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RrlConfig {
    /// Whether UDP responses are limited at all.
    pub enabled: bool,
    /// Responses per second of one kind to one client network; also the burst allowed.
    pub responses_per_second: u32,
    /// Every `slip`-th response over the limit is sent as an empty TC=1 response
    /// instead of being dropped; 0 drops them all, 1 slips them all.
    pub slip: u32,
    /// Prefix length that makes an IPv4 client network.
    pub ipv4_prefix: u8,
    /// Prefix length that makes an IPv6 client network.
    pub ipv6_prefix: u8,
    /// Client networks never limited, as `ADDRESS` or `ADDRESS/PREFIX`.
    pub exempt: Vec<String>,
}

impl Default for RrlConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            responses_per_second: 20,
            slip: 2,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
            exempt: vec!["127.0.0.0/8".into(), "::1".into()],
        }
    }
}

/// What to do with one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Send it.
    Send,
    /// Send this empty, truncated response instead.
    Slip(Vec<u8>),
    /// Send nothing.
    Drop,
}

/// The kind of a response, which picks the bucket it counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Answer,
    NoData,
    NxDomain,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    network: (u8, u128),
    kind: Kind,
    question: u64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    over: u64,
}

/// The limiter's state: one token bucket per client network and kind.
#[derive(Debug)]
pub(super) struct Limiter {
    config: RrlConfig,
    exempt: Vec<super::transfer::Network>,
    buckets: HashMap<Key, Bucket>,
}

impl Limiter {
    /// A limiter; `None` when limiting is off. Errors name a bad `exempt` entry.
    pub(super) fn new(config: &RrlConfig) -> Result<Option<Self>, String> {
        if !config.enabled || config.responses_per_second == 0 {
            return Ok(None);
        }
        let exempt = config
            .exempt
            .iter()
            .map(|e| super::transfer::Network::parse(e))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Self {
            config: config.clone(),
            exempt,
            buckets: HashMap::new(),
        }))
    }

    /// Counts `response` (as [`super::wire::respond`] made it) to `client` at `now`.
    pub(super) fn check(&mut self, client: IpAddr, response: &[u8], now: Instant) -> Verdict {
        let client = client.to_canonical();
        if self.exempt.iter().any(|n| n.contains(client)) {
            return Verdict::Send;
        }
        let Some((kind, question, question_end)) = classify(response) else {
            return Verdict::Send;
        };
        let key = Key {
            network: self.network(client),
            kind,
            question,
        };
        if self.buckets.len() >= MAX_BUCKETS && !self.buckets.contains_key(&key) {
            self.forget_idle(now);
        }
        let rate = f64::from(self.config.responses_per_second);
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            tokens: rate,
            last: now,
            over: 0,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Verdict::Send;
        }
        bucket.over += 1;
        let slip = u64::from(self.config.slip);
        if slip > 0 && bucket.over.is_multiple_of(slip) {
            truncated(response, question_end).map_or(Verdict::Drop, Verdict::Slip)
        } else {
            Verdict::Drop
        }
    }

    fn network(&self, ip: IpAddr) -> (u8, u128) {
        match ip {
            IpAddr::V4(v4) => (
                4,
                mask(u128::from(u32::from(v4)), 32, self.config.ipv4_prefix),
            ),
            IpAddr::V6(v6) => (6, mask(u128::from(v6), 128, self.config.ipv6_prefix)),
        }
    }

    /// Drops buckets that have refilled (their client has been quiet for a second or
    /// more); if that frees nothing, starts again from empty.
    fn forget_idle(&mut self, now: Instant) {
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.last).as_secs_f64() < 1.0);
        if self.buckets.len() >= MAX_BUCKETS {
            self.buckets.clear();
        }
    }
}

/// The top `prefix` of the `bits` low bits of `value`.
fn mask(value: u128, bits: u8, prefix: u8) -> u128 {
    let prefix = prefix.min(bits);
    if prefix == 0 {
        return 0;
    }
    let keep = u32::from(bits - prefix);
    (value >> keep) << keep
}

/// The kind, the question's hash and where the question ends, read from a response.
fn classify(response: &[u8]) -> Option<(Kind, u64, usize)> {
    let header = response.get(..HEADER_LEN)?;
    let rcode = header[3] & 0x0f;
    let answers = u16::from_be_bytes([header[6], header[7]]);
    let qcount = u16::from_be_bytes([header[4], header[5]]);
    // The question: a name of plain labels (the first name of a message cannot be
    // compressed), then type and class.
    let (name_end, question_end) = if qcount == 0 {
        (HEADER_LEN, HEADER_LEN)
    } else {
        let mut at = HEADER_LEN;
        loop {
            let len = usize::from(*response.get(at)?);
            if len == 0 || len > 63 {
                break;
            }
            at += 1 + len;
        }
        (at + 1, at + 5)
    };
    let mut hash = std::collections::hash_map::DefaultHasher::new();
    let kind = match (rcode, answers) {
        (0, 0) => Kind::NoData,
        (0, _) => Kind::Answer,
        (3, _) => Kind::NxDomain,
        _ => Kind::Error,
    };
    if matches!(kind, Kind::Answer | Kind::NoData) {
        let name = response.get(HEADER_LEN..name_end)?;
        name.to_ascii_lowercase().hash(&mut hash);
        response.get(name_end..name_end + 2)?.hash(&mut hash);
    }
    Some((kind, hash.finish(), question_end))
}

/// The response's header and question only, with TC set and no records.
fn truncated(response: &[u8], question_end: usize) -> Option<Vec<u8>> {
    let mut out = response.get(..question_end)?.to_vec();
    out[2] |= 0x02;
    // ANCOUNT, NSCOUNT, ARCOUNT.
    out[6..HEADER_LEN].fill(0);
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::{Duration, Instant};

    use hickory_proto::op::Message;
    use hickory_proto::rr::RecordType;

    use super::{Limiter, RrlConfig, Verdict};
    use crate::dns::tests::{query, sandbox_zone};
    use crate::dns::wire::{respond, Transport};

    fn response(name: &str, qtype: RecordType) -> Vec<u8> {
        let request = query(name, qtype, Some(1232)).to_vec().expect("encode");
        respond(&request, Transport::Udp, sandbox_zone().as_ref()).expect("a response")
    }

    #[test]
    fn over_the_rate_drops_and_slips_per_network_and_kind() {
        let config = RrlConfig {
            responses_per_second: 5,
            slip: 2,
            exempt: vec![],
            ..RrlConfig::default()
        };
        let mut limiter = Limiter::new(&config).expect("valid").expect("enabled");
        let start = Instant::now();
        let flooder = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        let neighbour = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 200));
        let other = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
        let mx = response("sandbox.test.", RecordType::MX);
        let verdicts: Vec<Verdict> = (0..9).map(|_| limiter.check(flooder, &mx, start)).collect();
        assert!(
            verdicts[..5].iter().all(|v| *v == Verdict::Send),
            "{verdicts:?}"
        );
        let slipped: Vec<&Vec<u8>> = verdicts[5..]
            .iter()
            .filter_map(|v| match v {
                Verdict::Slip(bytes) => Some(bytes),
                _ => None,
            })
            .collect();
        assert_eq!(slipped.len(), 2, "every second one over the limit slips");
        let tc = Message::from_vec(slipped[0]).expect("a message");
        assert!(tc.truncation && tc.answers.is_empty() && tc.queries.len() == 1);
        // Same /24: limited too. Another network, or another question: not.
        assert_ne!(limiter.check(neighbour, &mx, start), Verdict::Send);
        assert_eq!(limiter.check(other, &mx, start), Verdict::Send);
        let a = response("sandbox.test.", RecordType::A);
        assert_eq!(limiter.check(flooder, &a, start), Verdict::Send);
        // Tokens come back with time.
        let later = start + Duration::from_millis(400);
        assert_eq!(limiter.check(flooder, &mx, later), Verdict::Send);

        // NXDOMAIN for different names share one bucket.
        let sent = (0..20)
            .filter(|i| {
                let nx = response(&format!("r{i}.nowhere.sandbox.test."), RecordType::A);
                limiter.check(other, &nx, start) == Verdict::Send
            })
            .count();
        assert_eq!(sent, 5);
    }

    #[test]
    fn exempt_networks_and_off() {
        let mut limiter = Limiter::new(&RrlConfig::default())
            .expect("valid")
            .expect("enabled");
        let mx = response("sandbox.test.", RecordType::MX);
        let now = Instant::now();
        assert!((0..100)
            .all(|_| limiter.check(IpAddr::V4(Ipv4Addr::LOCALHOST), &mx, now) == Verdict::Send));
        let off = RrlConfig {
            enabled: false,
            ..RrlConfig::default()
        };
        assert!(Limiter::new(&off).expect("valid").is_none());
        let bad = RrlConfig {
            exempt: vec!["not an address".into()],
            ..RrlConfig::default()
        };
        assert!(Limiter::new(&bad).is_err());
    }
}
