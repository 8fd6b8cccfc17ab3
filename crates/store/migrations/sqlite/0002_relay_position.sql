-- How far the relay may restart from: every book input at or below `seq` is settled.
-- Catch-up after a restart begins here, and the outbox is pruned up to here.
CREATE TABLE relay_position (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL
);
