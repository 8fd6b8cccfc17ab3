//! A second venue on the core, written with nothing from the exchange: vouchers bought with
//! points. It shows what a venue brings (its requests, its table and migration, its
//! consumer's feedback) and what the core gives it (group commit, ledger posting with holds,
//! the outbox and its relay, exactly-once feedback by position, catch-up after a restart).
//!
//! Flow: `Grant` credits points; `Buy` holds the price and records a PENDING voucher and a
//! `VoucherRequested` event in one commit; an issuer (a consumer on the event log) issues it
//! and feeds back `Issued`; the writer then spends the hold and marks the voucher ISSUED,
//! recording the issuer's position in the same commit.

use agora_bus::{Delivered, EmbeddedLog, LogConsumer, Polled};
use agora_core::accounts::BalanceRow;
use agora_core::outbox::{put_consumer_offset, OutboxRow};
use agora_core::store::{Database, Migration, Table, WriteBatch};
use agora_core::writer::{Core, RequestPort, Venue, Writer, WriterLimits};
use agora_core::SystemClock;
use agora_ledger::{Account, Bucket, Entry, EntryKind, Posting};
use agora_store::sqlite::{Durability, SqliteStore};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

const POINTS: u32 = 1;
const KEY: &str = "vouchers";

static VOUCHERS: Table = Table {
    name: "vouchers",
    columns: &["id", "user_id", "price", "status"],
    key_len: 1,
    update: &["status"],
};

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    sqlite: "CREATE TABLE vouchers (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, \
             price INTEGER NOT NULL, status TEXT NOT NULL)",
    postgres: "",
    mysql: "",
}];

enum Request {
    Grant {
        user: u64,
        points: i64,
    },
    Buy {
        user: u64,
        price: i64,
        reply: oneshot::Sender<Result<u64, String>>,
    },
}

/// The issuer's answer: voucher `id` (from the event at `seq`) is issued.
struct Issued {
    seq: i64,
    id: u64,
}

struct Vouchers {
    next_id: u64,
    /// Price and buyer of each PENDING voucher.
    pending: std::collections::HashMap<u64, (u64, i64)>,
    /// The issuer's position: events at or below it are applied.
    issued_through: i64,
    changed: Vec<(u64, u64, i64, &'static str)>,
    position_changed: bool,
    published: Arc<AtomicU64>,
    applied: Arc<AtomicU64>,
}

impl Vouchers {
    fn load(db: &mut dyn Database, published: Arc<AtomicU64>, applied: Arc<AtomicU64>) -> Self {
        db.migrate("vouchers", MIGRATIONS).unwrap();
        let next_id = db
            .query_one("SELECT COALESCE(MAX(id), 0) FROM vouchers", &[])
            .unwrap()
            .unwrap()
            .int(0)
            .unwrap() as u64;
        let pending = db
            .query(
                "SELECT id, user_id, price FROM vouchers WHERE status = 'PENDING'",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0).unwrap(), (r.get(1).unwrap(), r.int(2).unwrap())))
            .collect();
        let issued_through = db
            .query_one(
                "SELECT position FROM consumer_offsets WHERE consumer = 'issuer' \
                 AND partition_key = ?",
                &[KEY.into()],
            )
            .unwrap()
            .map_or(0, |r| r.int(0).unwrap());
        Vouchers {
            next_id,
            pending,
            issued_through,
            changed: Vec::new(),
            position_changed: false,
            published,
            applied,
        }
    }
}

fn points(account: Account, amount: i64) -> Posting {
    Posting {
        account,
        asset: POINTS,
        amount,
    }
}

impl Venue for Vouchers {
    type Request = Request;
    type Feedback = Issued;
    type Deferred = ();

    fn apply_request(&mut self, core: &mut Core, request: Request) {
        match request {
            Request::Grant { user, points: n } => {
                let user_available = Account::User {
                    user,
                    bucket: Bucket::Available,
                };
                let grant = Entry::new(
                    EntryKind::Deposit,
                    vec![points(Account::External, -n), points(user_available, n)],
                )
                .unwrap();
                core.post(grant, None).unwrap();
            }
            Request::Buy { user, price, reply } => {
                let hold = Entry::transfer(
                    EntryKind::Hold,
                    user,
                    POINTS,
                    Bucket::Available,
                    Bucket::Held,
                    price,
                )
                .unwrap();
                if let Err(e) = core.post(hold, None) {
                    let _ = reply.send(Err(e.to_string())); // refused: nothing changed
                    return;
                }
                self.next_id += 1;
                let id = self.next_id;
                self.pending.insert(id, (user, price));
                self.changed.push((id, user, price, "PENDING"));
                core.append_event("voucher", KEY, "VoucherRequested", id.to_string());
                core.reply_after_commit(reply, Ok(id));
            }
        }
    }

    fn apply_feedback(&mut self, core: &mut Core, issued: Issued) -> Option<()> {
        self.applied.fetch_add(1, Ordering::AcqRel);
        if issued.seq <= self.issued_through {
            return None; // delivered again after a restart: applied before
        }
        let (user, price) = self.pending.remove(&issued.id).expect("a pending voucher");
        let spend = Entry::new(
            EntryKind::Withdrawal,
            vec![
                points(
                    Account::User {
                        user,
                        bucket: Bucket::Held,
                    },
                    -price,
                ),
                points(Account::External, price),
            ],
        )
        .unwrap();
        core.post(spend, Some(issued.id as i64))
            .expect("the hold backs it");
        self.changed.push((issued.id, user, price, "ISSUED"));
        self.issued_through = issued.seq;
        self.position_changed = true;
        None
    }

    fn refuse(&mut self, request: Request) {
        if let Request::Buy { reply, .. } = request {
            let _ = reply.send(Err("stopping".into()));
        }
    }

    fn consumed(&self, _key: &str) -> i64 {
        self.issued_through
    }

    fn publishes(&self, _row: &OutboxRow) -> bool {
        true
    }

    fn stage(&mut self, _now_ms: i64, batch: &mut WriteBatch) {
        for (id, user, price, status) in self.changed.drain(..) {
            batch.put(
                &VOUCHERS,
                [id.into(), user.into(), price.into(), status.into()],
            );
        }
        if std::mem::take(&mut self.position_changed) {
            put_consumer_offset(batch, "issuer", KEY, self.issued_through);
        }
    }

    fn committing(&mut self, events: &[OutboxRow]) {
        self.published
            .fetch_add(events.len() as u64, Ordering::AcqRel);
    }

    fn durable(&mut self, _balances: Vec<BalanceRow>) {}
}

/// A running venue: its request port, its writer thread, and its issuer thread.
struct Running {
    port: RequestPort<Request>,
    writer: std::thread::JoinHandle<()>,
}

fn start(path: &Path, issuing: bool) -> Running {
    let mut db = SqliteStore::open(path, Durability::Normal).unwrap();
    db.migrate("core", agora_core::MIGRATIONS).unwrap();
    let (published, applied) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let venue = Vouchers::load(&mut db, published, applied);
    let log = EmbeddedLog::new(1, 64);
    let mut events = log.consumer([0]).unwrap();
    let core = Core::load(Box::new(db), Arc::new(SystemClock), Arc::new(log), 1_000).unwrap();
    let limits = WriterLimits {
        drain_max: Duration::from_millis(300),
        ..WriterLimits::default()
    };
    let writer = Writer::new(core, venue, limits);
    let (port, requests) = RequestPort::bounded(64);
    let (feedback_tx, feedback) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        // The issuer: a consumer on the log that issues each requested voucher (a stopped
        // one never answers).
        if !issuing {
            return std::thread::park();
        }
        loop {
            match events.poll(Duration::from_millis(50)) {
                Ok(Polled::Records(batch)) => {
                    for Delivered { record, .. } in batch {
                        let id = record.payload.parse().unwrap();
                        let issued = Issued {
                            seq: record.seq,
                            id,
                        };
                        if feedback_tx.send(issued).is_err() {
                            return;
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let writer = std::thread::spawn(move || writer.run(requests, feedback));
    Running { port, writer }
}

impl Running {
    async fn buy(&self, user: u64, price: i64) -> Result<u64, String> {
        let (reply, rx) = oneshot::channel();
        self.port
            .send(Request::Buy { user, price, reply })
            .await
            .unwrap();
        rx.await.unwrap()
    }

    async fn stop(self) {
        self.port.shutdown().await;
        tokio::task::spawn_blocking(move || self.writer.join().unwrap())
            .await
            .unwrap();
    }
}

fn stored(path: &Path) -> (i64, i64, Vec<String>, i64) {
    let mut db = SqliteStore::open(path, Durability::Normal).unwrap();
    let balance = db
        .query_one(
            "SELECT available, held FROM balances WHERE user_id = 7 AND asset_id = 1",
            &[],
        )
        .unwrap()
        .unwrap();
    let statuses = db
        .query("SELECT status FROM vouchers ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.text(0).unwrap().to_string())
        .collect();
    let external = db
        .query_one(
            "SELECT amount FROM venue_balances WHERE account = 'EXTERNAL' AND asset_id = 1",
            &[],
        )
        .unwrap()
        .unwrap()
        .int(0)
        .unwrap();
    (
        balance.int(0).unwrap(),
        balance.int(1).unwrap(),
        statuses,
        external,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_venue_holds_settles_and_recovers_on_the_core_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vouchers.db");

    let venue = start(&path, true);
    venue
        .port
        .send(Request::Grant {
            user: 7,
            points: 100,
        })
        .await
        .unwrap();
    assert_eq!(venue.buy(7, 30).await, Ok(1));
    assert_eq!(venue.buy(7, 50).await, Ok(2));
    // 20 points left: a 40-point voucher is refused and changes nothing.
    assert!(venue.buy(7, 40).await.unwrap_err().contains("insufficient"));
    venue.stop().await; // waits until both are issued
    assert_eq!(
        stored(&path),
        (20, 0, vec!["ISSUED".into(), "ISSUED".into()], -20)
    );

    // Bought while the issuer is down, then the writer stops with the event in flight.
    let venue = start(&path, false);
    assert_eq!(venue.buy(7, 15).await, Ok(3));
    venue.stop().await; // gives up after drain_max: the voucher stays PENDING, points held
    assert_eq!(
        stored(&path),
        (
            5,
            15,
            vec!["ISSUED".into(), "ISSUED".into(), "PENDING".into()],
            -20
        )
    );

    // On restart the relay re-publishes what was not applied; it is applied exactly once.
    let venue = start(&path, true);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stored(&path).2[2] != "ISSUED" {
        assert!(
            std::time::Instant::now() < deadline,
            "not issued after restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    venue.stop().await;
    assert_eq!(
        stored(&path),
        (
            5,
            0,
            vec!["ISSUED".into(), "ISSUED".into(), "ISSUED".into()],
            -5
        )
    );
}
