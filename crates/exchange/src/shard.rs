//! An engine shard: one thread, the only writer of the books of its symbols, fed by one
//! partition of the event log. No locks on the matching path: the books are owned by this
//! thread and nothing else touches them.
//!
//! Each record's offset is compared with the symbol's cursor, so inputs re-published after a
//! restart are dropped instead of being matched twice. Outputs go to the sequencer per run of
//! one symbol's inputs, with the cursor and the next trade id to commit alongside them.

use crate::events::BookInput;
use crate::reconcile::BookVerdict;
use crate::sequencer::{EngineOutput, LogPosition, ShardOutput};
use agora_bus::{Delivered, EventLog, LogConsumer, LogError, Polled, Record};
use agora_engine::{Book, BookSpec, RestingOrder};
use crossbeam_channel::{Receiver, TryRecvError};
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// A book as the shard holds it, for comparison with the store.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// Where a shard's outputs go.
pub(crate) enum Outputs {
    /// Embedded: the writer's feedback channel, one output per run of a symbol's inputs.
    Local(mpsc::UnboundedSender<ShardOutput>),
    /// Distributed: the engine-output topic, one output per input, appended to the input's
    /// partition number (so settlement applies one input partition's outputs in order, and
    /// a replayed input never straddles what settlement already applied).
    Log(Arc<dyn EventLog>),
}

/// Distributed mode: the books of the partitions a member is assigned, read from the store.
pub(crate) trait BookSource: Send {
    /// The books of the symbols on `partitions` as the store has them, and per partition
    /// the log offset to resume reading from.
    fn load(&mut self, partitions: &[u32]) -> Result<AssignedBooks, String>;
}

pub(crate) struct AssignedBooks {
    pub books: FxHashMap<u32, ShardBook>,
    /// The partition of each book.
    pub partition_of: FxHashMap<u32, u32>,
    pub resume_at: Vec<(u32, i64)>,
}

pub(crate) struct Shard {
    pub books: FxHashMap<u32, ShardBook>,
    pub outputs: Outputs,
    /// Distributed mode: rebuilds books on assignment. `None`: the assignment is fixed.
    pub source: Option<Box<dyn BookSource>>,
    /// Which partition each book came from (to drop them when it is revoked).
    pub partition_of: FxHashMap<u32, u32>,
}

/// How long a member waits between attempts to load assigned books from the store.
const LOAD_RETRY: Duration = Duration::from_millis(500);

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
                Ok(Polled::Records(batch)) => self.apply(batch),
                Ok(Polled::Assigned(partitions)) => {
                    if !self.assigned(&mut log, &partitions, &control) {
                        return;
                    }
                }
                Ok(Polled::Revoked(partitions)) => self.revoked(&partitions),
                Ok(Polled::Idle) => {}
                Err(LogError::Closed) => return,
                Err(e) => panic!("event log: {e}"),
            }
        }
    }

    /// Rebuilds the books of newly assigned partitions from the store (retrying while it
    /// cannot be read) and moves the reading position to where they were left. False if
    /// told to stop meanwhile.
    fn assigned(
        &mut self,
        log: &mut impl LogConsumer,
        partitions: &[u32],
        control: &Receiver<ShardControl>,
    ) -> bool {
        let Some(source) = self.source.as_mut() else {
            return true; // embedded: the books were loaded at start
        };
        let started = std::time::Instant::now();
        let loaded = loop {
            match source.load(partitions) {
                Ok(loaded) => break loaded,
                Err(e) => {
                    tracing::warn!(error = %e, ?partitions, "loading assigned books; retrying");
                    if matches!(
                        control.recv_timeout(LOAD_RETRY),
                        Ok(ShardControl::Stop)
                            | Err(crossbeam_channel::RecvTimeoutError::Disconnected)
                    ) {
                        return false;
                    }
                }
            }
        };
        for (partition, offset) in loaded.resume_at {
            if let Err(e) = log.seek(partition, offset) {
                panic!("seeking partition {partition} to {offset}: {e}");
            }
        }
        let symbols = loaded.books.len();
        self.books.extend(loaded.books);
        self.partition_of.extend(loaded.partition_of);
        tracing::info!(
            ?partitions,
            symbols,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "engine partitions assigned; books rebuilt"
        );
        true
    }

    /// Stops matching the books of revoked partitions at once: another member rebuilds them.
    fn revoked(&mut self, partitions: &[u32]) {
        if self.source.is_none() {
            return;
        }
        let partition_of = &self.partition_of;
        self.books.retain(|symbol, _| {
            !partition_of
                .get(symbol)
                .is_some_and(|p| partitions.contains(p))
        });
        self.partition_of.retain(|_, p| !partitions.contains(p));
        tracing::info!(?partitions, "engine partitions revoked; books dropped");
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
                let Outputs::Local(outputs) = &self.outputs else {
                    let why = "the engine's outputs travel through the event log".to_string();
                    let _ = reply.send(BookVerdict::NotCompared(why));
                    return;
                };
                // Every output of this book so far has been sent (`apply` sends before it
                // returns), so this one follows them all.
                let audit = BookAudit {
                    symbol,
                    snapshot: self.snapshot(symbol),
                    reply,
                    in_flight,
                };
                let _ = outputs.send(ShardOutput::BookAudit(audit));
            }
            ShardControl::Stop => {}
        }
    }

    fn apply(&mut self, batch: Vec<Delivered>) {
        let per_input = matches!(self.outputs, Outputs::Log(_));
        let mut done: Vec<(u32, EngineOutput)> = Vec::new();
        let mut current: Option<(u32, EngineOutput)> = None;
        for Delivered {
            partition,
            offset,
            record,
        } in batch
        {
            let input: BookInput = match serde_json::from_str(&record.payload) {
                Ok(input) => input,
                Err(e) => {
                    // Only the writer writes book inputs; one that does not parse is a bug or
                    // a corrupt store, and skipping it would silently lose an order.
                    panic!("undecodable book input at offset {}: {e}", record.seq);
                }
            };
            let symbol = input.symbol();
            if per_input || current.as_ref().is_some_and(|(_, o)| o.symbol != symbol) {
                done.extend(current.take().map(|run| self.close_run(run)));
            }
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
                self.partition_of.insert(symbol, partition);
            }
            let Some(state) = self.books.get_mut(&symbol) else {
                panic!("input for unknown symbol {symbol} at offset {}", record.seq);
            };
            let (_, out) = current.get_or_insert_with(|| {
                (
                    partition,
                    EngineOutput {
                        symbol,
                        first_input_seq: 0,
                        last_input_seq: 0,
                        next_trade_id: 0,
                        events: Vec::new(),
                        input_position: None,
                        output_position: None,
                        audit: None,
                    },
                )
            });
            if per_input {
                out.input_position = Some(LogPosition { partition, offset });
            }
            if record.seq <= state.input_seq {
                continue; // already applied before a restart
            }
            if let Some(command) = input.command() {
                state.book.execute(&command, &mut out.events);
            }
            state.input_seq = record.seq;
            if let BookInput::AuditRequested { .. } = input {
                out.audit = Some(BookSnapshot {
                    resting: state.book.resting(),
                    next_trade_id: state.book.next_trade_id(),
                    input_seq: record.seq,
                });
            }
            if out.first_input_seq == 0 {
                out.first_input_seq = record.seq;
            }
            out.last_input_seq = record.seq;
            out.next_trade_id = state.book.next_trade_id();
        }
        done.extend(current.take().map(|run| self.close_run(run)));
        if per_input {
            // A duplicate reports nothing: this book may be ahead of what settlement has
            // applied (outputs in flight), and a run of duplicates reported "at the cursor"
            // would move settlement's cursor past them.
            done.retain(|(_, out)| out.first_input_seq != 0);
        }
        match &self.outputs {
            // The writer outlives the shards; if it is gone the process is stopping.
            Outputs::Local(tx) => done.into_iter().for_each(|(_, out)| {
                let _ = tx.send(ShardOutput::Engine(out));
            }),
            Outputs::Log(log) => append_outputs(&**log, done),
        }
    }
}

impl Shard {
    /// Ends a run of one symbol's inputs. A run of only duplicates reports them consumed at
    /// the book's cursor *now* — not at the end of the poll's batch, when a later run of
    /// the same symbol may have moved the cursor past inputs whose output has not been sent
    /// yet (settlement would then drop that output as already applied).
    fn close_run(&self, (partition, mut out): (u32, EngineOutput)) -> (u32, EngineOutput) {
        if out.last_input_seq == 0 {
            let state = &self.books[&out.symbol];
            out.last_input_seq = state.input_seq;
            out.next_trade_id = state.book.next_trade_id();
            // first_input_seq stays 0: nothing here has effects (and per-input mode drops it).
            out.first_input_seq = 0;
        }
        (partition, out)
    }
}

/// Appends outputs to the engine-output topic, each to its input's partition number, in
/// order per partition. A failure stops the process: the outputs are not lost (the inputs
/// are in the log, and the next owner of the partition replays them from the store's
/// position).
fn append_outputs(log: &dyn EventLog, outputs: Vec<(u32, EngineOutput)>) {
    let mut by_partition: std::collections::BTreeMap<u32, Vec<Record>> = Default::default();
    for (partition, out) in outputs {
        let payload = serde_json::to_string(&out).expect("an engine output serializes");
        by_partition.entry(partition).or_default().push(Record::new(
            out.last_input_seq,
            out.symbol.to_string(),
            "EngineOutput",
            payload,
        ));
    }
    for (partition, records) in by_partition {
        // Queued: the engine matches its next inputs while these are on the wire. Settlement
        // commits the engine's position with the effects, so a lost output is matched again
        // by whoever resumes the partition.
        if let Err(e) = log.append_queued(partition, records) {
            agora_core::writer::fatal("appending engine output", e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_engine::{Event, NewOrder, OrderKind, SelfTradePrevention, Side, TimeInForce};

    fn accepted(offset: i64, id: u64) -> Delivered {
        accepted_on(7, offset, id)
    }

    fn accepted_on(symbol: u32, offset: i64, id: u64) -> Delivered {
        let input = BookInput::OrderAccepted {
            symbol,
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
        Delivered {
            partition: 0,
            offset: offset - 1,
            record: Record {
                seq: offset,
                key: "S".into(),
                event_type: input.event_type().into(),
                payload: serde_json::to_string(&input).unwrap().into(),
            },
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
        let shard = Shard {
            books,
            outputs: Outputs::Local(tx),
            source: None,
            partition_of: FxHashMap::default(),
        };
        (shard, rx)
    }

    #[test]
    fn inputs_at_or_below_the_cursor_are_dropped_and_counted() {
        let (mut shard, mut rx) = shard_at(2);
        // Offsets 1 and 2 were applied before a restart and come again; 3 is new.
        shard.apply(vec![accepted(1, 1), accepted(2, 2), accepted(3, 3)]);
        let out = next_engine_output(&mut rx);
        assert_eq!((out.first_input_seq, out.last_input_seq), (3, 3));
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
        assert_eq!((out.first_input_seq, out.last_input_seq), (0, 5));
        assert!(out.events.is_empty());
        assert!(shard.books[&7].book.is_empty());
    }

    /// A run of duplicates is reported at the cursor the book had when the run ended: the
    /// same poll may bring later inputs of the symbol, and reporting the dup run at the
    /// cursor they move to would make settlement drop their output as already applied
    /// (found by the fast-bots crash test: crossed books after a restart).
    #[test]
    fn a_run_of_duplicates_reports_the_cursor_at_its_end_not_the_batchs() {
        let (mut shard, mut rx) = shard_at(2);
        shard.books.insert(
            8,
            ShardBook {
                book: Book::new(BookSpec {
                    base_unit: 1,
                    lot_size: 1,
                }),
                input_seq: 0,
            },
        );
        shard.apply(vec![
            accepted_on(7, 2, 1),
            accepted_on(8, 3, 2),
            accepted_on(7, 4, 3),
        ]);
        let outs: Vec<(u32, i64, i64)> = (0..3)
            .map(|_| {
                let o = next_engine_output(&mut rx);
                (o.symbol, o.first_input_seq, o.last_input_seq)
            })
            .collect();
        assert_eq!(outs, vec![(7, 0, 2), (8, 3, 3), (7, 4, 4)]);
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
