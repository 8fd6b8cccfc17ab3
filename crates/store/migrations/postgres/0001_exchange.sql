-- The exchange's tables, PostgreSQL: symbols, orders, trades, the engine's cursors and
-- candles. The final shape of the SQLite migrations 0001-0004 in one script; every integer
-- is BIGINT (the adapters bind 64-bit integers). Needs the core's tables (assets).
--
-- No foreign keys: SQLite never enforced them (foreign_keys is off), and the adapters
-- coalesce a batch's rows per table, which may write a symbol before an asset put later in
-- the same batch.
CREATE TABLE symbols (
    id             BIGINT PRIMARY KEY,
    name           TEXT NOT NULL CONSTRAINT symbols_by_name UNIQUE,
    base_asset     BIGINT NOT NULL,
    quote_asset    BIGINT NOT NULL,
    tick_size      BIGINT NOT NULL CHECK (tick_size > 0),
    lot_size       BIGINT NOT NULL CHECK (lot_size > 0),
    min_notional   BIGINT NOT NULL CHECK (min_notional >= 0),
    maker_fee_bps  BIGINT NOT NULL CHECK (maker_fee_bps BETWEEN 0 AND 10000),
    taker_fee_bps  BIGINT NOT NULL CHECK (taker_fee_bps BETWEEN 0 AND 10000),
    status         TEXT NOT NULL,
    -- Self-trade prevention (Binance's selfTradePreventionMode) for orders that name none.
    default_stp    TEXT NOT NULL DEFAULT 'NONE',
    -- The largest quantity of one order.
    max_quantity   BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE orders (
    id               BIGINT PRIMARY KEY,
    user_id          BIGINT NOT NULL,
    symbol_id        BIGINT NOT NULL,
    side             TEXT NOT NULL,
    type             TEXT NOT NULL,
    time_in_force    TEXT NOT NULL,
    price            BIGINT,
    quantity         BIGINT,
    quote_quantity   BIGINT,
    client_order_id  TEXT,
    status           TEXT NOT NULL,
    filled_qty       BIGINT NOT NULL,
    filled_quote     BIGINT NOT NULL,
    fee_paid         BIGINT NOT NULL,
    hold_asset       BIGINT NOT NULL,
    held             BIGINT NOT NULL CHECK (held >= 0),
    accept_seq       BIGINT NOT NULL,
    cancel_requested BIGINT NOT NULL,
    created_ms       BIGINT NOT NULL,
    updated_ms       BIGINT NOT NULL,
    stp              TEXT NOT NULL DEFAULT 'NONE'
);
CREATE UNIQUE INDEX orders_by_client_id ON orders (user_id, client_order_id)
    WHERE client_order_id IS NOT NULL;
CREATE INDEX orders_by_user ON orders (user_id, id);
-- The open orders a book is rebuilt from, in arrival order.
CREATE INDEX orders_open ON orders (symbol_id, accept_seq)
    WHERE status IN ('NEW', 'PARTIALLY_FILLED');

-- (symbol_id, trade_id) is the engine's deterministic id: the unique key is the dedup record.
CREATE TABLE trades (
    seq          BIGINT PRIMARY KEY,
    symbol_id    BIGINT NOT NULL,
    trade_id     BIGINT NOT NULL,
    price        BIGINT NOT NULL,
    qty          BIGINT NOT NULL,
    quote_qty    BIGINT NOT NULL,
    buy_order    BIGINT NOT NULL,
    sell_order   BIGINT NOT NULL,
    buyer        BIGINT NOT NULL,
    seller       BIGINT NOT NULL,
    taker_side   TEXT NOT NULL,
    buyer_fee    BIGINT NOT NULL,
    seller_fee   BIGINT NOT NULL,
    created_ms   BIGINT NOT NULL,
    CONSTRAINT trades_by_symbol_trade_id UNIQUE (symbol_id, trade_id)
);
CREATE INDEX trades_by_buyer ON trades (buyer, seq);
CREATE INDEX trades_by_seller ON trades (seller, seq);

-- How far the engine's output has been settled, per symbol; committed with the effects.
CREATE TABLE engine_cursors (
    symbol_id      BIGINT PRIMARY KEY,
    input_seq      BIGINT NOT NULL,
    next_trade_id  BIGINT NOT NULL
);

-- OHLCV per (symbol, interval, bucket), written in the same commit as the trades they sum.
-- "interval" is a keyword: portable SQL quotes it.
CREATE TABLE candles (
    symbol_id     BIGINT NOT NULL,
    "interval"    TEXT NOT NULL,
    open_ms       BIGINT NOT NULL,
    open          BIGINT NOT NULL,
    high          BIGINT NOT NULL,
    low           BIGINT NOT NULL,
    close         BIGINT NOT NULL,
    volume        BIGINT NOT NULL,
    quote_volume  BIGINT NOT NULL,
    trades        BIGINT NOT NULL,
    PRIMARY KEY (symbol_id, "interval", open_ms)
);
