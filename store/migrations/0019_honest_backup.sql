-- Version 19: a backup that lets nobody in, and an honest mailbox (ARCHITECTURE.md "Backup server and mailbox").
--
-- Device side. Only events this device accepted go to its replica: those in its timeline, and
-- the outliers it checked (auth events, a joined room's state). A rejected event (a stranger's
-- join into one of its rooms, say) must never come back from a restore as room state.
DROP TRIGGER backup_replica_queue;
CREATE TRIGGER backup_replica_queue AFTER INSERT ON events
WHEN NEW.rejection_reason IS NULL
BEGIN
    INSERT INTO outbox (destination, kind, payload, created_ms)
    SELECT server, 'replica', NEW.event_id,
           CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
    FROM backup_subscription;
END;
-- An outlier that takes its place in the timeline later is sent again: the server keeps its
-- entry and takes the new tag, which says the event is in the timeline now.
CREATE TRIGGER backup_replica_requeue AFTER UPDATE OF stream_pos ON events
WHEN OLD.stream_pos IS NULL AND NEW.stream_pos IS NOT NULL AND NEW.rejection_reason IS NULL
BEGIN
    INSERT INTO outbox (destination, kind, payload, created_ms)
    SELECT server, 'replica', NEW.event_id,
           CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
    FROM backup_subscription;
END;
-- What a server holds from before carries no tag, and a restore refuses untagged entries: the
-- accepted events are queued again (the server keeps one copy of each and takes its tag).
DELETE FROM outbox WHERE kind = 'replica';
INSERT INTO outbox (destination, kind, payload, created_ms)
    SELECT b.server, 'replica', e.event_id,
           CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
    FROM backup_subscription b, events e
    WHERE e.rejection_reason IS NULL
    ORDER BY e.stream_pos IS NULL, e.stream_pos, e.rowid;

-- Server side. The device's tag on each entry of its replica (whether the event was in its
-- timeline or an outlier, and the state before it where a restore cannot work that out),
-- authenticated with a key that only the device's sealed identity holds, so the server cannot
-- add entries of its own. NULL for entries stored before: a restore refuses those.
ALTER TABLE backup_replica ADD COLUMN tag TEXT;

-- The servers whose users' events a subscriber's device accepted (it sent them to its replica):
-- whom it shares rooms with, as far as its mailbox can tell. Mail from any other server (a
-- stranger) shares a small allowance, so fresh keys cannot fill the mailbox. Filled from the
-- replicas held so far (which may still hold events their device rejected).
CREATE TABLE backup_correspondents (
    subscriber  TEXT NOT NULL REFERENCES backup_subscribers (server) ON DELETE CASCADE,
    server      TEXT NOT NULL,
    PRIMARY KEY (subscriber, server)
) STRICT;
INSERT OR IGNORE INTO backup_correspondents (subscriber, server)
    SELECT subscriber, substr(sender, instr(sender, ':') + 1)
    FROM (SELECT subscriber, json_extract(pdu, '$.sender') AS sender FROM backup_replica
          WHERE json_valid(pdu))
    WHERE sender LIKE '@%:%';

-- Held mail is found oldest first when it expires (see store/src/mailbox.rs).
CREATE INDEX backup_mailbox_received ON backup_mailbox (received_ms);

-- Every node: who told it each mailbox record, and when it last heard it, so records can be
-- capped per teller and in all, and expire. A record's `ts` is kept clamped to a little ahead
-- of this node's clock, so a record signed by a clock far ahead cannot pin itself.
ALTER TABLE mailbox_records ADD COLUMN learnt_from TEXT NOT NULL DEFAULT '';
ALTER TABLE mailbox_records ADD COLUMN learnt_ms INTEGER NOT NULL DEFAULT 0;
UPDATE mailbox_records SET
    learnt_ms = CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER),
    ts = min(ts, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) + 600000);
CREATE INDEX mailbox_records_learnt ON mailbox_records (learnt_from, learnt_ms);

-- Device side: the mail it took from its mailbox, so the mailbox cannot hand the same mail over
-- twice. Kept as long as mail that old is taken at all (its signed `ts`); when the table is full
-- the oldest go, and mail signed at or before the newest of those (`counters.mail_taken_floor`)
-- is refused as stale.
CREATE TABLE mail_taken (
    origin      TEXT NOT NULL,
    txn_id      TEXT NOT NULL,
    txn_sha256  TEXT NOT NULL,
    ts          INTEGER NOT NULL,
    PRIMARY KEY (origin, txn_id, txn_sha256)
) STRICT;
CREATE INDEX mail_taken_ts ON mail_taken (ts);
INSERT INTO counters (name, value) VALUES ('mail_taken_floor', 0);

-- How many times this device sealed its identity for its backup server: the blob carries the
-- number, so a restore can say which one it got (a server could keep serving an older one).
INSERT INTO counters (name, value) VALUES ('identity_seal', 0);

-- Device side: rooms restored from the backup whose state no server of their members has
-- confirmed since (node/src/rooms/restore.rs). The app shares no room key in one until a member's
-- server has brought it up to date.
CREATE TABLE rooms_to_confirm (
    room_id  TEXT PRIMARY KEY
) STRICT;
