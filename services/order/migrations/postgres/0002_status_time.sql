-- TrackOrders reports when an order's status was last set. status_time is
-- Unix time in nanoseconds (UTC), strictly increasing per order; 0 for rows
-- written before this column existed, whose status dates from create_time.
ALTER TABLE orders ADD COLUMN status_time BIGINT NOT NULL DEFAULT 0;
