//! WebSocket streams at `/ws`: public market streams per symbol and a private user stream.
//!
//! Protocol (JSON text frames, Binance-style):
//! - `{"method": "SUBSCRIBE", "params": ["BTC-USDT@depth", "BTC-USDT@trade"], "id": 1}`;
//!   `UNSUBSCRIBE` likewise; `LIST_SUBSCRIPTIONS`. Answers: `{"result": …, "id": 1}` or
//!   `{"error": {"code": "…", "msg": "…"}, "id": 1}`. A bad command gets an error, never a
//!   dropped connection; a frame that breaks the protocol closes it with the RFC 6455 code:
//!   1009 for a message over 4 KiB (`WsLimits::message_bytes_max`), 1007 for text that is not
//!   UTF-8, 1002 for anything else. A client's Close frame is echoed before the TCP close.
//! - Streams: `SYM@depth` (diffs with `first_update_id`/`last_update_id`; sync a local book
//!   from `GET /api/v1/markets/SYM/depth` plus the buffered diffs), `SYM@trade` (trades as
//!   an array, gathered for 10–40 ms under load; see `TRADE_FLUSH_INTERVAL_MS`), `SYM@ticker` (at most once a second per symbol, on trades),
//!   `SYM@candle_1m` … `SYM@candle_1d`, and `user` (needs `X-User-Id` on the upgrade request:
//!   `ORDER_UPDATE` and `BALANCE_UPDATE` events of that user only).
//! - Messages: `{"stream": "...", "data": ...}`.
//!
//! Fan-out never waits on a client: each message is serialized once; everything one commit
//! (or one trade flush tick) brings a connection is offered to its bounded send buffer as one
//! batch with `try_send`, which its writer sends with one write. Command replies take the same
//! queue. A connection whose buffer is full, or whose write does not complete within
//! `WRITE_TIMEOUT`, is a slow consumer: closed with code 1008 and the reason, and the others
//! go on.

use crate::api::{balance_view, client_key, order_view, ActingUser};
use crate::listener::PeerAddr;
use crate::market_api::{candle_view, level_json, ticker_view, trade_view, Scales};
use crate::problem::Problem;
use crate::AppState;
use agora_exchange::market::{candle_of, CommitObserver, Committed, MarketData};
use agora_exchange::RefData;
use agora_market::{DepthDiff, Interval};
use agora_store::TradeRow;
use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

#[derive(Clone, Copy, Debug)]
pub struct WsLimits {
    pub subscriptions_max: usize,
    pub connections_per_client_max: usize,
    /// Batches (what one commit or trade flush brings a connection) queued for one
    /// connection before it counts as a slow consumer.
    pub send_buffer_batches: usize,
    pub message_bytes_max: usize,
}

impl Default for WsLimits {
    fn default() -> Self {
        WsLimits {
            subscriptions_max: 64,
            connections_per_client_max: 100,
            send_buffer_batches: 1_024,
            message_bytes_max: 4_096,
        }
    }
}

/// Tickers are pushed at most this often per symbol.
const TICKER_PERIOD_MS: i64 = 1_000;
/// Trades are sent at most this often (all symbols at once). Fan-out costs per connection and
/// batch — a wake-up and a write on each side of every connection — not per trade, so this
/// bounds its cost whatever the trade rate; a trade after a quiet spell goes out at once.
/// Under load the wait for the previous flush to be written sets the pace: with 1,000
/// subscribers a 10 ms floor gave p99 30–36 ms, a 20 ms floor 44–51 ms (BENCHMARKS.md).
const TRADE_FLUSH_INTERVAL_MS: i64 = 10;
/// A flush also waits until the previous one has been written to every connection (so
/// batches grow instead of queueing when the machine is busy), but never longer than this
/// after it: a connection slow to take its batch, not yet cut off, must not hold up others.
const TRADE_FLUSH_WAIT_MAX_MS: i64 = 40;
/// Trades gathered per symbol at most before a flush regardless of time.
const TRADE_BATCH_MAX: usize = 1_000;
/// Largest frame read whole. A message over `message_bytes_max` is refused with 1009 once
/// read; a frame this size is still read to its end first, so the close is clean (closing
/// with unread bytes in the socket makes the kernel send a reset after the close frame). A
/// larger frame is refused from its header, unread. Bounds what one connection buffers.
const FRAME_BYTES_MAX: usize = 16 * 1024;
/// Bytes read from a client per read attempt (see `ws_handler`).
const READ_CHUNK_BYTES: usize = 512;
/// How long a closing connection gets to take its close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Frames written per flush of the socket.
const WRITE_FRAMES_MAX: usize = 256;
/// How long one write to a client (stream batches or a command reply) may take before the
/// client counts as a slow consumer. A client that reads takes a write in milliseconds (the
/// kernel buffers `--socket-send-buffer` bytes of it); one that stopped reading must be found
/// even when its traffic is too thin to fill its queue, and until it is, its unwritten batches
/// hold every other connection's trade flush at `TRADE_FLUSH_WAIT_MAX_MS`. Five seconds lets a
/// reader through a pause (a busy machine, a garbage collection, a congested link) and bounds
/// how long one stuck client slows the others.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum StreamKey {
    Depth(u32),
    Trades(u32),
    Ticker(u32),
    Candles(u32, Interval),
    User(u64),
}

struct Conn {
    tx: mpsc::Sender<Vec<Utf8Bytes>>,
    slow: AtomicBool,
    kick: Notify,
}

impl Conn {
    /// Offers a batch to the connection's queue without waiting; a full queue marks the
    /// connection slow and kicks it. `in_flight` counts the batch until it is written.
    fn offer(&self, frames: Vec<Utf8Bytes>, in_flight: &AtomicUsize) {
        // Counted before the send: the writer may take and uncount it at once.
        in_flight.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.tx.try_send(frames) {
            in_flight.fetch_sub(1, Ordering::Relaxed);
            if let mpsc::error::TrySendError::Full(_) = e {
                self.slow.store(true, Ordering::Relaxed);
                self.kick.notify_one();
            }
        }
    }
}

/// Whether gathered trades go out now: `since_ms` after the last flush, `written` if every
/// connection has written what it was given, with `longest` trades waiting for one symbol.
fn trade_flush_due(since_ms: i64, written: bool, longest: usize) -> bool {
    longest > 0
        && ((written && since_ms >= TRADE_FLUSH_INTERVAL_MS)
            || since_ms >= TRADE_FLUSH_WAIT_MAX_MS
            || longest >= TRADE_BATCH_MAX)
}

/// Trades waiting to be sent, per symbol, and when trades were last sent.
#[derive(Default)]
struct PendingTrades {
    by_symbol: FxHashMap<u32, Vec<TradeRow>>,
    flushed_ms: i64,
}

/// The connections subscribed to one stream, by connection id.
type Subscribers = Vec<(u64, Arc<Conn>)>;
type SubscriptionMap = FxHashMap<StreamKey, Subscribers>;

/// The frames of one commit or flush tick, gathered per connection so that each connection
/// gets one batch (one wake-up, one write) whatever the number of its streams that moved.
struct Outbox<'a> {
    subs: &'a SubscriptionMap,
    in_flight: &'a AtomicUsize,
    per_conn: FxHashMap<u64, (&'a Conn, Vec<Utf8Bytes>)>,
}

impl<'a> Outbox<'a> {
    fn new(hub: &'a Hub, subs: &'a SubscriptionMap) -> Self {
        Outbox {
            subs,
            in_flight: &hub.in_flight,
            per_conn: FxHashMap::default(),
        }
    }

    fn has_subscribers(&self, key: StreamKey) -> bool {
        self.subs.get(&key).is_some_and(|l| !l.is_empty())
    }

    /// Adds a message for every subscriber of `key`; serializes only if there is one.
    fn add(&mut self, key: StreamKey, make: impl FnOnce() -> Value) {
        let Some(list) = self.subs.get(&key).filter(|l| !l.is_empty()) else {
            return;
        };
        let message = Utf8Bytes::from(make().to_string());
        for (id, conn) in list {
            if conn.slow.load(Ordering::Relaxed) {
                continue;
            }
            self.per_conn
                .entry(*id)
                .or_insert_with(|| (conn, Vec::new()))
                .1
                .push(message.clone());
        }
    }

    /// Offers each connection its batch; a full buffer marks it slow and kicks it.
    fn send(self) {
        for (conn, frames) in self.per_conn.into_values() {
            conn.offer(frames, self.in_flight);
        }
    }
}

/// Subscriptions of every connection, and the fan-out of each commit to them.
pub struct Hub {
    limits: WsLimits,
    subs: RwLock<SubscriptionMap>,
    clients: Mutex<FxHashMap<String, usize>>,
    next_conn: AtomicU64,
    ticker_sent_ms: Mutex<FxHashMap<u32, i64>>,
    pending_trades: Mutex<PendingTrades>,
    /// Batches (stream data or command replies) offered to connections and not yet written
    /// (or dropped with the connection).
    in_flight: AtomicUsize,
    /// Trade and ticker times (the exchange's clock).
    clock: Arc<dyn agora_core::Clock>,
}

impl Hub {
    pub fn new(limits: WsLimits, clock: Arc<dyn agora_core::Clock>) -> Hub {
        assert!(limits.send_buffer_batches > 0 && limits.subscriptions_max > 0);
        Hub {
            limits,
            subs: RwLock::default(),
            clients: Mutex::default(),
            next_conn: AtomicU64::new(1),
            ticker_sent_ms: Mutex::default(),
            pending_trades: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            clock,
        }
    }

    /// Sends the gathered trades of every symbol when a flush is due (see
    /// `TRADE_FLUSH_INTERVAL_MS`): one shared tick for all symbols, so a subscriber of several
    /// gets their frames in one batch and one write.
    fn flush_trades(&self, out: &mut Outbox, r: &RefData, now: i64) {
        let due: Vec<(u32, Vec<TradeRow>)> = {
            let mut pending = self.pending_trades.lock().expect("lock");
            let longest = pending.by_symbol.values().map(Vec::len).max().unwrap_or(0);
            let written = self.in_flight.load(Ordering::Relaxed) == 0;
            if !trade_flush_due(now - pending.flushed_ms, written, longest) {
                return;
            }
            pending.flushed_ms = now;
            pending.by_symbol.drain().collect()
        };
        for (symbol, trades) in due {
            let Some(sym) = r.symbols.get(&symbol) else {
                continue;
            };
            let sc = Scales::of(r, sym);
            out.add(StreamKey::Trades(symbol), || {
                let list: Vec<_> = trades.iter().map(|t| trade_view(t, &sc)).collect();
                stream_message(&format!("{}@trade", sym.name), list)
            });
        }
    }

    fn subscribe(&self, id: u64, conn: &Arc<Conn>, key: StreamKey) {
        let mut subs = self.subs.write().expect("lock");
        let list = subs.entry(key).or_default();
        if !list.iter().any(|(c, _)| *c == id) {
            list.push((id, conn.clone()));
        }
    }

    fn unsubscribe(&self, id: u64, key: StreamKey) {
        let mut subs = self.subs.write().expect("lock");
        if let Some(list) = subs.get_mut(&key) {
            list.retain(|(c, _)| *c != id);
            if list.is_empty() {
                subs.remove(&key);
            }
        }
    }

    /// Counts a connection against its client's limit; `None` if the client is at it.
    fn admit(self: &Arc<Self>, client: String) -> Option<ClientSlot> {
        let mut clients = self.clients.lock().expect("lock");
        let n = clients.entry(client.clone()).or_default();
        if *n >= self.limits.connections_per_client_max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            hub: self.clone(),
            client,
        })
    }
}

/// A client's connection slot, given back when the connection ends.
struct ClientSlot {
    hub: Arc<Hub>,
    client: String,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut clients = self.hub.clients.lock().expect("lock");
        if let Some(n) = clients.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                clients.remove(&self.client);
            }
        }
    }
}

/// The symbols a commit's trades belong to, each once: the trades of a commit are not grouped
/// by symbol (A, B, A), and each symbol's trades must be queued exactly once.
fn traded_symbols(trades: &[TradeRow]) -> Vec<u32> {
    let mut symbols: Vec<u32> = trades.iter().map(|t| t.symbol).collect();
    symbols.sort_unstable();
    symbols.dedup();
    symbols
}

fn stream_message(stream: &str, data: impl serde::Serialize) -> Value {
    json!({ "stream": stream, "data": data })
}

/// A user-stream message: the view of what changed, tagged with what kind of change it is.
#[derive(serde::Serialize)]
struct UserEvent<T> {
    event: &'static str,
    #[serde(flatten)]
    data: T,
}

impl<T> UserEvent<T> {
    fn new(event: &'static str, data: T) -> Self {
        UserEvent { event, data }
    }
}

fn depth_json(diff: &DepthDiff, sc: Scales) -> Value {
    let side = |s: agora_engine::Side| {
        diff.changes
            .iter()
            .filter(|c| c.side == s)
            .map(|c| level_json(c.price, c.qty, sc))
            .collect::<Vec<_>>()
    };
    json!({
        "first_update_id": diff.first_update_id,
        "last_update_id": diff.last_update_id,
        "bids": side(agora_engine::Side::Buy),
        "asks": side(agora_engine::Side::Sell),
    })
}

impl CommitObserver for Hub {
    fn idle(&self, _market: &MarketData, r: &RefData) {
        let subs = self.subs.read().expect("lock");
        let mut out = Outbox::new(self, &subs);
        self.flush_trades(&mut out, r, self.clock.now_ms());
        out.send();
    }

    fn committed(
        &self,
        batch: &Committed,
        diffs: &[(u32, DepthDiff)],
        market: &MarketData,
        r: &RefData,
    ) {
        let named = |id: u32| {
            r.symbols
                .get(&id)
                .map(|s| (s.name.as_str(), Scales::of(r, s)))
        };
        let subs = self.subs.read().expect("lock");
        let mut out = Outbox::new(self, &subs);
        for (symbol, diff) in diffs {
            if let Some((name, sc)) = named(*symbol) {
                out.add(StreamKey::Depth(*symbol), || {
                    stream_message(&format!("{name}@depth"), depth_json(diff, sc))
                });
            }
        }
        for symbol in traded_symbols(&batch.trades) {
            let Some((name, sc)) = named(symbol) else {
                continue;
            };
            let now = self.clock.now_ms();
            if out.has_subscribers(StreamKey::Trades(symbol)) {
                let mut pending = self.pending_trades.lock().expect("lock");
                pending
                    .by_symbol
                    .entry(symbol)
                    .or_default()
                    .extend(batch.trades.iter().filter(|t| t.symbol == symbol).cloned());
            }
            let due = {
                let mut sent = self.ticker_sent_ms.lock().expect("lock");
                let last = sent.entry(symbol).or_insert(i64::MIN / 2);
                let due = now - *last >= TICKER_PERIOD_MS;
                if due {
                    *last = now;
                }
                due
            };
            if due {
                out.add(StreamKey::Ticker(symbol), || {
                    let m = market.symbol(symbol);
                    let guard = m.as_ref().map(|m| m.read().expect("lock"));
                    stream_message(
                        &format!("{name}@ticker"),
                        ticker_view(name, guard.as_deref(), sc, now),
                    )
                });
            }
        }
        self.flush_trades(&mut out, r, self.clock.now_ms());
        for row in &batch.candles {
            let Some((name, sc)) = named(row.symbol) else {
                continue;
            };
            let (interval, candle) = candle_of(row);
            out.add(StreamKey::Candles(row.symbol, interval), || {
                stream_message(
                    &format!("{name}@candle_{}", interval.as_str()),
                    candle_view(&candle, interval, sc),
                )
            });
        }
        for o in &batch.orders {
            out.add(StreamKey::User(o.user), || {
                stream_message("user", UserEvent::new("ORDER_UPDATE", order_view(o, r)))
            });
        }
        for b in &batch.balances {
            out.add(StreamKey::User(b.user), || {
                stream_message("user", UserEvent::new("BALANCE_UPDATE", balance_view(b, r)))
            });
        }
        out.send();
    }
}

/// `GET /ws`: upgrades to a WebSocket. `X-User-Id` is optional; it enables the user stream.
pub async fn ws_handler(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
) -> Response {
    let user = if headers.contains_key("x-user-id") {
        match ActingUser::from_headers(&headers, &state).await {
            Ok(ActingUser(u)) => Some(u),
            Err(problem) => return problem.into_response(),
        }
    } else {
        None
    };
    let hub = state.hub.clone();
    let client = client_key(user, peer.ip());
    let Some(slot) = hub.admit(client) else {
        return Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TOO_MANY_CONNECTIONS",
            format!(
                "at most {} WebSocket connections per client",
                hub.limits.connections_per_client_max
            ),
        )
        .into_response();
    };
    // tungstenite zero-fills up to `read_buffer_size` bytes on every read attempt, and the
    // connection's read half is polled each time the task wakes to write: a 128 KiB default
    // made memset 38% of the CPU under 1,000 subscribers. Client messages are small and rare,
    // and a longer one is still read whole (the buffer grows to the frame's length).
    ws.max_message_size(hub.limits.message_bytes_max)
        .max_frame_size(FRAME_BYTES_MAX.max(hub.limits.message_bytes_max))
        .read_buffer_size(READ_CHUNK_BYTES)
        .on_upgrade(move |socket| connection(socket, state, user, slot))
}

#[derive(Deserialize)]
struct Command {
    method: String,
    #[serde(default)]
    params: Vec<String>,
    #[serde(default)]
    id: Value,
}

fn error(code: &str, msg: impl Into<String>, id: Value) -> Value {
    json!({ "error": { "code": code, "msg": msg.into() }, "id": id })
}

fn parse_stream(name: &str, r: &RefData, user: Option<u64>) -> Result<StreamKey, Value> {
    if name == "user" {
        return user
            .map(StreamKey::User)
            .ok_or_else(|| json!("the user stream needs X-User-Id on the WebSocket request"));
    }
    let (symbol, kind) = name.split_once('@').ok_or_else(|| {
        json!(format!(
            "{name:?} is not SYMBOL@depth|trade|ticker|candle_<interval> or user"
        ))
    })?;
    let id = r
        .symbol_by_name
        .get(symbol)
        .copied()
        .ok_or_else(|| json!(format!("no symbol {symbol:?}")))?;
    match kind {
        "depth" => Ok(StreamKey::Depth(id)),
        "trade" => Ok(StreamKey::Trades(id)),
        "ticker" => Ok(StreamKey::Ticker(id)),
        _ => kind
            .strip_prefix("candle_")
            .and_then(Interval::parse)
            .map(|i| StreamKey::Candles(id, i))
            .ok_or_else(|| json!(format!("no stream kind {kind:?}"))),
    }
}

fn stream_name(key: StreamKey, r: &RefData) -> String {
    let name = |id: u32| {
        r.symbols
            .get(&id)
            .map_or("?", |s| s.name.as_str())
            .to_string()
    };
    match key {
        StreamKey::Depth(s) => format!("{}@depth", name(s)),
        StreamKey::Trades(s) => format!("{}@trade", name(s)),
        StreamKey::Ticker(s) => format!("{}@ticker", name(s)),
        StreamKey::Candles(s, i) => format!("{}@candle_{}", name(s), i.as_str()),
        StreamKey::User(_) => "user".to_string(),
    }
}

async fn connection(socket: WebSocket, state: AppState, user: Option<u64>, _slot: ClientSlot) {
    let mut c = Connection::new(socket, state, user);
    let end = c.serve().await;
    c.leave();
    c.close(end).await;
}

/// How a connection ends: what is written before its TCP connection is closed.
enum End {
    /// The TCP connection failed, or the client left without a close frame: nothing to write.
    Gone,
    /// The client sent a Close frame. tungstenite queued the echo RFC 6455 §5.5.1 requires
    /// when it read it, but writes it only on the next read, write or flush.
    ClosedByClient,
    /// The server closes with this frame.
    Close(CloseFrame),
}

impl End {
    fn close(code: u16, reason: &str) -> End {
        End::Close(CloseFrame {
            code,
            reason: close_reason(reason),
        })
    }

    fn slow(why: &str) -> End {
        End::close(close_code::POLICY, &format!("slow consumer: {why}"))
    }

    /// The close a read error calls for (RFC 6455 §7.4.1): 1009 for a message over
    /// `WsLimits::message_bytes_max`, 1007 for a text message that is not UTF-8, 1002 for any
    /// other protocol violation; nothing to write if the connection itself failed. tungstenite
    /// leaves the connection open for writing after these errors (it stops only at a close
    /// frame or the end of the stream), so the close frame can still be sent.
    fn after_read_error(e: axum::Error) -> End {
        use tungstenite::error::ProtocolError;
        let Ok(e) = e.into_inner().downcast::<tungstenite::Error>() else {
            return End::Gone;
        };
        let code = match &*e {
            tungstenite::Error::Capacity(_) => close_code::SIZE,
            tungstenite::Error::Utf8(_) => close_code::INVALID,
            tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                return End::Gone
            }
            tungstenite::Error::Protocol(_) | tungstenite::Error::AttackAttempt => {
                close_code::PROTOCOL
            }
            _ => return End::Gone, // I/O: the connection is gone
        };
        End::close(code, &e.to_string())
    }
}

/// A close reason fits a control frame's 125 bytes with the 2-byte code.
const CLOSE_REASON_BYTES_MAX: usize = 123;

fn close_reason(text: &str) -> Utf8Bytes {
    let mut end = text.len().min(CLOSE_REASON_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Utf8Bytes::from(&text[..end])
}

/// One WebSocket connection: its socket, the queue fan-out offers it batches on, and its
/// subscriptions.
struct Connection {
    socket: WebSocket,
    state: AppState,
    hub: Arc<Hub>,
    id: u64,
    conn: Arc<Conn>,
    rx: mpsc::Receiver<Vec<Utf8Bytes>>,
    user: Option<u64>,
    mine: FxHashSet<StreamKey>,
}

impl Connection {
    fn new(socket: WebSocket, state: AppState, user: Option<u64>) -> Connection {
        let hub = state.hub.clone();
        let (tx, rx) = mpsc::channel(hub.limits.send_buffer_batches);
        Connection {
            socket,
            id: hub.next_conn.fetch_add(1, Ordering::Relaxed),
            conn: Arc::new(Conn {
                tx,
                slow: AtomicBool::new(false),
                kick: Notify::new(),
            }),
            hub,
            state,
            rx,
            user,
            mine: FxHashSet::default(),
        }
    }

    /// Writes what fan-out queues and answers the client's commands until the connection ends.
    async fn serve(&mut self) -> End {
        loop {
            tokio::select! {
                biased;
                _ = self.conn.kick.notified() => return End::slow("send buffer full"),
                batch = self.rx.recv() => {
                    // `conn` holds a sender, so the queue never ends while this runs.
                    let Some(batch) = batch else { return End::Gone };
                    if let Some(end) = self.write(batch).await {
                        return end;
                    }
                }
                msg = self.socket.recv() => {
                    if let Some(end) = self.on_message(msg) {
                        return end;
                    }
                }
            }
        }
    }

    /// Writes `batch`, and whatever else is queued up to `WRITE_FRAMES_MAX` frames, with one
    /// flush within `WRITE_TIMEOUT`; how the connection ends if that fails.
    async fn write(&mut self, mut batch: Vec<Utf8Bytes>) -> Option<End> {
        let mut taken = 1;
        while batch.len() < WRITE_FRAMES_MAX {
            match self.rx.try_recv() {
                Ok(more) => {
                    batch.extend(more);
                    taken += 1;
                }
                Err(_) => break,
            }
        }
        let socket = &mut self.socket;
        let write = async {
            for m in batch {
                socket.feed(Message::Text(m)).await?;
            }
            socket.flush().await
        };
        // A client that stops reading stalls the write: the deadline ends it, and a kick
        // (its queue filled meanwhile) still wins before.
        let end = tokio::select! {
            r = tokio::time::timeout(WRITE_TIMEOUT, write) => match r {
                Ok(Ok(())) => None,
                Ok(Err(_)) => Some(End::Gone),
                Err(_) => Some(End::slow("write timed out")),
            },
            _ = self.conn.kick.notified() => Some(End::slow("send buffer full")),
        };
        self.hub.in_flight.fetch_sub(taken, Ordering::Relaxed);
        end
    }

    /// Answers a client message; how the connection ends if it does.
    fn on_message(&mut self, msg: Option<Result<Message, axum::Error>>) -> Option<End> {
        let reply = match msg {
            Some(Ok(Message::Text(text))) => handle_command(
                &text,
                &self.state,
                &self.hub,
                self.id,
                &self.conn,
                self.user,
                &mut self.mine,
            ),
            Some(Ok(Message::Binary(_))) => {
                error("UNSUPPORTED", "send JSON text frames", Value::Null)
            }
            Some(Ok(Message::Close(_))) => return Some(End::ClosedByClient),
            Some(Ok(_)) => return None, // ping/pong are answered by the protocol layer
            Some(Err(e)) => return Some(End::after_read_error(e)),
            None => return Some(End::Gone),
        };
        // Through the queue, like stream data: written in order with it and under the same
        // rules, so a client that does not read its replies is a slow consumer like one that
        // does not read its streams (it never holds the connection's task in a write).
        let reply = Utf8Bytes::from(reply.to_string());
        self.conn.offer(vec![reply], &self.hub.in_flight);
        None
    }

    /// Leaves every subscription, and uncounts what the connection will never write.
    fn leave(&mut self) {
        for key in self.mine.drain() {
            self.hub.unsubscribe(self.id, key);
        }
        // No fan-out reaches this connection any more (it left every subscription under the
        // write lock); what it never wrote is no longer in flight.
        self.rx.close();
        let mut dropped = 0;
        while self.rx.try_recv().is_ok() {
            dropped += 1;
        }
        self.hub.in_flight.fetch_sub(dropped, Ordering::Relaxed);
    }

    /// Ends the WebSocket as `end` says, giving the client at most `CLOSE_TIMEOUT` to take the
    /// close frame; the TCP connection closes when the socket is dropped.
    async fn close(&mut self, end: End) {
        let socket = &mut self.socket;
        let closing = async move {
            match end {
                End::Gone => Ok(()),
                End::ClosedByClient => socket.flush().await,
                End::Close(frame) => socket.send(Message::Close(Some(frame))).await,
            }
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
    }
}

fn handle_command(
    text: &str,
    state: &AppState,
    hub: &Hub,
    id: u64,
    conn: &Arc<Conn>,
    user: Option<u64>,
    mine: &mut FxHashSet<StreamKey>,
) -> Value {
    let command: Command = match serde_json::from_str(text) {
        Ok(c) => c,
        Err(e) => return error("MALFORMED_JSON", e.to_string(), Value::Null),
    };
    let r = state.exchange.refdata();
    match command.method.as_str() {
        "SUBSCRIBE" | "UNSUBSCRIBE" => {
            if command.params.is_empty() {
                return error(
                    "MISSING_PARAMS",
                    "params must name at least one stream",
                    command.id,
                );
            }
            let mut keys = Vec::new();
            for name in &command.params {
                match parse_stream(name, &r, user) {
                    Ok(k) => keys.push(k),
                    Err(why) => {
                        return error("INVALID_STREAM", why.as_str().unwrap_or(""), command.id)
                    }
                }
            }
            if command.method == "SUBSCRIBE" {
                let new: FxHashSet<StreamKey> =
                    keys.iter().copied().filter(|k| !mine.contains(k)).collect();
                if mine.len() + new.len() > hub.limits.subscriptions_max {
                    return error(
                        "TOO_MANY_SUBSCRIPTIONS",
                        format!(
                            "at most {} subscriptions per connection",
                            hub.limits.subscriptions_max
                        ),
                        command.id,
                    );
                }
                for k in new {
                    hub.subscribe(id, conn, k);
                    mine.insert(k);
                }
            } else {
                for k in keys {
                    if mine.remove(&k) {
                        hub.unsubscribe(id, k);
                    }
                }
            }
            json!({ "result": null, "id": command.id })
        }
        "LIST_SUBSCRIPTIONS" => {
            let mut names: Vec<String> = mine.iter().map(|k| stream_name(*k, &r)).collect();
            names.sort();
            json!({ "result": names, "id": command.id })
        }
        other => error(
            "UNKNOWN_METHOD",
            format!("{other:?}: use SUBSCRIBE, UNSUBSCRIBE or LIST_SUBSCRIPTIONS"),
            command.id,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trades_go_out_at_once_after_a_quiet_spell_and_at_most_every_interval_under_load() {
        // Nothing waiting: nothing to send.
        assert!(!trade_flush_due(i64::MAX / 2, true, 0));
        // A trade after a quiet spell goes out at once.
        assert!(trade_flush_due(10 * TRADE_FLUSH_INTERVAL_MS, true, 1));
        // Under load, not again before the interval…
        assert!(!trade_flush_due(TRADE_FLUSH_INTERVAL_MS - 1, true, 5));
        assert!(trade_flush_due(TRADE_FLUSH_INTERVAL_MS, true, 5));
        // …and not before the previous batch is written, up to the longest wait.
        assert!(!trade_flush_due(TRADE_FLUSH_INTERVAL_MS, false, 5));
        assert!(!trade_flush_due(TRADE_FLUSH_WAIT_MAX_MS - 1, false, 5));
        assert!(trade_flush_due(TRADE_FLUSH_WAIT_MAX_MS, false, 5));
        // A full batch goes out regardless.
        assert!(trade_flush_due(0, false, TRADE_BATCH_MAX));
    }

    #[test]
    fn read_errors_close_with_their_rfc_6455_codes() {
        use tungstenite::error::{CapacityError, ProtocolError};
        let code = |e: tungstenite::Error| match End::after_read_error(axum::Error::new(e)) {
            End::Close(frame) => Some(frame.code),
            _ => None,
        };
        let too_long = CapacityError::MessageTooLong {
            size: 4_097,
            max_size: 4_096,
        };
        assert_eq!(code(tungstenite::Error::Capacity(too_long)), Some(1009));
        assert_eq!(code(tungstenite::Error::Utf8("bad".into())), Some(1007));
        let rsv = ProtocolError::NonZeroReservedBits;
        assert_eq!(code(tungstenite::Error::Protocol(rsv)), Some(1002));
        // The connection is gone: nothing to write.
        let reset = ProtocolError::ResetWithoutClosingHandshake;
        assert_eq!(code(tungstenite::Error::Protocol(reset)), None);
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(code(tungstenite::Error::Io(io)), None);
    }

    #[test]
    fn a_close_reason_is_cut_to_fit_a_control_frame_on_a_char_boundary() {
        let long = "é".repeat(100); // 200 bytes
        let reason = close_reason(&long);
        assert_eq!(reason.len(), 122);
        assert_eq!(close_reason("bye").as_str(), "bye");
    }

    #[tokio::test]
    async fn a_full_queue_marks_the_connection_slow_and_kicks_it() {
        let (tx, mut rx) = mpsc::channel(1);
        let conn = Conn {
            tx,
            slow: AtomicBool::new(false),
            kick: Notify::new(),
        };
        let in_flight = AtomicUsize::new(0);
        conn.offer(vec![Utf8Bytes::from("a")], &in_flight);
        assert!(!conn.slow.load(Ordering::Relaxed));
        conn.offer(vec![Utf8Bytes::from("b")], &in_flight);
        assert!(conn.slow.load(Ordering::Relaxed));
        let kicked = tokio::time::timeout(Duration::from_secs(1), conn.kick.notified()).await;
        assert!(kicked.is_ok(), "not kicked");
        // Only what is queued counts as in flight.
        assert_eq!(in_flight.load(Ordering::Relaxed), 1);
        assert_eq!(rx.recv().await, Some(vec![Utf8Bytes::from("a")]));
    }

    #[test]
    fn a_commit_s_symbols_are_listed_once_even_when_its_trades_interleave() {
        let trade = |symbol| TradeRow {
            seq: 1,
            symbol,
            trade_id: 1,
            price: 1,
            qty: 1,
            quote_qty: 1,
            buy_order: 1,
            sell_order: 2,
            buyer: 1,
            seller: 2,
            taker_side: agora_engine::Side::Buy,
            buyer_fee: 0,
            seller_fee: 0,
            created_ms: 0,
        };
        let trades = [trade(7), trade(3), trade(7), trade(7), trade(3), trade(9)];
        assert_eq!(traded_symbols(&trades), vec![3, 7, 9]);
        assert!(traded_symbols(&[]).is_empty());
    }
}
