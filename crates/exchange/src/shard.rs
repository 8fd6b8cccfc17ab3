//! An engine shard: one thread, the only writer of the books of its symbols, fed by one
//! partition of the event log. No locks on the matching path: the books are owned by this
//! thread and nothing else touches them.
//!
//! Each record's offset is compared with the symbol's cursor, so inputs re-published after a
//! restart are dropped instead of being matched twice. Outputs go to the sequencer per run of
//! one symbol's inputs, with the cursor and the next trade id to commit alongside them.

use crate::events::BookInput;
use crate::reconcile::BookVerdict;
use crate::sequencer::{EngineOutput, ShardOutput};
use agora_bus::{LogConsumer, LogError, Polled, Record};
use agora_engine::{Book, BookSpec, RestingOrder};
use crossbeam_channel::{Receiver, TryRecvError};
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// A book as the shard holds it, for comparison with the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BookSnapshot {
    pub resting: Vec<RestingOrder>,
    pub next_trade_id: u64,
    /// Offset of the last input applied.
    pub input_seq: i64,
}

pub enum ShardControl {
    Snapshot {
        symbol: u32,
        reply: oneshot::Sender<Option<BookSnapshot>>,
    },
    /// Compare the book with the store. Answered through the output stream (see
    /// [`BookAudit`]), not here.
    Audit {
        symbol: u32,
        reply: oneshot::Sender<BookVerdict>,
        in_flight: InFlight,
    },
    Stop,
}

/// A book audit on its way to the sequencer in the shard's output stream, behind every
/// output of the symbol the shard sent before it: when the sequencer reaches it, it has
/// applied exactly the outputs up to `snapshot.input_seq`, the cut at which the snapshot
/// was taken.
pub(crate) struct BookAudit {
    pub symbol: u32,
    /// `None` when the shard has no book for the symbol (not listed to the engine yet).
    pub snapshot: Option<BookSnapshot>,
    pub reply: oneshot::Sender<BookVerdict>,
    pub in_flight: InFlight,
}

/// Marks one symbol's book audit as in flight until dropped, wherever that happens
/// (answered, or abandoned because a thread stopped), so that at most one is queued.
pub struct InFlight(Arc<AtomicBool>);

impl InFlight {
    /// Takes the flag, or `None` if an audit already holds it.
    pub(crate) fn take(flag: &Arc<AtomicBool>) -> Option<InFlight> {
        (!flag.swap(true, Ordering::AcqRel)).then(|| InFlight(flag.clone()))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

pub(crate) struct ShardBook {
    pub book: Book,
    pub input_seq: i64,
}

pub(crate) struct Shard {
    pub books: FxHashMap<u32, ShardBook>,
    pub outputs: mpsc::UnboundedSender<ShardOutput>,
}

impl Shard {
    /// Consumes the book inputs of the partitions `log` is assigned, until stopped.
    pub(crate) fn run(mut self, mut log: impl LogConsumer, control: Receiver<ShardControl>) {
        // Records wake `poll` at once; the slice only bounds how long an idle shard takes to
        // see a control message.
        const POLL_SLICE: Duration = Duration::from_millis(2);
        loop {
            loop {
                match control.try_recv() {
                    Ok(ShardControl::Stop) | Err(TryRecvError::Disconnected) => return,
                    Ok(msg) => self.control(msg),
                    Err(TryRecvError::Empty) => break,
                }
            }
            match log.poll(POLL_SLICE) {
                Ok(Polled::Records(batch)) => {
                    self.apply(batch.into_iter().map(|d| d.record).collect())
                }
                // Embedded: the assignment is fixed for the shard's life.
                Ok(Polled::Assigned(_) | Polled::Revoked(_) | Polled::Idle) => {}
                Err(LogError::Closed) => return,
                Err(e) => panic!("event log: {e}"),
            }
        }
    }

    fn snapshot(&self, symbol: u32) -> Option<BookSnapshot> {
        self.books.get(&symbol).map(|b| BookSnapshot {
            resting: b.book.resting(),
            next_trade_id: b.book.next_trade_id(),
            input_seq: b.input_seq,
        })
    }

    fn control(&mut self, msg: ShardControl) {
        match msg {
            ShardControl::Snapshot { symbol, reply } => {
                let _ = reply.send(self.snapshot(symbol));
            }
            ShardControl::Audit {
                symbol,
                reply,
                in_flight,
            } => {
                // Every output of this book so far has been sent (`apply` sends before it
                // returns), so this one follows them all.
                let audit = BookAudit {
                    symbol,
                    snapshot: self.snapshot(symbol),
                    reply,
                    in_flight,
                };
                let _ = self.outputs.send(ShardOutput::BookAudit(audit));
            }
            ShardControl::Stop => {}
        }
    }

    fn apply(&mut self, batch: Vec<Record>) {
        let mut current: Option<EngineOutput> = None;
        for record in batch {
            let input: BookInput = match serde_json::from_str(&record.payload) {
                Ok(input) => input,
                Err(e) => {
                    // Only the sequencer writes book inputs; one that does not parse is a
                    // bug or a corrupt store, and skipping it would silently lose an order.
                    panic!("undecodable book input at offset {}: {e}", record.seq);
                }
            };
            let symbol = input.symbol();
            if current.as_ref().is_some_and(|o| o.symbol != symbol) {
                self.send(current.take());
            }
            let out = current.get_or_insert_with(|| EngineOutput {
                symbol,
                last_input_seq: 0,
                next_trade_id: 0,
                inputs: 0,
                events: Vec::new(),
            });
            out.inputs += 1;
            if let BookInput::SymbolListed {
                base_unit,
                lot_size,
                ..
            } = input
            {
                self.books.entry(symbol).or_insert_with(|| ShardBook {
                    book: Book::new(BookSpec {
                        base_unit,
                        lot_size,
                    }),
                    input_seq: 0,
                });
            }
            let Some(state) = self.books.get_mut(&symbol) else {
                panic!("input for unknown symbol {symbol} at offset {}", record.seq);
            };
            if record.seq <= state.input_seq {
                continue; // already applied before a restart
            }
            if let Some(command) = input.command() {
                state.book.execute(&command, &mut out.events);
            }
            state.input_seq = record.seq;
            out.last_input_seq = record.seq;
            out.next_trade_id = state.book.next_trade_id();
        }
        self.send(current);
    }

    fn send(&mut self, out: Option<EngineOutput>) {
        let Some(mut out) = out else { return };
        if out.last_input_seq == 0 {
            // Only duplicates: report them as consumed, at the cursor already committed.
            let state = &self.books[&out.symbol];
            out.last_input_seq = state.input_seq;
            out.next_trade_id = state.book.next_trade_id();
        }
        // The sequencer outlives the shards; if it is gone the process is stopping.
        let _ = self.outputs.send(ShardOutput::Engine(out));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_engine::{Event, NewOrder, OrderKind, SelfTradePrevention, Side, TimeInForce};

    fn accepted(offset: i64, id: u64) -> Record {
        let input = BookInput::OrderAccepted {
            symbol: 7,
            order: NewOrder {
                id,
                user: 1,
                side: Side::Buy,
                kind: OrderKind::Limit {
                    price: 100,
                    qty: 1,
                    tif: TimeInForce::Gtc,
                },
                stp: SelfTradePrevention::None,
            },
        };
        Record {
            seq: offset,
            key: "S".into(),
            event_type: input.event_type().into(),
            payload: serde_json::to_string(&input).unwrap().into(),
        }
    }

    fn next_engine_output(rx: &mut mpsc::UnboundedReceiver<ShardOutput>) -> EngineOutput {
        match rx.try_recv() {
            Ok(ShardOutput::Engine(out)) => out,
            Ok(ShardOutput::BookAudit(_)) => panic!("a book audit where an output was due"),
            Err(e) => panic!("no output: {e}"),
        }
    }

    fn shard_at(input_seq: i64) -> (Shard, mpsc::UnboundedReceiver<ShardOutput>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut books = FxHashMap::default();
        books.insert(
            7,
            ShardBook {
                book: Book::new(BookSpec {
                    base_unit: 1,
                    lot_size: 1,
                }),
                input_seq,
            },
        );
        (Shard { books, outputs: tx }, rx)
    }

    #[test]
    fn inputs_at_or_below_the_cursor_are_dropped_and_counted() {
        let (mut shard, mut rx) = shard_at(2);
        // Offsets 1 and 2 were applied before a restart and come again; 3 is new.
        shard.apply(vec![accepted(1, 1), accepted(2, 2), accepted(3, 3)]);
        let out = next_engine_output(&mut rx);
        assert_eq!((out.inputs, out.last_input_seq), (3, 3));
        let rested: Vec<u64> = out
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Rested { order, .. } => Some(*order),
                _ => None,
            })
            .collect();
        assert_eq!(rested, vec![3]);
        assert_eq!(shard.books[&7].book.len(), 1);
    }

    #[test]
    fn a_batch_of_only_duplicates_reports_the_committed_cursor() {
        let (mut shard, mut rx) = shard_at(5);
        shard.apply(vec![accepted(4, 1), accepted(5, 2)]);
        let out = next_engine_output(&mut rx);
        assert_eq!((out.inputs, out.last_input_seq), (2, 5));
        assert!(out.events.is_empty());
        assert!(shard.books[&7].book.is_empty());
    }

    #[test]
    fn a_book_audit_follows_the_outputs_sent_before_it_with_their_cut() {
        let (mut shard, mut rx) = shard_at(0);
        shard.apply(vec![accepted(1, 1), accepted(2, 2)]);
        let flag = Arc::new(AtomicBool::new(false));
        let (reply, _answer) = oneshot::channel();
        shard.control(ShardControl::Audit {
            symbol: 7,
            reply,
            in_flight: InFlight::take(&flag).unwrap(),
        });
        // A second audit of the same book cannot be queued while the first is in flight.
        assert!(InFlight::take(&flag).is_none());
        shard.apply(vec![accepted(3, 3)]);
        assert_eq!(next_engine_output(&mut rx).last_input_seq, 2);
        let audit = match rx.try_recv() {
            Ok(ShardOutput::BookAudit(a)) => a,
            _ => panic!("the audit must come right after the outputs sent before it"),
        };
        let snapshot = audit.snapshot.as_ref().unwrap();
        assert_eq!(snapshot.input_seq, 2);
        let ids: Vec<u64> = snapshot.resting.iter().map(|o| o.id).collect();
        assert_eq!(ids, vec![1, 2]);
        assert_eq!(next_engine_output(&mut rx).last_input_seq, 3);
        drop(audit);
        assert!(
            InFlight::take(&flag).is_some(),
            "dropping the audit frees the flag"
        );
    }
}
