-- The transaction core's tables, PostgreSQL: accounts and the ledger, the outbox and its
-- relay, writer fencing, consumer offsets and the inbox. Same columns and CHECKs as the
-- SQLite schema; every integer is BIGINT (the adapters bind 64-bit integers).
CREATE TABLE users (
    id          BIGINT PRIMARY KEY,
    name        TEXT NOT NULL CONSTRAINT users_by_name UNIQUE,
    created_ms  BIGINT NOT NULL
);

CREATE TABLE assets (
    id     BIGINT PRIMARY KEY,
    code   TEXT NOT NULL CONSTRAINT assets_by_code UNIQUE,
    scale  BIGINT NOT NULL CHECK (scale BETWEEN 0 AND 18)
);

-- A user's holding of one asset. The CHECKs restate "no money from nowhere" at the storage
-- layer.
CREATE TABLE balances (
    user_id    BIGINT NOT NULL,
    asset_id   BIGINT NOT NULL,
    available  BIGINT NOT NULL CHECK (available >= 0),
    held       BIGINT NOT NULL CHECK (held >= 0),
    PRIMARY KEY (user_id, asset_id)
);

-- The venue's own accounts: FEES (income) and EXTERNAL (the world; negative by deposits).
CREATE TABLE venue_balances (
    account   TEXT NOT NULL,
    asset_id  BIGINT NOT NULL,
    amount    BIGINT NOT NULL,
    PRIMARY KEY (account, asset_id)
);

-- Immutable, balanced journal entries; postings as JSON text.
CREATE TABLE journal (
    id          BIGINT PRIMARY KEY,
    kind        TEXT NOT NULL,
    ref_id      BIGINT,
    postings    TEXT NOT NULL,
    created_ms  BIGINT NOT NULL
);

-- Debezium outbox-router contract (id, aggregatetype, aggregateid, type, payload), plus the
-- sequence that orders it. aggregateid is the Kafka message key (the exchange's symbol).
CREATE TABLE outbox (
    seq            BIGINT PRIMARY KEY,
    id             TEXT NOT NULL CONSTRAINT outbox_by_id UNIQUE,
    aggregatetype  TEXT NOT NULL,
    aggregateid    TEXT NOT NULL,
    type           TEXT NOT NULL,
    payload        TEXT NOT NULL,
    created_ms     BIGINT NOT NULL
);

-- How far the relay may restart from: every input at or below `seq` is settled.
CREATE TABLE relay_position (
    id   BIGINT PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL
);

-- Who holds each writer role, at which epoch. A writer's commits check its epoch here
-- (SELECT … FOR UPDATE) in the same transaction, so a writer that lost its role cannot
-- commit after the new holder bumped the epoch.
CREATE TABLE agora_fences (
    role        TEXT PRIMARY KEY,
    epoch       BIGINT NOT NULL,
    holder      TEXT NOT NULL,
    updated_ms  BIGINT NOT NULL
);

-- Each consumer's position per partition (or key), committed with the effects it applied.
CREATE TABLE consumer_offsets (
    consumer       TEXT NOT NULL,
    partition_key  TEXT NOT NULL,
    position       BIGINT NOT NULL,
    PRIMARY KEY (consumer, partition_key)
);

-- The inbox: events a consumer has applied, inserted with their effects. A redelivered
-- event fails the insert, so its effects are never applied twice.
CREATE TABLE processed_events (
    consumer  TEXT NOT NULL,
    event_id  TEXT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
