//! What the exchange writes to its outbox for the engine: the inputs of every order book,
//! keyed by symbol so that one book's inputs stay in order.

use agora_engine::{Command, NewOrder, OrderId, UserId};
use serde::{Deserialize, Serialize};

/// Outbox `aggregatetype` of book inputs; the aggregate id is the symbol name.
pub const BOOK_AGGREGATE: &str = "exchange.book";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum BookInput {
    /// A new symbol's book opens (first input of every book).
    SymbolListed {
        symbol: u32,
        base_unit: i64,
        lot_size: i64,
    },
    OrderAccepted {
        symbol: u32,
        order: NewOrder,
    },
    CancelRequested {
        symbol: u32,
        order: OrderId,
        user: UserId,
    },
    /// Distributed mode: report the book as it stands after every earlier input, for a
    /// reconciliation (the engine answers with a snapshot in its output; no effect).
    AuditRequested {
        symbol: u32,
    },
}

impl BookInput {
    pub fn symbol(&self) -> u32 {
        match *self {
            BookInput::SymbolListed { symbol, .. }
            | BookInput::OrderAccepted { symbol, .. }
            | BookInput::CancelRequested { symbol, .. }
            | BookInput::AuditRequested { symbol } => symbol,
        }
    }

    pub fn event_type(&self) -> &'static str {
        match self {
            BookInput::SymbolListed { .. } => "SymbolListed",
            BookInput::OrderAccepted { .. } => "OrderAccepted",
            BookInput::CancelRequested { .. } => "CancelRequested",
            BookInput::AuditRequested { .. } => "AuditRequested",
        }
    }

    /// The engine command this input becomes, if any.
    pub fn command(&self) -> Option<Command> {
        match *self {
            BookInput::SymbolListed { .. } | BookInput::AuditRequested { .. } => None,
            BookInput::OrderAccepted { order, .. } => Some(Command::Place(order)),
            BookInput::CancelRequested { order, .. } => Some(Command::Cancel { id: order }),
        }
    }
}
