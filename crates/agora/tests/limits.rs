//! Connection limits: past `--connections-max`, new connections wait (in the kernel's
//! backlog) until a slot frees, instead of being served or taking memory.

mod common;
use common::*;
use std::net::TcpStream;
use std::time::Duration;

#[test]
fn connections_past_the_limit_wait_for_a_free_slot() {
    let s = Server::start_with(&["--connections-max", "3"]);
    // The harness's client may keep one pooled connection; fill every slot that is left.
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let fresh = || {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_millis(700))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    };
    let url = format!("{}/health", s.url);
    assert!(
        fresh().get(&url).send().is_err(),
        "a connection past the limit was served"
    );
    // Free every slot: the next request goes through.
    held.clear();
    drop(s.http.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = fresh().get(&url).send() {
            assert_eq!(r.status(), 200);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slots never freed");
    }
}
