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

use hickory_proto::op::{LowerQuery, ResponseCode};
use serde::Deserialize;

use super::wire::Reply;
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
    /// Send the reply empty, with TC set ([`Reply::truncated`]).
    Slip,
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

    /// Counts `reply` to `question` from `client` at `now`.
    pub(super) fn check(
        &mut self,
        client: IpAddr,
        reply: &Reply,
        question: Option<&LowerQuery>,
        now: Instant,
    ) -> Verdict {
        let client = client.to_canonical();
        if self.exempt.iter().any(|n| n.contains(client)) {
            return Verdict::Send;
        }
        let (kind, question) = classify(reply, question);
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
            Verdict::Slip
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

/// The kind of `reply` and the hash of what it counts against: the question (name
/// without case, and type) for answers and NODATA, nothing for NXDOMAIN and errors.
fn classify(reply: &Reply, question: Option<&LowerQuery>) -> (Kind, u64) {
    let kind = match reply.metadata.response_code {
        ResponseCode::NoError if reply.answers.is_empty() => Kind::NoData,
        ResponseCode::NoError => Kind::Answer,
        ResponseCode::NXDomain => Kind::NxDomain,
        _ => Kind::Error,
    };
    let mut hash = std::collections::hash_map::DefaultHasher::new();
    if let (Kind::Answer | Kind::NoData, Some(question)) = (kind, question) {
        question.name().hash(&mut hash);
        u16::from(question.query_type()).hash(&mut hash);
    }
    (kind, hash.finish())
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::{Duration, Instant};

    use hickory_proto::op::LowerQuery;
    use hickory_proto::rr::RecordType;
    use hickory_server::net::xfer::Protocol;
    use hickory_server::server::Request;

    use super::{Limiter, RrlConfig, Verdict};
    use crate::dns::tests::{query, sandbox_zone};
    use crate::dns::wire::{reply, Reply};

    /// The reply to a query for `name` and `qtype`, and its question.
    fn response(name: &str, qtype: RecordType) -> (Reply, Option<LowerQuery>) {
        let bytes = query(name, qtype, Some(1232)).to_vec().expect("encode");
        let request =
            Request::from_bytes(bytes, "192.0.2.1:53".parse().expect("addr"), Protocol::Udp)
                .expect("parses");
        let reply = reply(&request, Protocol::Udp, sandbox_zone().as_ref()).expect("a reply");
        (reply, request.queries.queries().first().cloned())
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
        let (mx, mx_q) = response("sandbox.test.", RecordType::MX);
        let mx_q = mx_q.as_ref();
        let verdicts: Vec<Verdict> = (0..9)
            .map(|_| limiter.check(flooder, &mx, mx_q, start))
            .collect();
        assert!(
            verdicts[..5].iter().all(|v| *v == Verdict::Send),
            "{verdicts:?}"
        );
        let slipped = verdicts[5..]
            .iter()
            .filter(|v| **v == Verdict::Slip)
            .count();
        assert_eq!(slipped, 2, "every second one over the limit slips");
        let tc = mx.truncated();
        assert!(tc.metadata.truncation && tc.answers.is_empty() && tc.edns.is_some());
        // Same /24: limited too. Another network, or another question: not.
        assert_ne!(limiter.check(neighbour, &mx, mx_q, start), Verdict::Send);
        assert_eq!(limiter.check(other, &mx, mx_q, start), Verdict::Send);
        let (a, a_q) = response("sandbox.test.", RecordType::A);
        assert_eq!(
            limiter.check(flooder, &a, a_q.as_ref(), start),
            Verdict::Send
        );
        // Tokens come back with time.
        let later = start + Duration::from_millis(400);
        assert_eq!(limiter.check(flooder, &mx, mx_q, later), Verdict::Send);

        // NXDOMAIN for different names share one bucket.
        let sent = (0..20)
            .filter(|i| {
                let (nx, nx_q) = response(&format!("r{i}.nowhere.sandbox.test."), RecordType::A);
                limiter.check(other, &nx, nx_q.as_ref(), start) == Verdict::Send
            })
            .count();
        assert_eq!(sent, 5);
    }

    #[test]
    fn exempt_networks_and_off() {
        let mut limiter = Limiter::new(&RrlConfig::default())
            .expect("valid")
            .expect("enabled");
        let (mx, mx_q) = response("sandbox.test.", RecordType::MX);
        let now = Instant::now();
        assert!((0..100).all(|_| limiter.check(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            &mx,
            mx_q.as_ref(),
            now
        ) == Verdict::Send));
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
