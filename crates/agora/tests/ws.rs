//! WebSocket streams against the real binary.

mod common;
use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

fn connect(s: &Server, user: Option<u64>) -> Ws {
    let url = s.url.replace("http://", "ws://") + "/ws";
    let mut req = url.into_client_request().unwrap();
    if let Some(u) = user {
        req.headers_mut()
            .insert("x-user-id", u.to_string().parse().unwrap());
    }
    let (ws, _) = tungstenite::connect(req).expect("ws connect");
    ws
}

fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).unwrap();
}

/// The next text message that is not a stream message (a command reply).
fn reply(ws: &mut Ws) -> Value {
    loop {
        match ws.read().unwrap() {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v.get("stream").is_none() {
                    return v;
                }
            }
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

/// Reads stream messages on a thread, forwarding them until the socket closes.
fn reader(
    mut ws: Ws,
) -> (
    mpsc::Receiver<Value>,
    std::thread::JoinHandle<Option<String>>,
) {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if tx.send(v).is_err() {
                    return None;
                }
            }
            Ok(Message::Close(c)) => {
                return c.map(|c| format!("{} {}", u16::from(c.code), c.reason))
            }
            Ok(_) => {}
            Err(_) => return None,
        }
    });
    (rx, h)
}

/// A local book kept from a REST snapshot plus WebSocket diffs ends equal to REST depth.
#[test]
fn a_client_syncing_snapshot_and_diffs_ends_with_the_rest_book() {
    use std::collections::BTreeMap;
    let s = Server::start();
    let users = market(&s, 4);
    random_flow(&s, &users, 100, 1, 0.0); // a book exists before the client arrives
    let mut ws = connect(&s, None);
    send(
        &mut ws,
        json!({"method": "SUBSCRIBE", "params": ["BASE-QUOTE@depth"], "id": 1}),
    );
    assert_eq!(reply(&mut ws), json!({"result": null, "id": 1}));
    let (rx, _h) = reader(ws);
    // Diffs are buffered from here; the snapshot comes after subscribing (Binance's steps).
    random_flow(&s, &users, 50, 2, 0.0);
    let snap = s.json("/api/v1/markets/BASE-QUOTE/depth?limit=5000", None);
    random_flow(&s, &users, 200, 3, 0.0);
    s.quiesce();
    // Key prices by their decimal text with fixed scale, so string order is numeric order.
    let key = |p: &str| format!("{p:0>12}");
    let mut bids: BTreeMap<String, String> = levels(&snap["bids"])
        .into_iter()
        .map(|(p, q)| (key(&p), q))
        .collect();
    let mut asks: BTreeMap<String, String> = levels(&snap["asks"])
        .into_iter()
        .map(|(p, q)| (key(&p), q))
        .collect();
    let mut last = snap["last_update_id"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rest = s.json("/api/v1/markets/BASE-QUOTE/depth?limit=5000", None);
        let target = rest["last_update_id"].as_u64().unwrap();
        while last < target {
            let m = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("diffs stopped");
            assert_eq!(m["stream"], "BASE-QUOTE@depth");
            let d = &m["data"];
            let (first, end) = (
                d["first_update_id"].as_u64().unwrap(),
                d["last_update_id"].as_u64().unwrap(),
            );
            if end <= last {
                continue; // covered by the snapshot
            }
            assert!(
                first <= last + 1,
                "gap: have {last}, diff starts at {first}"
            );
            for (side, book) in [("bids", &mut bids), ("asks", &mut asks)] {
                for (p, q) in levels(&d[side]) {
                    if q.trim_start_matches(['0', '.']).is_empty() {
                        book.remove(&key(&p));
                    } else {
                        book.insert(key(&p), q);
                    }
                }
            }
            last = end;
        }
        let unkey = |b: &BTreeMap<String, String>| {
            b.iter()
                .map(|(p, q)| (p.trim_start_matches('0').to_string(), q.clone()))
                .collect::<Vec<_>>()
        };
        let norm = |v: Vec<(String, String)>| {
            v.into_iter()
                .map(|(p, q)| (p.trim_start_matches('0').to_string(), q))
                .collect::<Vec<_>>()
        };
        let mine_bids: Vec<_> = unkey(&bids).into_iter().rev().collect();
        if last == target
            && mine_bids == norm(levels(&rest["bids"]))
            && unkey(&asks) == norm(levels(&rest["asks"]))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "local book never matched REST at update {last}"
        );
    }
}

#[test]
fn the_user_stream_carries_own_orders_and_balances_only() {
    let s = Server::start();
    let u = market(&s, 2);
    let (a, b) = (u[0], u[1]);
    let mut wa = connect(&s, Some(a));
    send(
        &mut wa,
        json!({"method": "SUBSCRIBE", "params": ["user"], "id": "a"}),
    );
    assert_eq!(reply(&mut wa)["id"], "a");
    let (rx, _h) = reader(wa);
    // b rests an order; a takes part of it; a rests another and cancels it.
    let (_, theirs) = place(&s, b, limit("SELL", "5.00", "10", "GTC"));
    let (_, take) = place(&s, a, limit("BUY", "5.00", "4", "IOC"));
    let (_, rest) = place(&s, a, limit("BUY", "4.00", "1", "GTC"));
    let rest_id = rest["order_id"].as_u64().unwrap();
    s.delete(&format!("/api/v1/orders/{rest_id}"), a);
    wait_status(&s, a, rest_id, &["CANCELED"]);
    let take_id = take["order_id"].as_u64().unwrap();
    let mine = [take_id, rest_id];
    let mut seen: Vec<(u64, String)> = Vec::new();
    let mut balances = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(seen.contains(&(take_id, "FILLED".into()))
        && seen.contains(&(rest_id, "CANCELED".into())))
    {
        assert!(Instant::now() < deadline, "events missing: {seen:?}");
        let Ok(m) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        assert_eq!(m["stream"], "user");
        let d = &m["data"];
        match d["event"].as_str().unwrap() {
            "ORDER_UPDATE" => {
                let id = d["order_id"].as_u64().unwrap();
                assert!(
                    mine.contains(&id),
                    "another user's order {id} on a's stream (b's was {})",
                    theirs["order_id"]
                );
                seen.push((id, d["status"].as_str().unwrap().to_string()));
            }
            "BALANCE_UPDATE" => balances += 1,
            other => panic!("unexpected event {other}"),
        }
    }
    assert!(
        seen.contains(&(take_id, "NEW".into())),
        "accepted event missing: {seen:?}"
    );
    assert!(seen.contains(&(rest_id, "NEW".into())), "{seen:?}");
    assert!(balances > 0);
    // The user stream needs a user.
    let mut anon = connect(&s, None);
    send(
        &mut anon,
        json!({"method": "SUBSCRIBE", "params": ["user"], "id": 9}),
    );
    assert_eq!(reply(&mut anon)["error"]["code"], "INVALID_STREAM");
}

#[test]
fn a_slow_client_is_cut_off_while_a_fast_one_keeps_receiving() {
    let s = Server::start_with(&["--ws-send-buffer", "256", "--socket-send-buffer", "8192"]);
    let users = market(&s, 4);
    let subscribe = |ws: &mut Ws| {
        send(
            ws,
            json!({"method": "SUBSCRIBE", "params": ["BASE-QUOTE@depth", "BASE-QUOTE@trade"], "id": 1}),
        );
        assert_eq!(reply(ws)["result"], Value::Null);
    };
    let mut slow = connect(&s, None);
    subscribe(&mut slow);
    if let MaybeTlsStream::Plain(tcp) = slow.get_mut() {
        tcp.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
    }
    let mut fast = connect(&s, None);
    subscribe(&mut fast);
    let (rx, _h) = reader(fast);
    // The slow client never reads while the market moves.
    random_flow(&s, &users, 1_500, 4, 0.0);
    s.quiesce();
    let fast_before = rx.try_iter().count();
    assert!(fast_before > 0);
    random_flow(&s, &users, 50, 5, 0.0);
    s.quiesce();
    let deadline = Instant::now() + Duration::from_secs(10);
    while rx.try_iter().count() == 0 {
        assert!(
            Instant::now() < deadline,
            "the fast client stopped receiving"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Now read what the slow client got: some messages, then a close with the reason (or a
    // reset, if the close frame could not be written to its full socket).
    let mut closed = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while closed.is_none() && Instant::now() < deadline {
        match slow.read() {
            Ok(Message::Close(c)) => {
                closed = Some(c.map(|c| (u16::from(c.code), c.reason.to_string())))
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => closed = Some(None),
        }
    }
    match closed {
        Some(Some((code, reason))) => {
            assert_eq!(code, 1008);
            assert!(reason.contains("slow consumer"), "{reason}");
        }
        Some(None) => {} // reset after the close timeout
        None => panic!("the slow client was never cut off"),
    }
}

#[test]
fn bad_messages_get_errors_and_the_connection_stays() {
    let s = Server::start_with(&["--ws-subscriptions-max", "3"]);
    market(&s, 1);
    let mut ws = connect(&s, None);
    for (msg, code) in [
        ("not json", "MALFORMED_JSON"),
        ("{}", "MALFORMED_JSON"),
        (r#"{"method": "DANCE", "id": 1}"#, "UNKNOWN_METHOD"),
        (r#"{"method": "SUBSCRIBE", "id": 2}"#, "MISSING_PARAMS"),
        (
            r#"{"method": "SUBSCRIBE", "params": ["NOPE@depth"], "id": 3}"#,
            "INVALID_STREAM",
        ),
        (
            r#"{"method": "SUBSCRIBE", "params": ["BASE-QUOTE@nothing"], "id": 4}"#,
            "INVALID_STREAM",
        ),
        (
            r#"{"method": "SUBSCRIBE", "params": ["BASE-QUOTE@candle_2h"], "id": 5}"#,
            "INVALID_STREAM",
        ),
        (
            r#"{"method": "SUBSCRIBE", "params": ["BASE-QUOTE"], "id": 6}"#,
            "INVALID_STREAM",
        ),
        (
            r#"{"method": "SUBSCRIBE", "params": ["BASE-QUOTE@depth", "BASE-QUOTE@trade", "BASE-QUOTE@ticker", "BASE-QUOTE@candle_1m"], "id": 7}"#,
            "TOO_MANY_SUBSCRIPTIONS",
        ),
    ] {
        ws.send(Message::text(msg)).unwrap();
        let r = reply(&mut ws);
        assert_eq!(r["error"]["code"], code, "{msg}: {r}");
    }
    ws.send(Message::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(reply(&mut ws)["error"]["code"], "UNSUPPORTED");
    // Oversized frames are refused by the protocol layer without taking the server down.
    send(
        &mut ws,
        json!({"method": "SUBSCRIBE", "params": ["BASE-QUOTE@depth", "BASE-QUOTE@candle_1h"], "id": 8}),
    );
    assert_eq!(reply(&mut ws), json!({"result": null, "id": 8}));
    send(&mut ws, json!({"method": "LIST_SUBSCRIPTIONS", "id": 9}));
    assert_eq!(
        reply(&mut ws)["result"],
        json!(["BASE-QUOTE@candle_1h", "BASE-QUOTE@depth"])
    );
    send(
        &mut ws,
        json!({"method": "UNSUBSCRIBE", "params": ["BASE-QUOTE@depth"], "id": 10}),
    );
    assert_eq!(reply(&mut ws)["result"], Value::Null);
    let mut big = connect(&s, None);
    let _ = big.send(Message::text("x".repeat(100_000)));
    let _ = big.read(); // closed or errored; either way the server lives on
    assert_eq!(s.get("/health", None).status(), 200);
}

#[test]
fn connections_per_client_are_capped() {
    let s = Server::start_with(&["--ws-connections-per-client", "2"]);
    let _a = connect(&s, None);
    let _b = connect(&s, None);
    let url = s.url.replace("http://", "ws://") + "/ws";
    match tungstenite::connect(url) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 429),
        other => panic!("third connection was not refused: {:?}", other.map(|_| ())),
    }
}

/// The symbols `--demo` seeds.
const DEMO_SYMBOLS: [&str; 3] = ["005930-KRW", "BTC-USDT", "ETH-USDT"];

/// A demo server whose bots send `bot_rate` orders/s per symbol, returned once its markets
/// exist (the demo is seeded just after the server turns ready).
fn demo(bot_rate: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--demo", "--bot-rate", bot_rate];
    args.extend_from_slice(extra);
    let s = Server::start_with(&args);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let markets = s.json("/api/v1/markets", None);
        let names: Vec<&str> = markets["markets"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["symbol"].as_str())
            .collect();
        if DEMO_SYMBOLS.iter().all(|n| names.contains(n)) {
            return s;
        }
        assert!(Instant::now() < deadline, "the demo markets never appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn subscribe_demo_trades(ws: &mut Ws) {
    let params: Vec<String> = DEMO_SYMBOLS.iter().map(|s| format!("{s}@trade")).collect();
    send(
        ws,
        json!({"method": "SUBSCRIBE", "params": params, "id": "trades"}),
    );
    assert_eq!(reply(ws), json!({"result": null, "id": "trades"}));
}

/// A second handle on the connection's TCP socket, to write bytes tungstenite would not.
fn raw(ws: &Ws) -> TcpStream {
    match ws.get_ref() {
        MaybeTlsStream::Plain(tcp) => tcp.try_clone().expect("clone the socket"),
        _ => panic!("plain TCP expected"),
    }
}

/// A client frame built by hand: `head` is its first byte (FIN, RSV bits, opcode); masked
/// with a fixed key unless `masked` is false.
fn frame(head: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut f = vec![head];
    match u16::try_from(payload.len()) {
        Ok(n) if n < 126 => f.push(mask_bit | n as u8),
        Ok(n) => {
            f.push(mask_bit | 126);
            f.extend(n.to_be_bytes());
        }
        Err(_) => panic!("test frames stay under 64 KiB"),
    }
    if masked {
        let key = [0x11, 0x22, 0x33, 0x44];
        f.extend(key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.extend(payload);
    }
    f
}

/// The code of the close frame the server sends next (other messages are skipped).
fn close_code(ws: &mut Ws) -> u16 {
    if let MaybeTlsStream::Plain(tcp) = ws.get_mut() {
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    loop {
        match ws.read() {
            Ok(Message::Close(Some(c))) => return u16::from(c.code),
            Ok(Message::Close(None)) => panic!("a close frame without a code"),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

/// After the server's close frame, the server ends the TCP connection cleanly.
fn assert_clean_end(ws: &mut Ws, what: &str) {
    match ws.read() {
        Err(tungstenite::Error::ConnectionClosed) => {}
        other => panic!("{what}: not a clean end after the close frame: {other:?}"),
    }
}

/// Every trade of every symbol reaches a subscriber exactly once, in order, without gaps,
/// while commits settle trades of several symbols each (issue #8: a commit touching symbols
/// A, B, A queued A's trades twice).
#[test]
fn every_trade_of_every_symbol_arrives_once_in_order_without_gaps() {
    let s = demo("300", &[]);
    let mut ws = connect(&s, None);
    subscribe_demo_trades(&mut ws);
    let (rx, _h) = reader(ws);
    let mut ids: HashMap<String, Vec<u64>> = HashMap::new();
    let until = Instant::now() + Duration::from_secs(5);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        let Ok(m) = rx.recv_timeout(left) else { break };
        let stream = m["stream"].as_str().unwrap();
        let symbol = stream.strip_suffix("@trade").expect("only trade streams");
        let seen = ids.entry(symbol.to_string()).or_default();
        seen.extend(
            m["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["trade_id"].as_u64().unwrap()),
        );
    }
    for symbol in DEMO_SYMBOLS {
        let seen = ids
            .get(symbol)
            .unwrap_or_else(|| panic!("no trades of {symbol}"));
        let mut distinct = seen.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            seen.len(),
            "{symbol}: {} of {} trades arrived more than once",
            seen.len() - distinct.len(),
            seen.len()
        );
        if let Some(w) = seen.windows(2).find(|w| w[1] != w[0] + 1) {
            panic!("{symbol}: trade {} followed by {}", w[0], w[1]);
        }
    }
}

/// RFC 6455 §5.5.1: a Close frame is answered with a Close frame echoing its code, then the
/// server ends the TCP connection.
#[test]
fn a_client_close_is_echoed_then_the_connection_ends_cleanly() {
    let s = Server::start();
    let mut ws = connect(&s, None);
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .unwrap();
    assert_eq!(close_code(&mut ws), 1000);
    assert_clean_end(&mut ws, "client close");
}

/// Frames tungstenite's client cannot produce, each on a fresh connection: the server
/// closes with the code RFC 6455 §7.4.1 gives the violation.
#[test]
fn protocol_violations_are_closed_with_their_codes() {
    let s = Server::start();
    for (what, bytes, code) in [
        (
            "invalid UTF-8 in a text frame",
            frame(0x81, &[b'{', 0xff, 0xfe, b'}'], true),
            1007,
        ),
        ("a reserved data opcode", frame(0x83, b"{}", true), 1002),
        ("a reserved control opcode", frame(0x8b, b"", true), 1002),
        ("RSV1 set", frame(0xc1, b"{}", true), 1002),
        ("an unmasked client frame", frame(0x81, b"{}", false), 1002),
        ("a fragmented control frame", frame(0x09, b"", true), 1002),
        (
            "a continuation with nothing to continue",
            frame(0x80, b"{}", true),
            1002,
        ),
    ] {
        let mut ws = connect(&s, None);
        raw(&ws).write_all(&bytes).unwrap();
        assert_eq!(close_code(&mut ws), code, "{what}");
        assert_clean_end(&mut ws, what);
    }
    assert_eq!(s.get("/health", None).status(), 200);
}

/// Messages are limited to 4 KiB: one of 4,096 bytes is read (and answered), a longer one,
/// whole or in fragments, is closed with 1009 (message too big).
#[test]
fn a_message_over_4_kib_is_closed_with_1009() {
    let s = Server::start();
    let mut ws = connect(&s, None);
    ws.send(Message::text("x".repeat(4_096))).unwrap();
    assert_eq!(reply(&mut ws)["error"]["code"], "MALFORMED_JSON");
    ws.send(Message::text("x".repeat(4_097))).unwrap();
    assert_eq!(close_code(&mut ws), 1009);
    assert_clean_end(&mut ws, "one frame over the limit");
    // Two fragments of 3,000 bytes each: no frame is too big, the message is.
    let mut ws = connect(&s, None);
    let chunk = vec![b'x'; 3_000];
    let mut bytes = frame(0x01, &chunk, true);
    bytes.extend(frame(0x80, &chunk, true));
    raw(&ws).write_all(&bytes).unwrap();
    assert_eq!(close_code(&mut ws), 1009);
    assert_clean_end(&mut ws, "fragmented message over the limit");
}

/// Sends commands on `tcp`, never reading, until a write fails because the server closed the
/// connection; how long that took, or `None` if it was still open after `within`.
fn flood_until_closed(tcp: &mut TcpStream, within: Duration) -> Option<Duration> {
    tcp.set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let params: Vec<String> = DEMO_SYMBOLS.iter().map(|s| format!("{s}@trade")).collect();
    let start = Instant::now();
    let mut unsent: Vec<u8> = Vec::new(); // the rest of a frame a timed-out write left
    let mut n = 0u64;
    while start.elapsed() < within {
        if unsent.is_empty() {
            n += 1;
            let command = match n % 2 {
                0 => json!({"method": "LIST_SUBSCRIPTIONS", "id": n}),
                _ => json!({"method": "SUBSCRIBE", "params": params, "id": n}),
            };
            unsent = frame(0x81, command.to_string().as_bytes(), true);
        }
        match tcp.write(&unsent) {
            Ok(k) => {
                unsent.drain(..k);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// A client that sends commands but never reads their replies (issue #8: the server waited
/// forever in the reply's write, and held every other connection's trade flush at its
/// longest wait) is closed within seconds, while a reading subscriber keeps receiving.
#[test]
fn a_client_that_never_reads_is_cut_off_while_a_reader_keeps_receiving() {
    // A queue the test cannot fill, so only the write deadline can end the stuck
    // connection; a small kernel send buffer, so it is stuck soon.
    let s = demo(
        "300",
        &["--ws-send-buffer", "100000", "--socket-send-buffer", "8192"],
    );
    let mut good = connect(&s, None);
    subscribe_demo_trades(&mut good);
    let (rx, _h) = reader(good);
    let stop = Arc::new(AtomicBool::new(false));
    let arrivals = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut at = vec![Instant::now()];
            while !stop.load(Ordering::Relaxed) {
                if rx.recv_timeout(Duration::from_millis(100)).is_ok() {
                    at.push(Instant::now());
                }
            }
            at.push(Instant::now());
            at
        })
    };
    let mut stuck = connect(&s, None);
    subscribe_demo_trades(&mut stuck);
    let closed_after = flood_until_closed(&mut raw(&stuck), Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(1)); // the reader goes on after the cut too
    stop.store(true, Ordering::Relaxed);
    let at = arrivals.join().unwrap();
    let longest_gap = at.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        closed_after.is_some(),
        "a client that never reads was still connected after 15 s"
    );
    assert!(
        longest_gap < Duration::from_secs(2),
        "the reading subscriber went {longest_gap:?} without trades ({} messages)",
        at.len() - 2
    );
    drop(stuck);
}
