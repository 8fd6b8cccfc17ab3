//! The writer's request port as data. An API process that does not host the writer sends
//! these to the process that does (`agora serve --roles api --writer-url …`); the writer runs
//! them exactly as its own API would ([`Command::run`]) and sends the [`Answer`] or the
//! [`ExchangeError`] back. Commands carry what the caller sent, not validated forms: the
//! writer's reference data is the one that decides.

use crate::error::{ErrorClass, ExchangeError, ExchangeResult};
use crate::rules::{NewAsset, NewSymbol, OrderRequest, RefData, SymbolUpdate};
use crate::{Exchange, Placed};
use agora_core::accounts::BalanceRow;
use agora_store::{AssetRow, OrderRow, SymbolRow, UserRow};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::sync::{LazyLock, Mutex};

/// A state change only the writer makes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    PlaceOrder {
        user: u64,
        order: OrderRequest,
    },
    CancelOrder {
        user: u64,
        order: u64,
    },
    Deposit {
        user: u64,
        asset: String,
        amount: String,
    },
    CreateUser {
        name: String,
    },
    CreateAsset {
        asset: NewAsset,
    },
    CreateSymbol {
        symbol: NewSymbol,
    },
    UpdateSymbol {
        name: String,
        update: SymbolUpdate,
    },
}

/// What a command made or changed.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Placed(Placed),
    Order(OrderRow),
    Balance(BalanceRow),
    User(UserRow),
    Asset(AssetRow),
    Symbol(SymbolRow),
}

impl Command {
    /// Runs the command on `exchange` (the writer's), as its own API would.
    pub async fn run(self, exchange: &Exchange) -> ExchangeResult<Answer> {
        Ok(match self {
            Command::PlaceOrder { user, order } => {
                Answer::Placed(exchange.place_order(user, &order).await?)
            }
            Command::CancelOrder { user, order } => {
                Answer::Order(exchange.cancel_order(user, order).await?)
            }
            Command::Deposit {
                user,
                asset,
                amount,
            } => Answer::Balance(exchange.deposit(user, &asset, &amount).await?),
            Command::CreateUser { name } => Answer::User(exchange.create_user(&name).await?),
            Command::CreateAsset { asset } => Answer::Asset(exchange.create_asset(asset).await?),
            Command::CreateSymbol { symbol } => {
                Answer::Symbol(exchange.create_symbol(&symbol).await?)
            }
            Command::UpdateSymbol { name, update } => {
                Answer::Symbol(exchange.update_symbol(&name, update).await?)
            }
        })
    }

    /// Whether the command changes reference data (assets, symbols), which API processes
    /// cache.
    pub(crate) fn changes_refdata(&self) -> bool {
        matches!(
            self,
            Command::CreateAsset { .. }
                | Command::CreateSymbol { .. }
                | Command::UpdateSymbol { .. }
        )
    }
}

impl Answer {
    /// Whether the answer names an asset or symbol `refdata` does not have yet (listed through
    /// another API process since this one last loaded it).
    pub(crate) fn is_newer_than(&self, refdata: &RefData) -> bool {
        match self {
            Answer::Placed(Placed { order, .. }) | Answer::Order(order) => {
                !refdata.symbols.contains_key(&order.symbol)
            }
            Answer::Balance(b) => !refdata.assets.contains_key(&b.asset),
            Answer::Asset(a) => !refdata.assets.contains_key(&a.id),
            Answer::Symbol(s) => !refdata.symbols.contains_key(&s.id),
            Answer::User(_) => false,
        }
    }
}

/// Where an API process without the writer sends its commands (HTTP to the writer's process
/// in `agora-server`; anything else in tests).
pub trait WriterPort: Send + Sync {
    fn execute(
        &self,
        command: Command,
    ) -> Pin<Box<dyn Future<Output = ExchangeResult<Answer>> + Send + '_>>;
}

/// The writer answered a command with the wrong kind of row: a peer that is not agora's
/// writer, or another version of it.
fn unexpected(answer: &Answer) -> ExchangeError {
    tracing::error!(?answer, "the writer's answer does not fit its command");
    ExchangeError::unavailable("the writer's answer does not fit the request")
}

macro_rules! answer_kinds {
    ($($variant:ident => $row:ty),* $(,)?) => {$(
        impl TryFrom<Answer> for $row {
            type Error = ExchangeError;
            fn try_from(answer: Answer) -> ExchangeResult<$row> {
                match answer {
                    Answer::$variant(row) => Ok(row),
                    other => Err(unexpected(&other)),
                }
            }
        }
    )*};
}

answer_kinds!(
    Placed => Placed,
    Order => OrderRow,
    Balance => BalanceRow,
    User => UserRow,
    Asset => AssetRow,
    Symbol => SymbolRow,
);

/// An [`ExchangeError`] as it travels between processes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireError {
    pub class: ErrorClass,
    pub code: String,
    pub detail: String,
}

impl From<ExchangeError> for WireError {
    fn from(e: ExchangeError) -> Self {
        WireError {
            class: e.class,
            code: e.code.to_string(),
            detail: e.detail,
        }
    }
}

/// Distinct error codes kept from other processes; codes are a small fixed vocabulary, so
/// more than this means a peer that is not agora's writer.
const FOREIGN_CODES_MAX: usize = 1_024;

static FOREIGN_CODES: LazyLock<Mutex<rustc_hash::FxHashSet<&'static str>>> =
    LazyLock::new(Mutex::default);

impl From<WireError> for ExchangeError {
    fn from(e: WireError) -> Self {
        ExchangeError::new(e.class, intern_code(&e.code), e.detail)
    }
}

/// The `'static` form of an error code received from another process: each distinct code is
/// leaked once, and at most [`FOREIGN_CODES_MAX`] of them.
fn intern_code(code: &str) -> &'static str {
    let mut codes = FOREIGN_CODES.lock().expect("lock");
    if let Some(&known) = codes.get(code) {
        return known;
    }
    let well_formed = !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !well_formed || codes.len() >= FOREIGN_CODES_MAX {
        return "WRITER_ERROR";
    }
    let leaked: &'static str = Box::leak(code.to_owned().into_boxed_str());
    codes.insert(leaked);
    leaked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_cross_processes_with_their_class_code_and_detail() {
        let sent = ExchangeError::new(ErrorClass::Rejected, "INSUFFICIENT_FUNDS", "short by 5");
        let wire = serde_json::to_string(&WireError::from(sent.clone())).unwrap();
        let got: ExchangeError = serde_json::from_str::<WireError>(&wire).unwrap().into();
        assert_eq!(got, sent);
        // Interned once: the same code twice is the same static string.
        let again: ExchangeError = serde_json::from_str::<WireError>(&wire).unwrap().into();
        assert!(std::ptr::eq(got.code, again.code));
    }

    #[test]
    fn malformed_codes_are_not_kept() {
        for code in ["", "lower", "WITH SPACE", &"A".repeat(65)] {
            let e: ExchangeError = WireError {
                class: ErrorClass::Invalid,
                code: code.into(),
                detail: "x".into(),
            }
            .into();
            assert_eq!(e.code, "WRITER_ERROR", "{code:?}");
        }
    }

    #[test]
    fn commands_round_trip_as_json() {
        let text = r#"{"place_order":{"user":7,"order":{"symbol":"BTC-USDT","side":"BUY","type":"LIMIT","price":"100","quantity":"1"}}}"#;
        let command: Command = serde_json::from_str(text).unwrap();
        let again: Command =
            serde_json::from_str(&serde_json::to_string(&command).unwrap()).unwrap();
        let Command::PlaceOrder { user, order } = again else {
            panic!("not a placement: {again:?}");
        };
        assert_eq!((user, order.symbol.as_str()), (7, "BTC-USDT"));
        assert_eq!(order.price.as_deref(), Some("100"));
        assert!(serde_json::from_str::<Command>(r#"{"drop_tables":{}}"#).is_err());
    }
}
