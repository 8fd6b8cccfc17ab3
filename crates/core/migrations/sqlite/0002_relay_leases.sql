-- Outbox partitions claimed by relay processes (`--roles relay`). One row per partition of
-- the event log's topic: who publishes it until `expires_ms`, at which epoch, and how far
-- it has been published (every row of this partition at or below `published_seq` is in the
-- log). A relay advances `published_seq` only at its own epoch, so one that lost the lease
-- cannot move it.
CREATE TABLE IF NOT EXISTS relay_leases (
    partition_no   INTEGER PRIMARY KEY,
    holder         TEXT NOT NULL,
    epoch          INTEGER NOT NULL,
    expires_ms     INTEGER NOT NULL,
    published_seq  INTEGER NOT NULL
);

-- Relay processes alive, renewed with their leases: a relay that holds nothing yet is
-- counted, so the others give it its share.
CREATE TABLE IF NOT EXISTS relay_members (
    holder      TEXT PRIMARY KEY,
    expires_ms  INTEGER NOT NULL
);
