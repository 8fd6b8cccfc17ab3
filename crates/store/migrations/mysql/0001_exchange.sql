-- The exchange's tables, MySQL/MariaDB: symbols, orders, trades, the engine's cursors and
-- candles. The final shape of the SQLite migrations 0001-0004 in one script; every integer
-- is BIGINT (the adapters bind 64-bit integers), text in a key is VARCHAR, the binary
-- collation compares text as SQLite and PostgreSQL do. Needs the core's tables (assets).
-- The adapter runs with ANSI_QUOTES: "interval" is an identifier.
--
-- No foreign keys: SQLite never enforced them (foreign_keys is off), and the adapters
-- coalesce a batch's rows per table, which may write a symbol before an asset put later in
-- the same batch.
CREATE TABLE symbols (
    id             BIGINT NOT NULL PRIMARY KEY,
    name           VARCHAR(128) NOT NULL,
    base_asset     BIGINT NOT NULL,
    quote_asset    BIGINT NOT NULL,
    tick_size      BIGINT NOT NULL CHECK (tick_size > 0),
    lot_size       BIGINT NOT NULL CHECK (lot_size > 0),
    min_notional   BIGINT NOT NULL CHECK (min_notional >= 0),
    maker_fee_bps  BIGINT NOT NULL CHECK (maker_fee_bps BETWEEN 0 AND 10000),
    taker_fee_bps  BIGINT NOT NULL CHECK (taker_fee_bps BETWEEN 0 AND 10000),
    status         VARCHAR(32) NOT NULL,
    -- Self-trade prevention (Binance's selfTradePreventionMode) for orders that name none.
    default_stp    VARCHAR(32) NOT NULL DEFAULT 'NONE',
    -- The largest quantity of one order.
    max_quantity   BIGINT NOT NULL DEFAULT 0,
    UNIQUE KEY symbols_by_name (name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE orders (
    id               BIGINT NOT NULL PRIMARY KEY,
    user_id          BIGINT NOT NULL,
    symbol_id        BIGINT NOT NULL,
    side             VARCHAR(16) NOT NULL,
    type             VARCHAR(32) NOT NULL,
    time_in_force    VARCHAR(16) NOT NULL,
    price            BIGINT,
    quantity         BIGINT,
    quote_quantity   BIGINT,
    client_order_id  VARCHAR(128),
    status           VARCHAR(32) NOT NULL,
    filled_qty       BIGINT NOT NULL,
    filled_quote     BIGINT NOT NULL,
    fee_paid         BIGINT NOT NULL,
    hold_asset       BIGINT NOT NULL,
    held             BIGINT NOT NULL CHECK (held >= 0),
    accept_seq       BIGINT NOT NULL,
    cancel_requested BIGINT NOT NULL,
    created_ms       BIGINT NOT NULL,
    updated_ms       BIGINT NOT NULL,
    stp              VARCHAR(32) NOT NULL DEFAULT 'NONE',
    -- NULLs are distinct in a unique index: orders without a client id never collide.
    UNIQUE KEY orders_by_client_id (user_id, client_order_id),
    KEY orders_by_user (user_id, id),
    -- The open orders a book is rebuilt from, in arrival order. No partial indexes here:
    -- status leads accept_seq, so `status IN (…)` reads two ranges of it.
    KEY orders_open (symbol_id, status, accept_seq)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- (symbol_id, trade_id) is the engine's deterministic id: the unique key is the dedup record.
CREATE TABLE trades (
    seq          BIGINT NOT NULL PRIMARY KEY,
    symbol_id    BIGINT NOT NULL,
    trade_id     BIGINT NOT NULL,
    price        BIGINT NOT NULL,
    qty          BIGINT NOT NULL,
    quote_qty    BIGINT NOT NULL,
    buy_order    BIGINT NOT NULL,
    sell_order   BIGINT NOT NULL,
    buyer        BIGINT NOT NULL,
    seller       BIGINT NOT NULL,
    taker_side   VARCHAR(16) NOT NULL,
    buyer_fee    BIGINT NOT NULL,
    seller_fee   BIGINT NOT NULL,
    created_ms   BIGINT NOT NULL,
    UNIQUE KEY trades_by_symbol_trade_id (symbol_id, trade_id),
    KEY trades_by_buyer (buyer, seq),
    KEY trades_by_seller (seller, seq)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- How far the engine's output has been settled, per symbol; committed with the effects.
CREATE TABLE engine_cursors (
    symbol_id      BIGINT NOT NULL PRIMARY KEY,
    input_seq      BIGINT NOT NULL,
    next_trade_id  BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- OHLCV per (symbol, interval, bucket), written in the same commit as the trades they sum.
CREATE TABLE candles (
    symbol_id     BIGINT NOT NULL,
    "interval"    VARCHAR(16) NOT NULL,
    open_ms       BIGINT NOT NULL,
    open          BIGINT NOT NULL,
    high          BIGINT NOT NULL,
    low           BIGINT NOT NULL,
    close         BIGINT NOT NULL,
    volume        BIGINT NOT NULL,
    quote_volume  BIGINT NOT NULL,
    trades        BIGINT NOT NULL,
    PRIMARY KEY (symbol_id, "interval", open_ms)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
