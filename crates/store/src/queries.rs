//! The typed reads of the exchange, in portable SQL (see `agora_core::store`): the writer's
//! recovery loads and lookups ([`Loads`]) and the API's queries ([`Reads`]), run unchanged by
//! every adapter.

use crate::model::*;
use crate::schema::*;
use agora_core::accounts::{ASSETS, BALANCES, USERS};
use agora_core::store::{Queries, ReadDatabase, Row, StoreResult, Table, Value};
use agora_engine::Side;
use std::sync::LazyLock;

/// `SELECT <every column of table> FROM table`.
fn select_from(table: &Table) -> String {
    format!("SELECT {} FROM \"{}\"", select_list(table), table.name)
}

/// The writer's per-request lookups, built once: they run on its thread for placements with a
/// client order id and for cancels of orders no longer open.
static ORDER_BY_ID: LazyLock<String> =
    LazyLock::new(|| format!("{} WHERE id = ?", select_from(&ORDERS)));
static ORDER_BY_CLIENT_ID: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{} WHERE user_id = ? AND client_order_id = ?",
        select_from(&ORDERS)
    )
});

fn decode_all<T>(rows: Vec<Row>, decode: fn(&Row) -> StoreResult<T>) -> StoreResult<Vec<T>> {
    rows.iter().map(decode).collect()
}

/// The open orders (NEW or PARTIALLY_FILLED), as a `WHERE` condition.
pub(crate) const OPEN: &str = "status IN ('NEW', 'PARTIALLY_FILLED')";

/// The writer's reads: recovery at start, and lookups when its working set misses.
pub struct Loads<'a, D: Queries + ?Sized>(pub &'a mut D);

impl<D: Queries + ?Sized> Loads<'_, D> {
    fn rows(&mut self, sql: &str, params: &[Value]) -> StoreResult<Vec<Row>> {
        self.0.query_rows(sql, params)
    }

    fn max(&mut self, column: &str, table: &str) -> StoreResult<i64> {
        let sql = format!("SELECT COALESCE(MAX({column}), 0) FROM \"{table}\"");
        Ok(self
            .rows(&sql, &[])?
            .first()
            .map(|r| r.int(0))
            .transpose()?
            .unwrap_or(0))
    }

    pub fn assets(&mut self) -> StoreResult<Vec<AssetRow>> {
        let sql = format!("{} ORDER BY id", select_from(&ASSETS));
        decode_all(self.rows(&sql, &[])?, AssetRow::decode)
    }

    pub fn symbols(&mut self) -> StoreResult<Vec<SymbolRow>> {
        let sql = format!("{} ORDER BY id", select_from(&SYMBOLS));
        decode_all(self.rows(&sql, &[])?, SymbolRow::decode)
    }

    pub fn users(&mut self) -> StoreResult<Vec<UserRow>> {
        decode_all(self.rows(&select_from(&USERS), &[])?, UserRow::decode)
    }

    /// NEW and PARTIALLY_FILLED orders, in `accept_seq` (arrival) order.
    pub fn open_orders(&mut self) -> StoreResult<Vec<OrderRow>> {
        let sql = format!("{} WHERE {OPEN} ORDER BY accept_seq", select_from(&ORDERS));
        decode_all(self.rows(&sql, &[])?, OrderRow::decode)
    }

    /// NEW and PARTIALLY_FILLED orders of one symbol with `accept_seq <= accept_seq_max`, in
    /// arrival order: the book the engine had after consuming that input.
    pub fn book_orders(&mut self, symbol: u32, accept_seq_max: i64) -> StoreResult<Vec<OrderRow>> {
        let sql = format!(
            "{} WHERE {OPEN} AND symbol_id = ? AND accept_seq <= ? ORDER BY accept_seq",
            select_from(&ORDERS)
        );
        decode_all(
            self.rows(&sql, &[symbol.into(), accept_seq_max.into()])?,
            OrderRow::decode,
        )
    }

    pub fn cursors(&mut self) -> StoreResult<Vec<CursorRow>> {
        decode_all(
            self.rows(&select_from(&ENGINE_CURSORS), &[])?,
            CursorRow::decode,
        )
    }

    pub fn order_by_client_id(
        &mut self,
        user: u64,
        client_id: &str,
    ) -> StoreResult<Option<OrderRow>> {
        self.rows(
            &ORDER_BY_CLIENT_ID,
            &[user.into(), client_id.to_string().into()],
        )?
        .first()
        .map(OrderRow::decode)
        .transpose()
    }

    pub fn order(&mut self, id: u64) -> StoreResult<Option<OrderRow>> {
        self.rows(&ORDER_BY_ID, &[id.into()])?
            .first()
            .map(OrderRow::decode)
            .transpose()
    }

    /// The largest ids in use, so the writer continues the sequences after a restart.
    pub fn counters(&mut self) -> StoreResult<Counters> {
        let as_u64 = |v: i64| v as u64;
        Ok(Counters {
            max_order_id: as_u64(self.max("id", "orders")?),
            max_trade_seq: self.max("seq", "trades")?,
            max_user_id: as_u64(self.max("id", "users")?),
            max_asset_id: self.max("id", "assets")? as u32,
            max_symbol_id: self.max("id", "symbols")? as u32,
        })
    }

    /// The most recent candles per (symbol, interval), at most `per_series` each, oldest first.
    pub fn recent_candles(&mut self, per_series: usize) -> StoreResult<Vec<CandleRow>> {
        let columns = select_list(&CANDLES);
        let sql = format!(
            "SELECT {columns} FROM (SELECT {columns}, ROW_NUMBER() OVER ( \
               PARTITION BY symbol_id, \"interval\" ORDER BY open_ms DESC) AS n FROM candles) \
             AS recent WHERE n <= ? ORDER BY symbol_id, \"interval\", open_ms"
        );
        decode_all(
            self.rows(&sql, &[(per_series as i64).into()])?,
            CandleRow::decode,
        )
    }

    /// The most recent trades per symbol, at most `per_symbol` each, oldest first.
    pub fn recent_trades(&mut self, per_symbol: usize) -> StoreResult<Vec<TradeRow>> {
        let symbols: Vec<i64> = self
            .rows("SELECT id FROM symbols ORDER BY id", &[])?
            .iter()
            .map(|r| r.int(0))
            .collect::<StoreResult<_>>()?;
        let sql = format!(
            "{} WHERE symbol_id = ? ORDER BY trade_id DESC LIMIT ?",
            select_from(&TRADES)
        );
        let mut all = Vec::new();
        for symbol in symbols {
            let mut rows = decode_all(
                self.rows(&sql, &[symbol.into(), (per_symbol as i64).into()])?,
                TradeRow::decode,
            )?;
            rows.reverse();
            all.extend(rows);
        }
        Ok(all)
    }
}

/// Queries for the API: committed state only. Blocking; run them on a blocking thread.
pub struct Reads<R: ReadDatabase + ?Sized>(pub std::sync::Arc<R>);

impl<R: ReadDatabase + ?Sized> Reads<R> {
    pub fn order(&self, id: u64) -> StoreResult<Option<OrderRow>> {
        self.0
            .query_one(&ORDER_BY_ID, &[id.into()])?
            .as_ref()
            .map(OrderRow::decode)
            .transpose()
    }

    /// A user's orders, newest first, filtered and paged (`before_id`).
    pub fn orders(&self, q: &OrderQuery) -> StoreResult<Vec<OrderRow>> {
        // Optional filters become clauses, not `? IS NULL OR …`: PostgreSQL cannot type a
        // parameter that is only compared with NULL.
        let mut sql = format!("{} WHERE user_id = ?", select_from(&ORDERS));
        let mut params: Vec<Value> = vec![q.user.into()];
        if let Some(symbol) = q.symbol {
            sql += " AND symbol_id = ?";
            params.push(symbol.into());
        }
        if let Some(status) = q.status {
            sql += " AND status = ?";
            params.push(status_text(status).into());
        }
        if let Some(before) = q.before_id {
            sql += " AND id < ?";
            params.push(before.into());
        }
        sql += " ORDER BY id DESC LIMIT ?";
        params.push((q.limit as i64).into());
        decode_all(self.0.query(&sql, &params)?, OrderRow::decode)
    }

    pub fn balances(&self, user: u64) -> StoreResult<Vec<BalanceRow>> {
        let sql = format!(
            "{} WHERE user_id = ? ORDER BY asset_id",
            select_from(&BALANCES)
        );
        decode_all(self.0.query(&sql, &[user.into()])?, BalanceRow::decode)
    }

    /// The user's fills, newest first: both sides of a self-trade. `before_fill_id` pages
    /// (only fills with a smaller `fill_id`).
    pub fn fills(
        &self,
        user: u64,
        symbol: Option<u32>,
        before_fill_id: Option<i64>,
        limit: usize,
    ) -> StoreResult<Vec<FillRow>> {
        // fill_id = 2·seq (+1 for the sell side), so "fill_id < b" is "seq < (b+1)/2" on the
        // buy side and "seq < b/2" on the sell side: each side is a range on its index. Both
        // sides come from one statement, so from one snapshot: a trade committed between two
        // reads could show its sell fill without its buy fill, and paging would then skip the
        // buy for good.
        let b = before_fill_id.unwrap_or(i64::MAX);
        let columns = select_list(&TRADES);
        let side = |column: &str| {
            let symbol_clause = if symbol.is_some() {
                " AND symbol_id = ?"
            } else {
                ""
            };
            format!(
                "SELECT * FROM (SELECT {columns}, '{column}' AS side FROM trades \
                 WHERE {column} = ?{symbol_clause} AND seq < ? ORDER BY seq DESC LIMIT ?) AS {column}s"
            )
        };
        let sql = format!("{} UNION ALL {}", side("buyer"), side("seller"));
        let mut params: Vec<Value> = Vec::with_capacity(8);
        for seq_below in [b / 2 + b % 2, b / 2] {
            params.push(user.into());
            if let Some(symbol) = symbol {
                params.push(symbol.into());
            }
            params.push(seq_below.into());
            params.push((limit as i64).into());
        }
        let mut fills = self
            .0
            .query(&sql, &params)?
            .iter()
            .map(|r| {
                let side = if r.text(TRADES.columns.len())? == "buyer" {
                    Side::Buy
                } else {
                    Side::Sell
                };
                Ok(FillRow::new(TradeRow::decode(r)?, side))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        fills.sort_unstable_by_key(|f| std::cmp::Reverse(f.fill_id));
        fills.truncate(limit);
        Ok(fills)
    }

    pub fn user(&self, id: u64) -> StoreResult<Option<UserRow>> {
        let sql = format!("{} WHERE id = ?", select_from(&USERS));
        self.0
            .query_one(&sql, &[id.into()])?
            .as_ref()
            .map(UserRow::decode)
            .transpose()
    }

    pub fn user_by_name(&self, name: &str) -> StoreResult<Option<UserRow>> {
        let sql = format!("{} WHERE name = ?", select_from(&USERS));
        self.0
            .query_one(&sql, &[name.to_string().into()])?
            .as_ref()
            .map(UserRow::decode)
            .transpose()
    }

    /// Stored candles of one series with `start_ms <= open_ms <= end_ms`, oldest first, at
    /// most `limit` (the most recent ones), plus the last candle before `start_ms` (first in
    /// the list, if any) so gaps at the start can be filled.
    pub fn candles(
        &self,
        symbol: u32,
        interval: &'static str,
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<CandleRow>> {
        let before = format!(
            "{} WHERE symbol_id = ? AND \"interval\" = ? AND open_ms < ? \
             ORDER BY open_ms DESC LIMIT 1",
            select_from(&CANDLES)
        );
        let range = format!(
            "{} WHERE symbol_id = ? AND \"interval\" = ? AND open_ms >= ? AND open_ms <= ? \
             ORDER BY open_ms DESC LIMIT ?",
            select_from(&CANDLES)
        );
        let mut rows = decode_all(
            self.0
                .query(&before, &[symbol.into(), interval.into(), start_ms.into()])?,
            CandleRow::decode,
        )?;
        let mut later = decode_all(
            self.0.query(
                &range,
                &[
                    symbol.into(),
                    interval.into(),
                    start_ms.into(),
                    end_ms.into(),
                    (limit as i64).into(),
                ],
            )?,
            CandleRow::decode,
        )?;
        later.reverse();
        rows.extend(later);
        Ok(rows)
    }
}
