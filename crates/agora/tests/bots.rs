//! The virtual price generator: `serve --demo` shows a moving market within seconds, made of
//! real orders with real holds and fills, and every ledger invariant holds meanwhile.

mod common;
use common::*;
use std::time::{Duration, Instant};

#[test]
fn demo_bots_make_a_live_market_that_reconciles() {
    let s = Server::start_with(&["--demo", "--bot-rate", "20"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    // The demo is seeded just after the server turns ready: a market may not exist yet.
    let traded = |sym: &str| {
        let r = s.get(&format!("/api/v1/markets/{sym}/ticker"), None);
        if !r.status().is_success() {
            return 0;
        }
        r.json::<serde_json::Value>().unwrap()["trades"]
            .as_u64()
            .unwrap_or(0)
    };
    loop {
        let counts: Vec<u64> = ["005930-KRW", "BTC-USDT", "ETH-USDT"]
            .iter()
            .map(|m| traded(m))
            .collect();
        if counts.iter().all(|&n| n >= 3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bots did not trade every market: {counts:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Bot orders are ordinary orders of ordinary users.
    let maker = s.json("/api/v1/admin/status", None);
    assert!(maker["trades"].as_u64().unwrap() >= 9);
    // The ledger reconciles while they trade, and every book is compared with the store at
    // a consistent cut (no need to wait for a quiet moment).
    let report = s.json("/api/v1/admin/reconcile", None);
    assert_eq!(report["ok"], true, "{report:#}");
    assert!(report["open_orders"].as_u64().unwrap() > 0);
    assert_eq!(report["books_compared"], 3, "{report:#}");
}

#[test]
fn fast_bots_keep_their_quotes_bounded_and_the_ledger_reconciles() {
    // Mostly quotes, at a rate where many orders are in flight at once: without the
    // cancels of the oldest quotes the book would grow by ~450 orders per symbol per second.
    let s = Server::start_with(&["--demo", "--bot-rate", "500", "--bot-taker-share", "0.1"]);
    let trades = || {
        s.json("/api/v1/admin/status", None)["trades"]
            .as_u64()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while trades() < 100 {
        assert!(Instant::now() < deadline, "bots did not trade");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Reconciliation while they trade: the ledger and every book, every time (a book
    // compared at an inconsistent cut would be reported as differing).
    for _ in 0..40 {
        let report = s.json("/api/v1/admin/reconcile", None);
        assert_eq!(report["ok"], true, "{report:#}");
        assert_eq!(report["books_compared"], 3, "{report:#}");
        // Per symbol: 40 quotes kept (BotConfig::maker_orders_max) plus at most 32 requests
        // in flight; plus the demo's 30-order starting book.
        let open = report["open_orders"].as_u64().unwrap();
        assert!(open <= 3 * (40 + 32) + 30, "{open} open orders");
        std::thread::sleep(Duration::from_millis(50));
    }
}
