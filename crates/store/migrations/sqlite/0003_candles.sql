-- OHLCV per (symbol, interval, bucket), written in the same commit as the trades they sum.
CREATE TABLE candles (
    symbol_id     INTEGER NOT NULL,
    interval      TEXT NOT NULL,
    open_ms       INTEGER NOT NULL,
    open          INTEGER NOT NULL,
    high          INTEGER NOT NULL,
    low           INTEGER NOT NULL,
    close         INTEGER NOT NULL,
    volume        INTEGER NOT NULL,
    quote_volume  INTEGER NOT NULL,
    trades        INTEGER NOT NULL,
    PRIMARY KEY (symbol_id, interval, open_ms)
) WITHOUT ROWID;
