-- The core's tables: account holders and assets, balances and the journal (the ledger), the
-- outbox and how far the relay may restart from, writer fences, consumer offsets and the
-- inbox (dedup records). IF NOT EXISTS: stores created before the core had its own schema
-- already have the first seven (the exchange's migrations 1 and 2 made them).
CREATE TABLE IF NOT EXISTS users (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_ms  INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS assets (
    id     INTEGER PRIMARY KEY,
    code   TEXT NOT NULL UNIQUE,
    scale  INTEGER NOT NULL CHECK (scale BETWEEN 0 AND 18)
);

-- A user's holding of one asset. The CHECKs restate invariant 2 at the storage layer.
CREATE TABLE IF NOT EXISTS balances (
    user_id    INTEGER NOT NULL,
    asset_id   INTEGER NOT NULL,
    available  INTEGER NOT NULL CHECK (available >= 0),
    held       INTEGER NOT NULL CHECK (held >= 0),
    PRIMARY KEY (user_id, asset_id)
) WITHOUT ROWID;

-- The venue's own accounts: FEES (income) and EXTERNAL (the world; negative by deposits).
CREATE TABLE IF NOT EXISTS venue_balances (
    account   TEXT NOT NULL,
    asset_id  INTEGER NOT NULL,
    amount    INTEGER NOT NULL,
    PRIMARY KEY (account, asset_id)
) WITHOUT ROWID;

-- Immutable, balanced journal entries; postings as JSON (one row per entry keeps the write
-- path to one insert; reconciliation replays them).
CREATE TABLE IF NOT EXISTS journal (
    id          INTEGER PRIMARY KEY,
    kind        TEXT NOT NULL,
    ref_id      INTEGER,
    postings    TEXT NOT NULL,
    created_ms  INTEGER NOT NULL
);

-- Debezium outbox-router contract (id, aggregatetype, aggregateid, type, payload), plus the
-- sequence that orders it. aggregateid is the partition key (a symbol: the order book is the
-- aggregate whose events must stay in order); Debezium uses it as the Kafka message key.
CREATE TABLE IF NOT EXISTS outbox (
    seq            INTEGER PRIMARY KEY,
    id             TEXT NOT NULL UNIQUE,
    aggregatetype  TEXT NOT NULL,
    aggregateid    TEXT NOT NULL,
    type           TEXT NOT NULL,
    payload        TEXT NOT NULL,
    created_ms     INTEGER NOT NULL
);

-- How far the relay may restart from: every input at or below `seq` is settled. Catch-up
-- after a restart begins here, and the outbox is pruned up to here.
CREATE TABLE IF NOT EXISTS relay_position (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL
);

-- Who holds a writer role, at which epoch: every commit of a fenced writer checks its epoch
-- here, so one that lost its role cannot commit.
CREATE TABLE agora_fences (
    role        TEXT PRIMARY KEY,
    epoch       INTEGER NOT NULL,
    holder      TEXT NOT NULL,
    updated_ms  INTEGER NOT NULL
);

-- How far each consumer has applied each partition key's events, committed with the effects.
CREATE TABLE consumer_offsets (
    consumer       TEXT NOT NULL,
    partition_key  TEXT NOT NULL,
    position       INTEGER NOT NULL,
    PRIMARY KEY (consumer, partition_key)
) WITHOUT ROWID;

-- The inbox: one row per event a consumer applied, written with the effect (exactly once).
CREATE TABLE processed_events (
    consumer  TEXT NOT NULL,
    event_id  TEXT NOT NULL,
    PRIMARY KEY (consumer, event_id)
) WITHOUT ROWID;
