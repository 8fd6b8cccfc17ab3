//! The rule for tests that need an outside service (a Kafka-protocol broker, PostgreSQL,
//! MariaDB, Redis): under CI (`CI=true`) a missing service fails the test loudly, because a
//! silently skipped suite would pass CI without testing anything; run by hand, the test
//! says how to start the service and skips.
//!
//! ```no_run
//! # fn kafka_test() {
//! let addr = agora_testsvc::service_addr("AGORA_TEST_KAFKA", "127.0.0.1:9092");
//! if !agora_testsvc::require_service("Kafka-protocol broker", &addr, "scripts/services") {
//!     return; // skipped: not under CI, and the message said how to start it
//! }
//! // … the test, against `addr` …
//! # }
//! ```

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Once;
use std::time::Duration;

/// How long one connection attempt may take: the services run on this machine.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The address in `env_var`, or `default` when it is unset or empty.
pub fn service_addr(env_var: &str, default: &str) -> String {
    std::env::var(env_var)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// Whether `name` accepts TCP connections at `addr` (`host:port`; for a list such as
/// Kafka's `h1:p1,h2:p2`, the first). When it does not: panics under CI, otherwise prints
/// `how_to_start` and returns false, and the caller returns (skips).
pub fn require_service(name: &str, addr: &str, how_to_start: &str) -> bool {
    let first = addr.split(',').next().unwrap_or(addr).trim();
    let reachable = first
        .to_socket_addrs()
        .map(|mut addrs| addrs.any(|a| TcpStream::connect_timeout(&a, CONNECT_TIMEOUT).is_ok()))
        .unwrap_or(false);
    if reachable {
        return true;
    }
    let missing = format!("{name} is not answering at {first}");
    if under_ci() {
        panic!(
            "{missing}. Start it with:\n    {how_to_start}\n\
             (CI=true: a test that needs {name} fails instead of skipping)"
        );
    }
    // Straight to stderr: the test harness captures `eprintln!` of passing tests, and a
    // skip must be seen. The instructions once per test binary, a line per skipped test.
    static INSTRUCTIONS: Once = Once::new();
    let mut stderr = std::io::stderr().lock();
    INSTRUCTIONS.call_once(|| {
        let _ = writeln!(
            stderr,
            "{missing}: tests that need it skip. Start it with:\n    {how_to_start}"
        );
    });
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let _ = writeln!(stderr, "SKIPPED {test}: {missing}");
    false
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn a_listening_service_is_found() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        assert!(require_service(
            "test service",
            &format!("{addr},other:1"),
            "n/a"
        ));
    }

    #[test]
    fn a_missing_service_skips_by_hand_and_fails_under_ci() {
        // A port that was just free: nothing listens on it.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let outcome = std::panic::catch_unwind(|| require_service("test service", &addr, "n/a"));
        match outcome {
            Ok(found) => assert!(!under_ci() && !found),
            Err(_) => assert!(under_ci()),
        }
    }

    #[test]
    fn the_address_comes_from_the_environment_or_the_default() {
        assert_eq!(
            service_addr("AGORA_TESTSVC_SURELY_UNSET", "127.0.0.1:1"),
            "127.0.0.1:1"
        );
    }
}
