-- The change feed (UserService.WatchUserChanges): one row per change to a
-- user, written in the same transaction as the change.
--
-- A subscriber reads the changes after the last sequence it got, so a
-- change must never become visible after one with a higher sequence. A
-- SEQUENCE (bigserial) cannot promise that: nextval is not transactional,
-- so writer A can take 1, writer B take 2 and commit first, and a reader
-- then sees 2 without 1, moves past 1, and never gets it. Here the next
-- sequence is the one row of user_change_sequence, taken by updating it:
-- the update locks the row until the writer's transaction ends, so writers
-- of changes commit one at a time, in sequence order. A writer that rolls
-- back gives its number back, so sequences stay consecutive, as in SQLite,
-- and a gap always means pruned history.
CREATE TABLE user_change_sequence (
    one  BOOLEAN NOT NULL PRIMARY KEY DEFAULT true CHECK (one),
    -- last is the sequence of the newest change ever recorded (0: none).
    last BIGINT  NOT NULL CHECK (last >= 0)
);
INSERT INTO user_change_sequence (last) VALUES (0);

CREATE TABLE user_changes (
    sequence BIGINT NOT NULL PRIMARY KEY,
    user_id  TEXT   NOT NULL,
    -- kind is the UserChangeKind without its prefix.
    kind     TEXT   NOT NULL CHECK (kind IN ('CREATED', 'UPDATED', 'DEACTIVATED')),
    -- time is Unix time in nanoseconds (UTC), taken in the transaction.
    time     BIGINT NOT NULL
);

-- Retention by age deletes the oldest rows by time.
CREATE INDEX user_changes_by_time ON user_changes (time);
