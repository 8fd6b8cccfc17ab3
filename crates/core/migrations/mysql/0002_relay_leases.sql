-- Outbox partitions claimed by relay processes (`--roles relay`). One row per partition of
-- the event log's topic: who publishes it until `expires_ms`, at which epoch, and how far
-- it has been published (every row of this partition at or below `published_seq` is in the
-- log). A relay advances `published_seq` only at its own epoch, so one that lost the lease
-- cannot move it.
CREATE TABLE relay_leases (
    partition_no   BIGINT NOT NULL PRIMARY KEY,
    holder         VARCHAR(255) NOT NULL,
    epoch          BIGINT NOT NULL,
    expires_ms     BIGINT NOT NULL,
    published_seq  BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Relay processes alive, renewed with their leases: a relay that holds nothing yet is
-- counted, so the others give it its share.
CREATE TABLE relay_members (
    holder      VARCHAR(255) NOT NULL PRIMARY KEY,
    expires_ms  BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
