//! The Redis adapter (`redis://host:port/db`): one multiplexed connection per process (the
//! `redis` crate's `ConnectionManager`, which reconnects by itself), every call bounded by a
//! deadline, and a Lua script wherever a check and an update must be one step — Redis runs
//! a script alone, so no other client sees or interleaves with its middle. Each script
//! touches exactly one key, so they also work on a Redis Cluster.
//!
//! Keys (all under the configured prefix):
//! - `P:idem:<scope length>:<scope>:<key>`: a hash {fingerprint, token while running,
//!   response once done}, expiring with the lease, then with the record's TTL;
//! - `P:rate:<key>`: the GCRA TAT in microseconds of Redis server time, expiring when the
//!   bucket is full again;
//! - `P:gate:<gate>`: a set of members, never expiring (a gate is removed by resetting it
//!   empty);
//! - `P:kv:<key>`: a string with its TTL.
//!
//! Needs Redis 5 or later (scripts that read `TIME` before writing are replicated by their
//! effects). Memory: configure `maxmemory` with a `volatile-*` policy, so that Redis may
//! evict idempotency records and cached values (which have a TTL) but never a gate (which
//! has none).

use crate::{
    check_key, check_limit, check_ttl, check_value, Begin, CacheError, CacheFuture, Claim,
    Decision, Fingerprint, Gates, Idempotency, KvCache, Lease, Rate, RateLimiter, GATE_LIMIT_MAX,
};
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{cmd, Client, RedisResult, Script, Value};
use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Members sent per `SADD` and asked per `SSCAN`: big enough to be few round trips, small
/// enough that no single command blocks Redis for long.
const MEMBERS_PER_CALL: usize = 1_000;

/// `begin`: absent → take the key (0); same fingerprint → its response if done, else 1
/// (in progress); other fingerprint → 3.
const BEGIN: &str = r"
local fingerprint = redis.call('HGET', KEYS[1], 'fingerprint')
if not fingerprint then
  redis.call('HSET', KEYS[1], 'fingerprint', ARGV[1], 'token', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 0
end
if fingerprint ~= ARGV[1] then return 3 end
local response = redis.call('HGET', KEYS[1], 'response')
if response then return response end
return 1
";

/// `complete`: only the lease's holder (ARGV[1]) stores the response (ARGV[2]), kept ARGV[3]
/// ms. 0 when the lease is gone.
const COMPLETE: &str = r"
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'token')
redis.call('HSET', KEYS[1], 'response', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// `abandon`: only the lease's holder frees the key.
const ABANDON: &str = r"
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
";

/// GCRA (the same arithmetic as `crate::gcra`) on the server's clock, so that every API
/// process measures against one time. ARGV: interval µs, burst. Returns {allowed,
/// retry after µs, remaining}. Times are µs since the epoch (~1.8e15), exact in Lua's
/// doubles; `%d` keeps them out of exponent notation when stored.
const ALLOW: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local tat = now
local stored = redis.call('GET', KEYS[1])
if stored then tat = math.max(tonumber(stored), now) end
local new_tat = tat + interval
local allow_at = new_tat - interval * tonumber(ARGV[2])
if now < allow_at then return {0, allow_at - now, 0} end
local idle_ms = math.ceil((new_tat - now) / 1000)
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', string.format('%d', idle_ms))
return {1, 0, math.floor((now - allow_at) / interval)}
";

/// `claim`: already a member → 1; `limit` (ARGV[2]) members → 2; else add ARGV[1] → 0.
const CLAIM: &str = r"
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 2 end
redis.call('SADD', KEYS[1], ARGV[1])
return 0
";

/// After Redis failed to answer (down, unreachable, too slow), calls fail at once for this
/// long instead of each waiting out its deadline: an outage then costs callers nothing but
/// the refusal (the API's rate limit lets requests through, keyed requests get a 503).
const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(1);

pub struct RedisCache {
    connection: ConnectionManager,
    prefix: String,
    timeout: Duration,
    /// Calls fail at once until this moment, µs after `epoch` (0: no pause).
    paused_until_us: AtomicU64,
    epoch: Instant,
    begin: Script,
    complete: Script,
    abandon: Script,
    allow: Script,
    claim: Script,
}

impl RedisCache {
    /// Connects to `url` (waiting at most `timeout`); every key starts with `prefix:`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        timeout: Duration,
    ) -> Result<RedisCache, CacheError> {
        let client = Client::open(url).map_err(backend)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let connection =
            tokio::time::timeout(timeout, ConnectionManager::new_with_config(client, config))
                .await
                .map_err(|_| timed_out(timeout))?
                .map_err(|e| CacheError::Backend(format!("connecting to Redis: {e}")))?;
        Ok(RedisCache {
            connection,
            prefix: prefix.to_string(),
            timeout,
            paused_until_us: AtomicU64::new(0),
            epoch: Instant::now(),
            begin: Script::new(BEGIN),
            complete: Script::new(COMPLETE),
            abandon: Script::new(ABANDON),
            allow: Script::new(ALLOW),
            claim: Script::new(CLAIM),
        })
    }

    fn record_key(&self, scope: &str, key: &str) -> String {
        format!("{}:idem:{}:{scope}:{key}", self.prefix, scope.len())
    }

    fn key(&self, kind: &str, key: &str) -> String {
        format!("{}:{kind}:{key}", self.prefix)
    }

    /// Runs a call within the deadline, unless Redis failed a moment ago (see
    /// `PAUSE_AFTER_FAILURE`); a failure to reach Redis starts such a pause.
    async fn run<T>(&self, call: impl Future<Output = RedisResult<T>>) -> Result<T, CacheError> {
        let now_us = self.epoch.elapsed().as_micros() as u64;
        if now_us < self.paused_until_us.load(Ordering::Relaxed) {
            return Err(CacheError::Backend(
                "Redis failed to answer a moment ago; not asking again yet".into(),
            ));
        }
        let result = tokio::time::timeout(self.timeout, call).await;
        let unreachable = match &result {
            Ok(Ok(_)) => false,
            Ok(Err(e)) => {
                e.is_io_error()
                    || e.is_connection_refusal()
                    || e.is_connection_dropped()
                    || e.is_timeout()
            }
            Err(_) => true,
        };
        if unreachable {
            let until = now_us + PAUSE_AFTER_FAILURE.as_micros() as u64;
            self.paused_until_us.store(until, Ordering::Relaxed);
        }
        match result {
            Ok(result) => result.map_err(backend),
            Err(_) => Err(timed_out(self.timeout)),
        }
    }

    async fn query<T: ::redis::FromRedisValue>(&self, cmd: &::redis::Cmd) -> Result<T, CacheError> {
        let mut connection = self.connection.clone();
        self.run(cmd.query_async(&mut connection)).await
    }
}

fn timed_out(timeout: Duration) -> CacheError {
    CacheError::Timeout(timeout.as_millis() as u64)
}

/// Redis's errors become `Backend`, with their text.
fn backend(e: ::redis::RedisError) -> CacheError {
    CacheError::Backend(e.to_string())
}

fn unexpected(what: &str, value: &Value) -> CacheError {
    CacheError::Backend(format!("unexpected answer to {what}: {value:?}"))
}

impl Idempotency for RedisCache {
    fn begin<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        fingerprint: &'a Fingerprint,
        lease_ms: u64,
    ) -> CacheFuture<'a, Begin> {
        Box::pin(async move {
            check_key("idempotency scope", scope)?;
            check_key("idempotency key", key)?;
            check_ttl("an idempotency lease", lease_ms)?;
            // Random, so that leases from different processes never look alike.
            let token: u64 = rand::random();
            let mut connection = self.connection.clone();
            let answer: Value = self
                .run(
                    self.begin
                        .key(self.record_key(scope, key))
                        .arg(&fingerprint.0[..])
                        .arg(token)
                        .arg(lease_ms)
                        .invoke_async(&mut connection),
                )
                .await?;
            match answer {
                Value::Int(0) => Ok(Begin::New(Lease { token })),
                Value::Int(1) => Ok(Begin::InProgress),
                Value::Int(3) => Ok(Begin::Mismatch),
                Value::BulkString(response) => Ok(Begin::Done(response)),
                other => Err(unexpected("begin", &other)),
            }
        })
    }

    fn complete<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        lease: Lease,
        response: &'a [u8],
        ttl_ms: u64,
    ) -> CacheFuture<'a, ()> {
        Box::pin(async move {
            check_value("an idempotent response", response)?;
            check_ttl("an idempotency record's TTL", ttl_ms)?;
            let mut connection = self.connection.clone();
            let stored: i64 = self
                .run(
                    self.complete
                        .key(self.record_key(scope, key))
                        .arg(lease.token)
                        .arg(response)
                        .arg(ttl_ms)
                        .invoke_async(&mut connection),
                )
                .await?;
            if stored == 1 {
                Ok(())
            } else {
                Err(CacheError::LeaseLost)
            }
        })
    }

    fn abandon<'a>(&'a self, scope: &'a str, key: &'a str, lease: Lease) -> CacheFuture<'a, ()> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            self.run(
                self.abandon
                    .key(self.record_key(scope, key))
                    .arg(lease.token)
                    .invoke_async::<i64>(&mut connection),
            )
            .await?;
            Ok(())
        })
    }
}

impl RateLimiter for RedisCache {
    fn allow<'a>(&'a self, key: &'a str, rate: Rate) -> CacheFuture<'a, Decision> {
        Box::pin(async move {
            check_key("rate-limit key", key)?;
            let mut connection = self.connection.clone();
            let (allowed, retry_after_us, remaining): (i64, u64, u64) = self
                .run(
                    self.allow
                        .key(self.key("rate", key))
                        .arg(rate.interval_us)
                        .arg(rate.burst)
                        .invoke_async(&mut connection),
                )
                .await?;
            Ok(Decision {
                allowed: allowed == 1,
                retry_after_ms: retry_after_us.div_ceil(1_000),
                remaining: remaining.min(u64::from(u32::MAX)) as u32,
            })
        })
    }
}

impl Gates for RedisCache {
    fn claim<'a>(&'a self, gate: &'a str, member: &'a str, limit: u64) -> CacheFuture<'a, Claim> {
        Box::pin(async move {
            check_key("gate", gate)?;
            check_key("gate member", member)?;
            check_limit(limit)?;
            let mut connection = self.connection.clone();
            let answer: i64 = self
                .run(
                    self.claim
                        .key(self.key("gate", gate))
                        .arg(member)
                        .arg(limit)
                        .invoke_async(&mut connection),
                )
                .await?;
            match answer {
                0 => Ok(Claim::Claimed),
                1 => Ok(Claim::AlreadyClaimed),
                2 => Ok(Claim::SoldOut),
                other => Err(unexpected("claim", &Value::Int(other))),
            }
        })
    }

    fn release<'a>(&'a self, gate: &'a str, member: &'a str) -> CacheFuture<'a, bool> {
        Box::pin(async move {
            let removed: i64 = self
                .query(cmd("SREM").arg(self.key("gate", gate)).arg(member))
                .await?;
            Ok(removed == 1)
        })
    }

    fn count<'a>(&'a self, gate: &'a str) -> CacheFuture<'a, u64> {
        Box::pin(async move { self.query(cmd("SCARD").arg(self.key("gate", gate))).await })
    }

    fn members<'a>(&'a self, gate: &'a str) -> CacheFuture<'a, Vec<String>> {
        Box::pin(async move {
            let key = self.key("gate", gate);
            // SSCAN, not SMEMBERS: a big gate is read in steps instead of blocking Redis.
            // A member may come twice while the set changes; the set removes repeats.
            let mut members = HashSet::new();
            let mut cursor = 0u64;
            loop {
                let (next, page): (u64, Vec<String>) = self
                    .query(
                        cmd("SSCAN")
                            .arg(&key)
                            .arg(cursor)
                            .arg("COUNT")
                            .arg(MEMBERS_PER_CALL),
                    )
                    .await?;
                members.extend(page);
                if next == 0 {
                    return Ok(members.into_iter().collect());
                }
                cursor = next;
            }
        })
    }

    fn reset_from<'a>(&'a self, gate: &'a str, members: &'a [String]) -> CacheFuture<'a, ()> {
        Box::pin(async move {
            check_key("gate", gate)?;
            for m in members {
                check_key("gate member", m)?;
            }
            if members.len() as u64 > GATE_LIMIT_MAX {
                return Err(CacheError::Invalid(format!(
                    "a gate holds at most {GATE_LIMIT_MAX} members"
                )));
            }
            let key = self.key("gate", gate);
            // MULTI/EXEC: no claim runs between the old set's removal and the new one.
            let mut pipe = ::redis::pipe();
            pipe.atomic().cmd("DEL").arg(&key).ignore();
            for chunk in members.chunks(MEMBERS_PER_CALL) {
                pipe.cmd("SADD").arg(&key).arg(chunk).ignore();
            }
            let mut connection = self.connection.clone();
            self.run(pipe.query_async::<()>(&mut connection)).await
        })
    }
}

impl KvCache for RedisCache {
    fn get<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            check_key("cache key", key)?;
            self.query(cmd("GET").arg(self.key("kv", key))).await
        })
    }

    fn set<'a>(&'a self, key: &'a str, value: &'a [u8], ttl_ms: u64) -> CacheFuture<'a, ()> {
        Box::pin(async move {
            check_key("cache key", key)?;
            check_value("a cached value", value)?;
            check_ttl("a cache TTL", ttl_ms)?;
            self.query(
                cmd("SET")
                    .arg(self.key("kv", key))
                    .arg(value)
                    .arg("PX")
                    .arg(ttl_ms),
            )
            .await
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> CacheFuture<'a, bool> {
        Box::pin(async move {
            check_key("cache key", key)?;
            let removed: i64 = self.query(cmd("DEL").arg(self.key("kv", key))).await?;
            Ok(removed == 1)
        })
    }
}
