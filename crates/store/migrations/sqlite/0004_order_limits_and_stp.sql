-- Self-trade prevention (Binance's selfTradePreventionMode) per order, with a default per
-- symbol, and the largest quantity of one order per symbol. Existing orders self-traded
-- (NONE); existing symbols get the default maximum: the largest multiple of the lot that
-- fits a 64-bit integer.
ALTER TABLE orders ADD COLUMN stp TEXT NOT NULL DEFAULT 'NONE';
ALTER TABLE symbols ADD COLUMN default_stp TEXT NOT NULL DEFAULT 'NONE';
ALTER TABLE symbols ADD COLUMN max_quantity INTEGER NOT NULL DEFAULT 0;
UPDATE symbols SET max_quantity = 9223372036854775807 - 9223372036854775807 % lot_size;
