-- Users of the sample system. Later migrations add columns (for example
-- password_hash for login); the store always names the columns it reads.
CREATE TABLE users (
    id           TEXT    NOT NULL PRIMARY KEY,
    display_name TEXT    NOT NULL,
    email        TEXT    NOT NULL,
    -- roles is a JSON array of strings, e.g. ["customer"].
    roles        TEXT    NOT NULL DEFAULT '[]' CHECK (json_valid(roles) AND json_type(roles) = 'array'),
    active       INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    -- create_time is Unix time in nanoseconds (UTC).
    create_time  INTEGER NOT NULL
) STRICT;
