-- The change feed (UserService.WatchUserChanges): one row per change to a
-- user, written in the same transaction as the change. AUTOINCREMENT makes
-- sequences strictly increasing for the life of the database, even after
-- the oldest rows are pruned, so a subscriber's position never names a
-- different change.
CREATE TABLE user_changes (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id  TEXT    NOT NULL,
    -- kind is the UserChangeKind without its prefix.
    kind     TEXT    NOT NULL CHECK (kind IN ('CREATED', 'UPDATED', 'DEACTIVATED')),
    -- time is Unix time in nanoseconds (UTC), taken in the transaction.
    time     INTEGER NOT NULL
) STRICT;

-- Retention by age deletes the oldest rows by time.
CREATE INDEX user_changes_by_time ON user_changes (time);
