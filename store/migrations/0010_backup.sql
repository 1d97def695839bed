-- Version 10: backup servers (ARCHITECTURE.md "Backup server and mailbox"), both sides.
--
-- On a backup server: the invitations its operator made, the devices that subscribed with one,
-- and the replica of each subscriber's PDUs. On a device: the server it is subscribed to; the
-- replica is sent through the outbox (kind 'replica'), which the outbox's CHECK must now allow.

-- SQLite cannot change a CHECK in place: the outbox is rebuilt, keeping its rows and its
-- AUTOINCREMENT counter (a transaction id is derived from entry ids, so ids must never repeat).
CREATE TABLE outbox_new (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    destination  TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('pdu', 'edu', 'replica')),
    payload      TEXT NOT NULL,
    created_ms   INTEGER NOT NULL
) STRICT;
INSERT INTO sqlite_sequence (name, seq) SELECT 'outbox_new', seq FROM sqlite_sequence WHERE name = 'outbox';
INSERT INTO outbox_new (id, destination, kind, payload, created_ms)
    SELECT id, destination, kind, payload, created_ms FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_new RENAME TO outbox;
CREATE INDEX outbox_destination ON outbox (destination, kind, id);

-- Server side. One-time subscription tokens: only their SHA-256 is kept. A used token stays,
-- marked, so it cannot be used again.
CREATE TABLE backup_tokens (
    token_sha256  TEXT PRIMARY KEY,
    quota_bytes   INTEGER NOT NULL,
    created_ms    INTEGER NOT NULL,
    used_by       TEXT,
    used_ms       INTEGER
) STRICT;

-- Devices (server names) subscribed here; bytes_used counts the stored PDU JSON.
CREATE TABLE backup_subscribers (
    server         TEXT PRIMARY KEY,
    quota_bytes    INTEGER NOT NULL,
    bytes_used     INTEGER NOT NULL DEFAULT 0,
    subscribed_ms  INTEGER NOT NULL
) STRICT;

-- Each subscriber's PDUs, signature-checked, in the order received (id).
CREATE TABLE backup_replica (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    subscriber   TEXT NOT NULL REFERENCES backup_subscribers (server) ON DELETE CASCADE,
    event_id     TEXT NOT NULL,
    room_id      TEXT NOT NULL,
    pdu          TEXT NOT NULL,
    received_ms  INTEGER NOT NULL,
    UNIQUE (subscriber, event_id)
) STRICT;
CREATE INDEX backup_replica_room ON backup_replica (subscriber, room_id, id);

-- Device side: the backup server this device is subscribed to (at most one), how to reach it,
-- and what it acknowledged.
CREATE TABLE backup_subscription (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    server         TEXT NOT NULL,
    -- Multiaddrs to dial it at, one a line.
    addresses      TEXT NOT NULL,
    subscribed_ms  INTEGER NOT NULL,
    -- The server's count of this device's stored bytes, as of its last answer.
    bytes_acked    INTEGER NOT NULL DEFAULT 0,
    pdus_acked     INTEGER NOT NULL DEFAULT 0,
    pdus_refused   INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT
) STRICT;

-- Every PDU the device stores, by whatever path (built here, received, back-filled, fetched),
-- is queued for the backup server in the same commit: nothing can be stored and not replicated.
CREATE TRIGGER backup_replica_queue AFTER INSERT ON events
BEGIN
    INSERT INTO outbox (destination, kind, payload, created_ms)
    SELECT server, 'replica', NEW.event_id,
           CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
    FROM backup_subscription;
END;
