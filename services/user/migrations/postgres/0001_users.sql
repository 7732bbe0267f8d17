-- Users of the sample system: the PostgreSQL twin of sqlite/0001_users.sql.
-- Each file here has the number of its SQLite twin, so a schema version
-- means the same on both backends. The store always names the columns it
-- reads.
CREATE TABLE users (
    -- COLLATE "C": ids compare byte by byte, as in SQLite, whatever the
    -- database's locale; List pages through them in that order.
    id           TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    display_name TEXT    NOT NULL,
    email        TEXT    NOT NULL,
    -- roles is a JSON array of strings, e.g. ["customer"].
    roles        TEXT    NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(roles::jsonb) = 'array'),
    active       BOOLEAN NOT NULL DEFAULT true,
    -- create_time is Unix time in nanoseconds (UTC).
    create_time  BIGINT  NOT NULL
);
