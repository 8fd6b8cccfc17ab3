-- The relay's position moved to the core's schema (its migration 1); stores from before
-- that have the table from this migration.
SELECT 1;
