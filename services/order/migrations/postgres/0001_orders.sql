-- Orders of the sample system and their line items: the PostgreSQL twin of
-- sqlite/0001_orders.sql. Each file here has the number of its SQLite twin,
-- so a schema version means the same on both backends.
CREATE TABLE orders (
    -- COLLATE "C": ids compare byte by byte, as in SQLite, whatever the
    -- database's locale; List breaks create-time ties by id in that order.
    id                TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    user_id           TEXT   NOT NULL,
    -- status is the OrderStatus enum value name, e.g. ORDER_STATUS_ACCEPTED.
    status            TEXT   NOT NULL,
    -- create_time is Unix time in nanoseconds (UTC).
    create_time       BIGINT NOT NULL,
    -- user_display_name is what the user service reported when the order was accepted.
    user_display_name TEXT   NOT NULL DEFAULT ''
);

-- ListOrders: one user's orders, newest first, keyset-paginated.
CREATE INDEX orders_by_user_newest ON orders (user_id, create_time DESC, id DESC);

CREATE TABLE order_items (
    order_id TEXT COLLATE "C" NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    -- position keeps the items in the order they were sent.
    position INTEGER NOT NULL,
    sku      TEXT    NOT NULL,
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, position)
);
