//! For tests that need a Redis: where it is, by the project's rule for outside services
//! (`agora_testsvc`: a loud failure under `CI=true`, else a skip that says how to start it).

/// How to start the test Redis.
const HOW_TO_START: &str =
    "scripts/services   (starts every test service), or just Redis: redis-server --daemonize yes";

/// The test Redis: `AGORA_TEST_REDIS`, else database 15 of a local server (tests keep to
/// their own key prefixes there and never flush it). `None` when it does not answer and the
/// caller should skip; under `CI=true` that panics instead.
pub fn redis_or_skip() -> Option<String> {
    let url = agora_testsvc::service_addr("AGORA_TEST_REDIS", "redis://127.0.0.1:6379/15");
    let addr = match redis::Client::open(url.as_str()) {
        Ok(client) => client.get_connection_info().addr().to_string(),
        Err(e) => panic!("AGORA_TEST_REDIS is not a Redis URL: {e}"),
    };
    agora_testsvc::require_service("Redis", &addr, HOW_TO_START).then_some(url)
}
