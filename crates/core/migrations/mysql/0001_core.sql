-- The transaction core's tables, MySQL/MariaDB: accounts and the ledger, the outbox and its
-- relay, writer fencing, consumer offsets and the inbox. Same columns and CHECKs as the
-- SQLite schema; every integer is BIGINT (the adapters bind 64-bit integers). Text that is
-- part of a key is VARCHAR (TEXT cannot be a key); the binary collation compares text as
-- SQLite and PostgreSQL do ('a' <> 'A'). The adapter runs with ANSI_QUOTES.
CREATE TABLE users (
    id          BIGINT NOT NULL PRIMARY KEY,
    name        VARCHAR(128) NOT NULL,
    created_ms  BIGINT NOT NULL,
    UNIQUE KEY users_by_name (name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE assets (
    id     BIGINT NOT NULL PRIMARY KEY,
    code   VARCHAR(128) NOT NULL,
    scale  BIGINT NOT NULL CHECK (scale BETWEEN 0 AND 18),
    UNIQUE KEY assets_by_code (code)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- A user's holding of one asset. The CHECKs restate "no money from nowhere" at the storage
-- layer.
CREATE TABLE balances (
    user_id    BIGINT NOT NULL,
    asset_id   BIGINT NOT NULL,
    available  BIGINT NOT NULL CHECK (available >= 0),
    held       BIGINT NOT NULL CHECK (held >= 0),
    PRIMARY KEY (user_id, asset_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The venue's own accounts: FEES (income) and EXTERNAL (the world; negative by deposits).
CREATE TABLE venue_balances (
    account   VARCHAR(64) NOT NULL,
    asset_id  BIGINT NOT NULL,
    amount    BIGINT NOT NULL,
    PRIMARY KEY (account, asset_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Immutable, balanced journal entries; postings as JSON text.
CREATE TABLE journal (
    id          BIGINT NOT NULL PRIMARY KEY,
    kind        VARCHAR(64) NOT NULL,
    ref_id      BIGINT,
    postings    MEDIUMTEXT NOT NULL,
    created_ms  BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Debezium outbox-router contract (id, aggregatetype, aggregateid, type, payload), plus the
-- sequence that orders it. aggregateid is the Kafka message key (the exchange's symbol).
CREATE TABLE outbox (
    seq            BIGINT NOT NULL PRIMARY KEY,
    id             VARCHAR(255) NOT NULL,
    aggregatetype  VARCHAR(255) NOT NULL,
    aggregateid    VARCHAR(255) NOT NULL,
    type           VARCHAR(255) NOT NULL,
    payload        MEDIUMTEXT NOT NULL,
    created_ms     BIGINT NOT NULL,
    UNIQUE KEY outbox_by_id (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- How far the relay may restart from: every input at or below `seq` is settled.
CREATE TABLE relay_position (
    id   BIGINT NOT NULL PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Who holds each writer role, at which epoch. A writer's commits check its epoch here
-- (SELECT … FOR UPDATE) in the same transaction, so a writer that lost its role cannot
-- commit after the new holder bumped the epoch.
CREATE TABLE agora_fences (
    role        VARCHAR(128) NOT NULL PRIMARY KEY,
    epoch       BIGINT NOT NULL,
    holder      VARCHAR(255) NOT NULL,
    updated_ms  BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Each consumer's position per partition (or key), committed with the effects it applied.
CREATE TABLE consumer_offsets (
    consumer       VARCHAR(128) NOT NULL,
    partition_key  VARCHAR(255) NOT NULL,
    position       BIGINT NOT NULL,
    PRIMARY KEY (consumer, partition_key)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The inbox: events a consumer has applied, inserted with their effects. A redelivered
-- event fails the insert, so its effects are never applied twice.
CREATE TABLE processed_events (
    consumer  VARCHAR(128) NOT NULL,
    event_id  VARCHAR(255) NOT NULL,
    PRIMARY KEY (consumer, event_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
