-- Symbols, orders, trades and the engine's consumer cursors (the core's migration 1 made
-- users, assets, balances, the journal and the outbox before this one runs).
CREATE TABLE symbols (
    id             INTEGER PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    base_asset     INTEGER NOT NULL REFERENCES assets(id),
    quote_asset    INTEGER NOT NULL REFERENCES assets(id),
    tick_size      INTEGER NOT NULL CHECK (tick_size > 0),
    lot_size       INTEGER NOT NULL CHECK (lot_size > 0),
    min_notional   INTEGER NOT NULL CHECK (min_notional >= 0),
    maker_fee_bps  INTEGER NOT NULL CHECK (maker_fee_bps BETWEEN 0 AND 10000),
    taker_fee_bps  INTEGER NOT NULL CHECK (taker_fee_bps BETWEEN 0 AND 10000),
    status         TEXT NOT NULL
);

CREATE TABLE orders (
    id               INTEGER PRIMARY KEY,
    user_id          INTEGER NOT NULL,
    symbol_id        INTEGER NOT NULL,
    side             TEXT NOT NULL,
    type             TEXT NOT NULL,
    time_in_force    TEXT NOT NULL,
    price            INTEGER,
    quantity         INTEGER,
    quote_quantity   INTEGER,
    client_order_id  TEXT,
    status           TEXT NOT NULL,
    filled_qty       INTEGER NOT NULL,
    filled_quote     INTEGER NOT NULL,
    fee_paid         INTEGER NOT NULL,
    hold_asset       INTEGER NOT NULL,
    held             INTEGER NOT NULL CHECK (held >= 0),
    accept_seq       INTEGER NOT NULL,
    cancel_requested INTEGER NOT NULL,
    created_ms       INTEGER NOT NULL,
    updated_ms       INTEGER NOT NULL
);
CREATE UNIQUE INDEX orders_by_client_id ON orders (user_id, client_order_id)
    WHERE client_order_id IS NOT NULL;
CREATE INDEX orders_by_user ON orders (user_id, id);
CREATE INDEX orders_open ON orders (symbol_id, accept_seq)
    WHERE status IN ('NEW', 'PARTIALLY_FILLED');

-- (symbol_id, trade_id) is the engine's deterministic id: the unique key is the dedup record.
CREATE TABLE trades (
    seq          INTEGER PRIMARY KEY,
    symbol_id    INTEGER NOT NULL,
    trade_id     INTEGER NOT NULL,
    price        INTEGER NOT NULL,
    qty          INTEGER NOT NULL,
    quote_qty    INTEGER NOT NULL,
    buy_order    INTEGER NOT NULL,
    sell_order   INTEGER NOT NULL,
    buyer        INTEGER NOT NULL,
    seller       INTEGER NOT NULL,
    taker_side   TEXT NOT NULL,
    buyer_fee    INTEGER NOT NULL,
    seller_fee   INTEGER NOT NULL,
    created_ms   INTEGER NOT NULL,
    UNIQUE (symbol_id, trade_id)
);
CREATE INDEX trades_by_buyer ON trades (buyer, seq);
CREATE INDEX trades_by_seller ON trades (seller, seq);

-- How far the engine's output has been settled, per symbol; committed with the effects.
CREATE TABLE engine_cursors (
    symbol_id      INTEGER PRIMARY KEY,
    input_seq      INTEGER NOT NULL,
    next_trade_id  INTEGER NOT NULL
);
