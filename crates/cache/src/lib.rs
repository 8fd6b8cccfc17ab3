//! The cache/counters port: hot state that is cheap to lose or rebuild, shared by every API
//! process of a deployment. Four capabilities, each its own trait, all behind one
//! [`Cache`] object:
//!
//! - [`Idempotency`]: `Idempotency-Key` records with Stripe's semantics (the first request
//!   with a key runs, holding a lease; later ones with the same key and body get its stored
//!   answer; the same key with another body is refused);
//! - [`RateLimiter`]: GCRA (a token bucket without a refill timer) per key;
//! - [`Gates`]: counting gates for first-come, limited things (coupon claims, stock): exactly
//!   `limit` members, never one more, however many claim at once;
//! - [`KvCache`]: a small byte cache with a TTL (market data).
//!
//! Adapters: [`memory::MemoryCache`] (in-process, the default) and [`redis::RedisCache`]
//! (`redis://host:port/db`, Lua scripts where a check and an update must be one step). Every
//! call is bounded: key and value sizes ([`KEY_BYTES_MAX`], [`VALUE_BYTES_MAX`]), gate sizes
//! ([`GATE_LIMIT_MAX`]), and time (the Redis adapter's deadline per call). Errors are
//! [`CacheError`]: no backend type leaks out of the port.
//!
//! What lives here is never the truth of record: a lost idempotency record or rate-limit
//! bucket costs a retry's protection or a burst, and a counting gate is rebuilt from the
//! store (`Gates::reset_from`) by reconciliation.

pub mod memory;
pub mod redis;
pub mod testing;

use sha2::{Digest, Sha256};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Longest key, scope, gate name or member, in bytes.
pub const KEY_BYTES_MAX: usize = 512;
/// Largest stored value (an idempotent response, a cached market-data body), in bytes.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Largest `limit` of one counting gate (and so the most members it can hold).
pub const GATE_LIMIT_MAX: u64 = 1_000_000;
/// Longest TTL or lease, in milliseconds: 30 days.
pub const TTL_MS_MAX: u64 = 30 * 24 * 3_600_000;

/// What a cache call returns: boxed so that the port can be used as `dyn Cache`.
pub type CacheFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, CacheError>> + Send + 'a>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// A key, member or value over its limit. The caller's fault; nothing was changed.
    #[error("{what} is {len} bytes, more than the {max} allowed")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    /// An argument out of range (a zero TTL, a gate limit of 0 or over the maximum, ...).
    #[error("{0}")]
    Invalid(String),
    /// The in-process adapter holds as much as it was allowed to; nothing was changed.
    #[error("the in-process cache is full ({0})")]
    Full(&'static str),
    /// `complete` after the lease ran out: another request may have taken the key since.
    #[error("the idempotency lease was lost before the request completed")]
    LeaseLost,
    /// The backend did not answer within the deadline.
    #[error("the cache did not answer within {0} ms")]
    Timeout(u64),
    /// The backend failed or cannot be reached (connection refused, script error, ...).
    #[error("cache backend: {0}")]
    Backend(String),
}

/// SHA-256 of what makes two requests "the same" (method, path, body): a key reused with a
/// different fingerprint is a client bug, answered with [`Begin::Mismatch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Hashes the parts, each prefixed with its length, so that `["ab", "c"]` and
    /// `["a", "bc"]` differ.
    pub fn of(parts: &[&[u8]]) -> Fingerprint {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        Fingerprint(hasher.finalize().into())
    }
}

/// Proof of owning an idempotency key between [`Begin::New`] and `complete`/`abandon`:
/// a request whose lease expired and was taken over cannot complete or free the new owner's
/// record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a lease must be completed or abandoned"]
pub struct Lease {
    pub token: u64,
}

/// What `begin` found for an idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Begin {
    /// No record: the caller owns the key for `lease_ms` and must `complete` or `abandon`.
    New(Lease),
    /// Another request with the same key and fingerprint is running.
    InProgress,
    /// A request with the same key and fingerprint finished: its stored response.
    Done(Vec<u8>),
    /// The key was used with a different fingerprint.
    Mismatch,
}

/// Idempotency keys. Records are per `scope` (a user, say), so two users' keys never meet.
pub trait Idempotency: Send + Sync {
    /// Looks the key up and, if it is unknown (or its lease ran out), takes it for
    /// `lease_ms`, in one atomic step: of concurrent callers exactly one gets `New`.
    fn begin<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        fingerprint: &'a Fingerprint,
        lease_ms: u64,
    ) -> CacheFuture<'a, Begin>;

    /// Stores the response of the request holding `lease`, kept `ttl_ms` from now; later
    /// `begin`s with the same fingerprint get it as `Done`. `LeaseLost` if the lease is gone.
    fn complete<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        lease: Lease,
        response: &'a [u8],
        ttl_ms: u64,
    ) -> CacheFuture<'a, ()>;

    /// Frees the key (the request failed in a way worth retrying), if `lease` still holds it.
    fn abandon<'a>(&'a self, scope: &'a str, key: &'a str, lease: Lease) -> CacheFuture<'a, ()>;
}

/// A rate: one request every `interval_us` on average, up to `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub interval_us: u64,
    pub burst: u32,
}

impl Rate {
    /// `per_s` requests per second, `burst` at once; both at least 1, `per_s` at most
    /// 1,000,000.
    pub fn per_second(per_s: u32, burst: u32) -> Result<Rate, CacheError> {
        if !(1..=1_000_000).contains(&per_s) || burst == 0 {
            return Err(CacheError::Invalid(
                "a rate is 1 to 1000000 per second with a burst of at least 1".into(),
            ));
        }
        Ok(Rate {
            interval_us: 1_000_000 / u64::from(per_s),
            burst,
        })
    }
}

/// The answer of the rate limiter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// When refused: how long until one request would be allowed (rounded up).
    pub retry_after_ms: u64,
    /// Requests that could follow at once, not counting this one.
    pub remaining: u32,
}

/// GCRA, the generic cell rate algorithm: per key one number, the theoretical arrival time
/// (TAT) of the next request at the sustained rate. A request at `now` is allowed when
/// `TAT + interval − burst × interval ≤ now`, and then moves TAT on by one interval. Same
/// behaviour as a token bucket of `burst` tokens refilled every `interval`, with one write
/// per request and no refill timer.
pub trait RateLimiter: Send + Sync {
    /// Counts one request against `key`, if `rate` allows it. All API processes sharing a
    /// backend share the limit (the Redis adapter reads the server's clock).
    fn allow<'a>(&'a self, key: &'a str, rate: Rate) -> CacheFuture<'a, Decision>;
}

/// What a claim on a counting gate got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    Claimed,
    /// The member holds a unit already (a retry, or a second claim by the same user).
    AlreadyClaimed,
    /// `limit` members hold one: none is left.
    SoldOut,
}

/// Counting gates: a named set of members of at most `limit`, checked and grown in one
/// atomic step, so that exactly `limit` claims succeed however many race. The durable record
/// of a claim is the store's; a gate is the fast, shared admission check in front of it.
pub trait Gates: Send + Sync {
    /// Claims one unit for `member`: already a member? fewer than `limit` members? add it.
    fn claim<'a>(&'a self, gate: &'a str, member: &'a str, limit: u64) -> CacheFuture<'a, Claim>;

    /// Gives `member`'s unit back (its durable write failed). Whether it held one.
    fn release<'a>(&'a self, gate: &'a str, member: &'a str) -> CacheFuture<'a, bool>;

    /// Members holding a unit.
    fn count<'a>(&'a self, gate: &'a str) -> CacheFuture<'a, u64>;

    /// Every member, in no particular order (for reconciliation with the store).
    fn members<'a>(&'a self, gate: &'a str) -> CacheFuture<'a, Vec<String>>;

    /// Replaces the gate's members with `members` (the store's truth), atomically.
    fn reset_from<'a>(&'a self, gate: &'a str, members: &'a [String]) -> CacheFuture<'a, ()>;
}

/// A small byte cache with a time to live.
pub trait KvCache: Send + Sync {
    fn get<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Option<Vec<u8>>>;
    fn set<'a>(&'a self, key: &'a str, value: &'a [u8], ttl_ms: u64) -> CacheFuture<'a, ()>;
    /// Whether there was a value.
    fn delete<'a>(&'a self, key: &'a str) -> CacheFuture<'a, bool>;
}

/// The whole port: what the server holds as `Arc<dyn Cache>`.
pub trait Cache: Idempotency + RateLimiter + Gates + KvCache + 'static {}

impl<T: Idempotency + RateLimiter + Gates + KvCache + 'static> Cache for T {}

/// Which adapter, as configured (`memory` or `redis://host:port/db`). Printed (`Display`,
/// `Debug`) without credentials, so it can go to logs.
#[derive(Clone, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Redis(String),
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Memory => f.write_str("memory"),
            Backend::Redis(url) => match ::redis::Client::open(url.as_str()) {
                Ok(client) => {
                    let info = client.get_connection_info();
                    let db = info.redis_settings().db();
                    write!(f, "redis://{}/{db}", info.addr())
                }
                Err(_) => f.write_str("redis://(not a usable URL)"),
            },
        }
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl Backend {
    /// Parses a cache URL. A Redis URL is checked for form here; it is reached by `open`.
    pub fn parse(url: &str) -> Result<Backend, CacheError> {
        if url == "memory" {
            return Ok(Backend::Memory);
        }
        if url.starts_with("redis://") || url.starts_with("redis+unix://") {
            // The error does not repeat the URL: it may hold a password.
            ::redis::Client::open(url)
                .map_err(|e| CacheError::Invalid(format!("not a usable Redis URL: {e}")))?;
            return Ok(Backend::Redis(url.to_string()));
        }
        Err(CacheError::Invalid(format!(
            "{url:?}: the cache is `memory` or `redis://host:port/db`"
        )))
    }
}

/// How to open a cache.
#[derive(Clone, Debug)]
pub struct Options {
    /// Prefix of every Redis key (`PREFIX:idem:…`), so that several deployments (or test
    /// runs) can share one Redis database.
    pub prefix: String,
    /// Deadline of one Redis call, connecting included.
    pub timeout: Duration,
    /// Bounds of the in-process adapter.
    pub memory: memory::Limits,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            prefix: "agora".into(),
            timeout: Duration::from_secs(1),
            memory: memory::Limits::default(),
        }
    }
}

/// Opens the configured adapter; a Redis adapter has connected once when this returns.
pub async fn open(backend: &Backend, options: &Options) -> Result<Arc<dyn Cache>, CacheError> {
    Ok(match backend {
        Backend::Memory => Arc::new(memory::MemoryCache::new(options.memory)),
        Backend::Redis(url) => Arc::new(
            crate::redis::RedisCache::connect(url, &options.prefix, options.timeout).await?,
        ),
    })
}

// ---- argument checks shared by the adapters ----

fn check_key(what: &'static str, key: &str) -> Result<(), CacheError> {
    if key.len() > KEY_BYTES_MAX {
        return Err(CacheError::TooLarge {
            what,
            len: key.len(),
            max: KEY_BYTES_MAX,
        });
    }
    Ok(())
}

fn check_value(what: &'static str, value: &[u8]) -> Result<(), CacheError> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(CacheError::TooLarge {
            what,
            len: value.len(),
            max: VALUE_BYTES_MAX,
        });
    }
    Ok(())
}

fn check_ttl(what: &'static str, ttl_ms: u64) -> Result<(), CacheError> {
    if !(1..=TTL_MS_MAX).contains(&ttl_ms) {
        return Err(CacheError::Invalid(format!(
            "{what} must be 1 to {TTL_MS_MAX} ms, not {ttl_ms}"
        )));
    }
    Ok(())
}

fn check_limit(limit: u64) -> Result<(), CacheError> {
    if !(1..=GATE_LIMIT_MAX).contains(&limit) {
        return Err(CacheError::Invalid(format!(
            "a gate's limit must be 1 to {GATE_LIMIT_MAX}, not {limit}"
        )));
    }
    Ok(())
}

/// GCRA at `now_us` given the stored TAT (`None`: never seen, or expired). Returns the
/// decision and, when allowed, the new TAT. The Redis adapter runs the same arithmetic in
/// Lua (`redis.rs`), where this function cannot go.
fn gcra(tat_us: Option<u64>, now_us: u64, rate: Rate) -> (Decision, Option<u64>) {
    let tat = tat_us.unwrap_or(now_us).max(now_us);
    let new_tat = tat + rate.interval_us;
    // The earliest moment this request fits: `burst` intervals before its new TAT (before
    // the clock's zero, for a clock that started recently: signed).
    let allow_at = new_tat as i128 - i128::from(rate.interval_us) * i128::from(rate.burst);
    let now = i128::from(now_us);
    if now < allow_at {
        let decision = Decision {
            allowed: false,
            retry_after_ms: ((allow_at - now) as u64).div_ceil(1_000),
            remaining: 0,
        };
        return (decision, None);
    }
    let remaining = ((now - allow_at) / i128::from(rate.interval_us)).min(u32::MAX.into()) as u32;
    let decision = Decision {
        allowed: true,
        retry_after_ms: 0,
        remaining,
    };
    (decision, Some(new_tat))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_a_burst_then_one_per_interval() {
        let rate = Rate::per_second(10, 3).unwrap(); // 100 ms apart, 3 at once
        let mut tat = None;
        let mut remaining = Vec::new();
        for _ in 0..3 {
            let (d, next) = gcra(tat, 1_000_000, rate);
            assert!(d.allowed);
            remaining.push(d.remaining);
            tat = next;
        }
        assert_eq!(remaining, [2, 1, 0]);
        let (refused, next) = gcra(tat, 1_000_000, rate);
        assert_eq!(
            (refused.allowed, refused.retry_after_ms, next),
            (false, 100, None)
        );
        // 100 ms later exactly one more fits.
        let (d, next) = gcra(tat, 1_100_000, rate);
        assert!(d.allowed && d.remaining == 0);
        assert!(!gcra(next, 1_100_000, rate).0.allowed);
        // Idle for long: the full burst again, never more.
        let (d, _) = gcra(next, 9_000_000, rate);
        assert_eq!(d.remaining, 2);
        // A clock that started a moment ago (the in-process adapter's) changes nothing.
        assert_eq!(gcra(None, 5, rate).0.remaining, 2);
    }

    #[test]
    fn fingerprints_separate_their_parts() {
        assert_ne!(
            Fingerprint::of(&[b"ab", b"c"]),
            Fingerprint::of(&[b"a", b"bc"])
        );
        assert_eq!(Fingerprint::of(&[b"x"]), Fingerprint::of(&[b"x"]));
    }

    #[test]
    fn backends_parse_from_urls() {
        assert_eq!(Backend::parse("memory").unwrap(), Backend::Memory);
        assert_eq!(
            Backend::parse("redis://127.0.0.1:6379/15").unwrap(),
            Backend::Redis("redis://127.0.0.1:6379/15".into())
        );
        assert!(Backend::parse("memcached://x").is_err());
        assert!(Backend::parse("redis://127.0.0.1:notaport").is_err());
        assert!(Rate::per_second(0, 1).is_err() && Rate::per_second(1, 0).is_err());
        let secret = Backend::parse("redis://agora:s3cret@10.0.0.7:6380/2").unwrap();
        assert_eq!(secret.to_string(), "redis://10.0.0.7:6380/2");
        assert_eq!(format!("{secret:?}"), "redis://10.0.0.7:6380/2");
    }
}
