//! The in-process adapter (`memory`, the default): hash maps split into shards, each behind
//! its own mutex, held only for a lookup and an update (never across an await), so API
//! requests on different keys rarely wait for each other. Time is this process's monotonic
//! clock. Everything is bounded ([`Limits`]): stored responses and cached values by bytes
//! (the entries closest to expiry go first), running idempotency keys and gate members by
//! count (refused beyond), rate-limit keys by count (idle ones go first).
//!
//! State dies with the process: after a restart idempotency keys are forgotten (the order
//! path's `client_order_id` is the durable guard) and gates must be rebuilt from the store.

use crate::{
    check_key, check_limit, check_ttl, check_value, gcra, Begin, CacheError, CacheFuture, Claim,
    Decision, Fingerprint, Gates, Idempotency, KvCache, Lease, Rate, RateLimiter, GATE_LIMIT_MAX,
};
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Shards per map: enough that two cores seldom meet on one lock.
const SHARDS: usize = 32;
/// What one stored entry costs beyond its key and value (map slots, expiry index, lengths):
/// an estimate, so that many tiny entries still count against the byte budget.
const ENTRY_OVERHEAD_BYTES: usize = 96;

/// Bounds of the in-process adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of finished idempotency records (keys and responses) kept; beyond, the records
    /// closest to expiry are forgotten first.
    pub idempotency_bytes_max: usize,
    /// Idempotency keys held by running requests at once; beyond, `begin` is refused.
    pub leases_max: usize,
    /// Rate-limit keys tracked at once; beyond, idle keys (whose bucket is full again) are
    /// dropped, then arbitrary ones (which then start from a full burst).
    pub rate_keys_max: usize,
    /// Members of all gates together; beyond, claims are refused.
    pub gate_members_max: u64,
    /// Bytes of KV cache entries kept; beyond, the entries closest to expiry go first.
    pub kv_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            idempotency_bytes_max: 256 * 1024 * 1024,
            leases_max: 100_000,
            rate_keys_max: 1_000_000,
            gate_members_max: 10_000_000,
            kv_bytes_max: 128 * 1024 * 1024,
        }
    }
}

pub struct MemoryCache {
    idempotency: Sharded<IdempotencyShard>,
    buckets: Sharded<Buckets>,
    gates: Sharded<HashMap<Box<str>, HashSet<Box<str>>>>,
    gate_members: AtomicU64,
    gate_members_max: u64,
    kv: Sharded<TtlMap<Arc<[u8]>>>,
    epoch: Instant,
    next_token: AtomicU64,
}

impl MemoryCache {
    pub fn new(limits: Limits) -> MemoryCache {
        let per_shard = |total: usize| (total / SHARDS).max(1);
        MemoryCache {
            idempotency: Sharded::new(|| IdempotencyShard {
                running: TtlMap::new(per_shard(limits.leases_max), Overflow::Refuse),
                done: TtlMap::new(
                    per_shard(limits.idempotency_bytes_max),
                    Overflow::EvictSoonest,
                ),
            }),
            buckets: Sharded::new(|| Buckets {
                tat_us: HashMap::new(),
                len_max: per_shard(limits.rate_keys_max),
            }),
            gates: Sharded::new(HashMap::new),
            gate_members: AtomicU64::new(0),
            gate_members_max: limits.gate_members_max,
            kv: Sharded::new(|| {
                TtlMap::new(per_shard(limits.kv_bytes_max), Overflow::EvictSoonest)
            }),
            epoch: Instant::now(),
            next_token: AtomicU64::new(1),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn begin_now(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &Fingerprint,
        lease_ms: u64,
    ) -> Result<Begin, CacheError> {
        check_key("idempotency scope", scope)?;
        check_key("idempotency key", key)?;
        check_ttl("an idempotency lease", lease_ms)?;
        let record = record_key(scope, key);
        let now = self.now_ms();
        let mut shard = self.idempotency.lock(&record);
        if let Some(done) = shard.done.get(&record, now) {
            return Ok(if done.fingerprint == *fingerprint {
                Begin::Done(done.response.to_vec())
            } else {
                Begin::Mismatch
            });
        }
        if let Some(running) = shard.running.get(&record, now) {
            return Ok(if running.fingerprint == *fingerprint {
                Begin::InProgress
            } else {
                Begin::Mismatch
            });
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let running = Running {
            fingerprint: *fingerprint,
            token,
        };
        // Counted, not sized: running keys are bounded by requests in flight.
        if !shard
            .running
            .insert(&record, running, 1, now + lease_ms, now)
        {
            return Err(CacheError::Full("idempotency keys in progress"));
        }
        Ok(Begin::New(Lease { token }))
    }

    fn complete_now(
        &self,
        scope: &str,
        key: &str,
        lease: Lease,
        response: &[u8],
        ttl_ms: u64,
    ) -> Result<(), CacheError> {
        check_value("an idempotent response", response)?;
        check_ttl("an idempotency record's TTL", ttl_ms)?;
        let record = record_key(scope, key);
        let now = self.now_ms();
        let mut shard = self.idempotency.lock(&record);
        let fingerprint = match shard.running.get(&record, now) {
            Some(running) if running.token == lease.token => running.fingerprint,
            _ => return Err(CacheError::LeaseLost),
        };
        shard.running.remove(&record);
        let done = Done {
            fingerprint,
            response: response.into(),
        };
        let bytes = record.len() + response.len() + ENTRY_OVERHEAD_BYTES;
        shard.done.insert(&record, done, bytes, now + ttl_ms, now);
        Ok(())
    }

    fn abandon_now(&self, scope: &str, key: &str, lease: Lease) {
        let record = record_key(scope, key);
        let now = self.now_ms();
        let mut shard = self.idempotency.lock(&record);
        if matches!(shard.running.get(&record, now), Some(r) if r.token == lease.token) {
            shard.running.remove(&record);
        }
    }

    fn claim_now(&self, gate: &str, member: &str, limit: u64) -> Result<Claim, CacheError> {
        check_key("gate", gate)?;
        check_key("gate member", member)?;
        check_limit(limit)?;
        let mut shard = self.gates.lock(gate);
        if !shard.contains_key(gate) {
            shard.insert(gate.into(), HashSet::new());
        }
        let members = shard.get_mut(gate).expect("inserted above");
        if members.contains(member) {
            return Ok(Claim::AlreadyClaimed);
        }
        if members.len() as u64 >= limit {
            return Ok(Claim::SoldOut);
        }
        if self.gate_members.fetch_add(1, Ordering::Relaxed) >= self.gate_members_max {
            self.gate_members.fetch_sub(1, Ordering::Relaxed);
            if members.is_empty() {
                shard.remove(gate); // no empty gate left behind by a refused claim
            }
            return Err(CacheError::Full("gate members"));
        }
        members.insert(member.into());
        Ok(Claim::Claimed)
    }

    fn release_now(&self, gate: &str, member: &str) -> bool {
        let mut shard = self.gates.lock(gate);
        let Some(members) = shard.get_mut(gate) else {
            return false;
        };
        let held = members.remove(member);
        if held {
            self.gate_members.fetch_sub(1, Ordering::Relaxed);
        }
        if members.is_empty() {
            shard.remove(gate);
        }
        held
    }

    fn reset_now(&self, gate: &str, members: &[String]) -> Result<(), CacheError> {
        check_key("gate", gate)?;
        let mut new: HashSet<Box<str>> = HashSet::with_capacity(members.len());
        for m in members {
            check_key("gate member", m)?;
            new.insert(m.as_str().into());
        }
        if new.len() as u64 > GATE_LIMIT_MAX {
            return Err(CacheError::Invalid(format!(
                "a gate holds at most {GATE_LIMIT_MAX} members"
            )));
        }
        let mut shard = self.gates.lock(gate);
        let old = shard.get(gate).map_or(0, |m| m.len()) as u64;
        let added = new.len() as u64;
        // Take the new members' room first, so that a failed reset changes nothing.
        let total = self.gate_members.fetch_add(added, Ordering::Relaxed) + added;
        if total - old > self.gate_members_max {
            self.gate_members.fetch_sub(added, Ordering::Relaxed);
            return Err(CacheError::Full("gate members"));
        }
        self.gate_members.fetch_sub(old, Ordering::Relaxed);
        if new.is_empty() {
            shard.remove(gate);
        } else {
            shard.insert(gate.into(), new);
        }
        Ok(())
    }

    fn set_now(&self, key: &str, value: &[u8], ttl_ms: u64) -> Result<(), CacheError> {
        check_key("cache key", key)?;
        check_value("a cached value", value)?;
        check_ttl("a cache TTL", ttl_ms)?;
        let now = self.now_ms();
        let bytes = key.len() + value.len() + ENTRY_OVERHEAD_BYTES;
        self.kv
            .lock(key)
            .insert(key, value.into(), bytes, now + ttl_ms, now);
        Ok(())
    }
}

/// `scope` and `key` in one string, the scope's length first, so that no (scope, key) pair
/// can spell another.
fn record_key(scope: &str, key: &str) -> String {
    format!("{}:{scope}:{key}", scope.len())
}

impl Idempotency for MemoryCache {
    fn begin<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        fingerprint: &'a Fingerprint,
        lease_ms: u64,
    ) -> CacheFuture<'a, Begin> {
        ready(self.begin_now(scope, key, fingerprint, lease_ms))
    }

    fn complete<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        lease: Lease,
        response: &'a [u8],
        ttl_ms: u64,
    ) -> CacheFuture<'a, ()> {
        ready(self.complete_now(scope, key, lease, response, ttl_ms))
    }

    fn abandon<'a>(&'a self, scope: &'a str, key: &'a str, lease: Lease) -> CacheFuture<'a, ()> {
        self.abandon_now(scope, key, lease);
        ready(Ok(()))
    }
}

impl RateLimiter for MemoryCache {
    fn allow<'a>(&'a self, key: &'a str, rate: Rate) -> CacheFuture<'a, Decision> {
        ready(check_key("rate-limit key", key).map(|()| {
            let now = self.now_us();
            self.buckets.lock(key).allow(key, now, rate)
        }))
    }
}

impl Gates for MemoryCache {
    fn claim<'a>(&'a self, gate: &'a str, member: &'a str, limit: u64) -> CacheFuture<'a, Claim> {
        ready(self.claim_now(gate, member, limit))
    }

    fn release<'a>(&'a self, gate: &'a str, member: &'a str) -> CacheFuture<'a, bool> {
        ready(Ok(self.release_now(gate, member)))
    }

    fn count<'a>(&'a self, gate: &'a str) -> CacheFuture<'a, u64> {
        let count = self
            .gates
            .lock(gate)
            .get(gate)
            .map_or(0, |m| m.len() as u64);
        ready(Ok(count))
    }

    fn members<'a>(&'a self, gate: &'a str) -> CacheFuture<'a, Vec<String>> {
        let members = self
            .gates
            .lock(gate)
            .get(gate)
            .map_or_else(Vec::new, |m| m.iter().map(|s| s.to_string()).collect());
        ready(Ok(members))
    }

    fn reset_from<'a>(&'a self, gate: &'a str, members: &'a [String]) -> CacheFuture<'a, ()> {
        ready(self.reset_now(gate, members))
    }
}

impl KvCache for MemoryCache {
    fn get<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Option<Vec<u8>>> {
        let now = self.now_ms();
        let value = self.kv.lock(key).get(key, now).map(|v| v.to_vec());
        ready(Ok(value))
    }

    fn set<'a>(&'a self, key: &'a str, value: &'a [u8], ttl_ms: u64) -> CacheFuture<'a, ()> {
        ready(self.set_now(key, value, ttl_ms))
    }

    fn delete<'a>(&'a self, key: &'a str) -> CacheFuture<'a, bool> {
        let now = self.now_ms();
        let mut shard = self.kv.lock(key);
        // An expired entry is as good as absent: `get` drops it and reports nothing.
        let existed = shard.get(key, now).is_some();
        shard.remove(key);
        ready(Ok(existed))
    }
}

/// Every call here completes before it returns; the future only carries the result.
fn ready<'a, T: Send + 'a>(result: Result<T, CacheError>) -> CacheFuture<'a, T> {
    Box::pin(std::future::ready(result))
}

/// A map split into `SHARDS` mutex-guarded parts by a keyed hash of the key (keyed, so that
/// clients cannot aim their keys at one shard).
struct Sharded<T> {
    shards: Box<[Mutex<T>]>,
    hasher: RandomState,
}

impl<T> Sharded<T> {
    fn new(make: impl Fn() -> T) -> Sharded<T> {
        Sharded {
            shards: (0..SHARDS).map(|_| Mutex::new(make())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn lock(&self, key: &str) -> MutexGuard<'_, T> {
        let i = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        // No code panics while holding a shard, so a poisoned lock still holds whole data.
        self.shards[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

struct IdempotencyShard {
    running: TtlMap<Running>,
    done: TtlMap<Done>,
}

struct Running {
    fingerprint: Fingerprint,
    token: u64,
}

struct Done {
    fingerprint: Fingerprint,
    response: Arc<[u8]>,
}

/// GCRA state of one shard: the theoretical arrival time of each key's next request.
struct Buckets {
    tat_us: HashMap<Box<str>, u64>,
    len_max: usize,
}

impl Buckets {
    fn allow(&mut self, key: &str, now_us: u64, rate: Rate) -> Decision {
        let (decision, new_tat) = gcra(self.tat_us.get(key).copied(), now_us, rate);
        if let Some(tat) = new_tat {
            match self.tat_us.get_mut(key) {
                Some(stored) => *stored = tat,
                None => {
                    self.make_room(now_us);
                    self.tat_us.insert(key.into(), tat);
                }
            }
        }
        decision
    }

    /// At the bound, drops the keys whose TAT has passed (a full bucket, the same as no
    /// entry at all); if that frees less than a quarter, drops arbitrary keys down to three
    /// quarters, so that the scan runs at most once per quarter of inserts.
    fn make_room(&mut self, now_us: u64) {
        if self.tat_us.len() < self.len_max {
            return;
        }
        self.tat_us.retain(|_, tat| *tat > now_us);
        let target = self.len_max * 3 / 4;
        let mut excess = self.tat_us.len().saturating_sub(target);
        self.tat_us.retain(|_, _| {
            let keep = excess == 0;
            excess = excess.saturating_sub(1);
            keep
        });
    }
}

/// What a full [`TtlMap`] does with one more entry.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Overflow {
    /// Make room by dropping the entries closest to expiry (a cache).
    EvictSoonest,
    /// Refuse the new entry (a lock table: dropping a held lock would break it).
    Refuse,
}

/// A map whose entries expire, bounded by a size sum that the caller gives per entry, with
/// an index by expiry so that expired entries are dropped in order and overflow evicts the
/// entries closest to expiry.
struct TtlMap<V> {
    entries: HashMap<Arc<str>, Slot<V>>,
    by_expiry: BTreeMap<(u64, u64), Arc<str>>,
    next_seq: u64,
    size: usize,
    size_max: usize,
    overflow: Overflow,
}

struct Slot<V> {
    value: V,
    expires_at_ms: u64,
    seq: u64,
    size: usize,
}

impl<V> TtlMap<V> {
    fn new(size_max: usize, overflow: Overflow) -> TtlMap<V> {
        TtlMap {
            entries: HashMap::new(),
            by_expiry: BTreeMap::new(),
            next_seq: 0,
            size: 0,
            size_max,
            overflow,
        }
    }

    /// The live value of `key`; an expired one is dropped.
    fn get(&mut self, key: &str, now_ms: u64) -> Option<&V> {
        let expired = self.entries.get(key)?.expires_at_ms <= now_ms;
        if expired {
            self.remove(key);
            return None;
        }
        self.entries.get(key).map(|slot| &slot.value)
    }

    /// Stores `value` in place of any older one. Whether it was stored (`Refuse` maps
    /// refuse when full).
    fn insert(
        &mut self,
        key: &str,
        value: V,
        size: usize,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> bool {
        self.remove(key);
        self.drop_expired(now_ms);
        if self.overflow == Overflow::Refuse && self.size + size > self.size_max {
            return false;
        }
        let key: Arc<str> = key.into();
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_expiry.insert((expires_at_ms, seq), key.clone());
        let slot = Slot {
            value,
            expires_at_ms,
            seq,
            size,
        };
        self.entries.insert(key, slot);
        self.size += size;
        while self.size > self.size_max {
            let Some((_, soonest)) = self.by_expiry.pop_first() else {
                break;
            };
            let slot = self
                .entries
                .remove(&soonest)
                .expect("indexed entries exist");
            self.size -= slot.size;
        }
        true
    }

    fn remove(&mut self, key: &str) -> Option<V> {
        let slot = self.entries.remove(key)?;
        self.by_expiry.remove(&(slot.expires_at_ms, slot.seq));
        self.size -= slot.size;
        Some(slot.value)
    }

    fn drop_expired(&mut self, now_ms: u64) {
        while let Some(entry) = self.by_expiry.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            let key = entry.remove();
            let slot = self.entries.remove(&key).expect("indexed entries exist");
            self.size -= slot.size;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            idempotency_bytes_max: SHARDS * 4 * 1024,
            leases_max: SHARDS,
            rate_keys_max: SHARDS * 8,
            gate_members_max: 5,
            kv_bytes_max: SHARDS * 1024,
        }
    }

    #[test]
    fn ttl_maps_evict_the_entries_closest_to_expiry_first() {
        let mut map = TtlMap::new(300, Overflow::EvictSoonest);
        assert!(map.insert("late", 1, 100, 3_000, 0));
        assert!(map.insert("soon", 2, 100, 1_000, 0));
        assert!(map.insert("middle", 3, 100, 2_000, 0));
        assert!(map.insert("new", 4, 100, 5_000, 0)); // over budget: "soon" goes
        assert!(map.get("soon", 0).is_none());
        assert_eq!(map.get("late", 0), Some(&1));
        // Expired entries vanish and give their room back.
        assert!(map.get("middle", 2_000).is_none());
        assert_eq!(
            (map.entries.len(), map.by_expiry.len(), map.size),
            (2, 2, 200)
        );
        // Replacing an entry does not count it twice.
        assert!(map.insert("late", 5, 100, 4_000, 0));
        assert_eq!((map.entries.len(), map.size), (2, 200));
    }

    #[test]
    fn lock_tables_refuse_instead_of_evicting() {
        let mut map = TtlMap::new(2, Overflow::Refuse);
        assert!(map.insert("a", (), 1, 100, 0));
        assert!(map.insert("b", (), 1, 100, 0));
        assert!(!map.insert("c", (), 1, 100, 0));
        assert_eq!(map.entries.len(), 2);
        // An expired lock is dropped to make room.
        assert!(map.insert("c", (), 1, 200, 100));
        assert!(map.get("a", 100).is_none());
    }

    #[tokio::test]
    async fn running_keys_are_refused_beyond_the_bound() {
        let cache = MemoryCache::new(limits()); // one running key per shard
        let fp = Fingerprint::of(&[b"x"]);
        let mut refused = 0;
        for i in 0..(SHARDS * 4) {
            match cache.begin("s", &i.to_string(), &fp, 60_000).await {
                Ok(Begin::New(_)) => {}
                Err(CacheError::Full(_)) => refused += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!(refused >= SHARDS * 3, "{refused}");
    }

    #[tokio::test]
    async fn gate_members_are_bounded_in_total() {
        let cache = MemoryCache::new(limits()); // 5 members across all gates
        for i in 0..5 {
            let gate = format!("g{}", i % 2);
            assert_eq!(
                cache.claim(&gate, &i.to_string(), 10).await,
                Ok(Claim::Claimed)
            );
        }
        assert_eq!(
            cache.claim("g9", "m", 10).await,
            Err(CacheError::Full("gate members"))
        );
        assert!(cache.gates.lock("g9").get("g9").is_none());
        assert!(cache.release("g0", "0").await.unwrap());
        assert_eq!(cache.claim("g9", "m", 10).await, Ok(Claim::Claimed));
        let too_many: Vec<String> = (0..6).map(|i| i.to_string()).collect();
        assert!(matches!(
            cache.reset_from("g0", &too_many).await,
            Err(CacheError::Full(_))
        ));
        assert_eq!(cache.count("g0").await, Ok(2)); // unchanged
    }

    #[test]
    fn idle_rate_keys_make_room_first() {
        let mut buckets = Buckets {
            tat_us: HashMap::new(),
            len_max: 8,
        };
        let rate = Rate::per_second(1_000, 1).unwrap(); // TAT = now + 1 ms
        for i in 0..8 {
            assert!(buckets.allow(&i.to_string(), 0, rate).allowed);
        }
        // At 2 ms every key is idle again: all are dropped to admit the new one.
        assert!(buckets.allow("new", 2_000, rate).allowed);
        assert_eq!(buckets.tat_us.len(), 1);
        // All busy: arbitrary keys go, down to three quarters.
        for i in 0..7 {
            buckets.allow(&format!("busy{i}"), 2_000, rate);
        }
        buckets.allow("one more", 2_000, rate);
        assert_eq!(buckets.tat_us.len(), 8 * 3 / 4 + 1);
    }
}
