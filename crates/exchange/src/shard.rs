//! An engine shard: one thread, the only writer of the books of its symbols, fed by one
//! partition of the event log. No locks on the matching path: the books are owned by this
//! thread and nothing else touches them.
//!
//! Each record's offset is compared with the symbol's cursor, so inputs re-published after a
//! restart are dropped instead of being matched twice. Outputs go to the sequencer per run of
//! one symbol's inputs, with the cursor and the next trade id to commit alongside them.

use crate::events::BookInput;
use crate::sequencer::EngineOutput;
use agora_bus::Record;
use agora_engine::{Book, BookSpec, RestingOrder};
use crossbeam_channel::{select, Receiver};
use rustc_hash::FxHashMap;
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
    Stop,
}

pub(crate) struct ShardBook {
    pub book: Book,
    pub input_seq: i64,
}

pub(crate) struct Shard {
    pub books: FxHashMap<u32, ShardBook>,
    pub outputs: mpsc::UnboundedSender<EngineOutput>,
}

impl Shard {
    pub(crate) fn run(mut self, log: Receiver<Vec<Record>>, control: Receiver<ShardControl>) {
        loop {
            select! {
                recv(log) -> batch => match batch {
                    Ok(batch) => self.apply(batch),
                    Err(_) => break,
                },
                recv(control) -> msg => match msg {
                    Ok(ShardControl::Snapshot { symbol, reply }) => {
                        let snapshot = self.books.get(&symbol).map(|b| BookSnapshot {
                            resting: b.book.resting(),
                            next_trade_id: b.book.next_trade_id(),
                            input_seq: b.input_seq,
                        });
                        let _ = reply.send(snapshot);
                    }
                    Ok(ShardControl::Stop) | Err(_) => break,
                },
            }
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
                    panic!("undecodable book input at offset {}: {e}", record.offset);
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
                panic!(
                    "input for unknown symbol {symbol} at offset {}",
                    record.offset
                );
            };
            if record.offset <= state.input_seq {
                continue; // already applied before a restart
            }
            if let Some(command) = input.command() {
                state.book.execute(&command, &mut out.events);
            }
            state.input_seq = record.offset;
            out.last_input_seq = record.offset;
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
        let _ = self.outputs.send(out);
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
            offset,
            key: "S".into(),
            event_type: input.event_type().into(),
            payload: serde_json::to_string(&input).unwrap().into(),
        }
    }

    fn shard_at(input_seq: i64) -> (Shard, mpsc::UnboundedReceiver<EngineOutput>) {
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
        let out = rx.try_recv().unwrap();
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
        let out = rx.try_recv().unwrap();
        assert_eq!((out.inputs, out.last_input_seq), (2, 5));
        assert!(out.events.is_empty());
        assert!(shard.books[&7].book.is_empty());
    }
}
