//! For tests that need a Redis: where it is, or a loud failure under CI, or a skip that says
//! how to start one.

use std::time::Duration;

/// The Redis URL of tests: `AGORA_TEST_REDIS`, else database 15 of a local server (tests
/// keep to their own key prefixes there and never flush it).
pub fn redis_url() -> String {
    std::env::var("AGORA_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/15".into())
}

/// `Some(url)` when the test Redis answers a PING. When it does not: under `CI=true` this
/// panics (CI must run every test); otherwise it prints how to start Redis and returns
/// `None`, and the caller skips.
pub fn redis_or_skip(test: &str) -> Option<String> {
    let url = redis_url();
    match ping(&url) {
        Ok(()) => Some(url),
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: Redis is required under CI=true, and {url} does not answer: {e}")
        }
        Err(e) => {
            eprintln!(
                "SKIPPED {test}: no Redis at {url} ({e}). Start one with \
                 `redis-server --daemonize yes` (or set AGORA_TEST_REDIS) and run it again."
            );
            None
        }
    }
}

fn ping(url: &str) -> Result<(), redis::RedisError> {
    let client = redis::Client::open(url)?;
    let mut connection = client.get_connection_with_timeout(Duration::from_secs(1))?;
    redis::cmd("PING").query::<String>(&mut connection)?;
    Ok(())
}
