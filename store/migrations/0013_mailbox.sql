-- Version 13: mailboxes (ARCHITECTURE.md "Backup server and mailbox").
--
-- On a backup server: transactions other servers could not deliver to a subscriber, held until
-- the subscriber connects and takes them. Each is the sending server's signed transaction, kept
-- whole, so the mailbox can neither forge nor read it.
CREATE TABLE backup_mailbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    subscriber   TEXT NOT NULL REFERENCES backup_subscribers (server) ON DELETE CASCADE,
    origin       TEXT NOT NULL,
    txn_id       TEXT NOT NULL,
    -- The signed transaction, as JSON. Mail has its own allowance, apart from the replica's
    -- quota (see store/src/mailbox.rs), so strangers cannot crowd out the subscriber's backup.
    txn          TEXT NOT NULL,
    -- SHA-256 of `txn`: a sender retrying a transaction whose answer it lost stores nothing
    -- twice, and a different transaction under a reused id (a sender restored from a backup
    -- counts its ids again) is not mistaken for a repeat.
    txn_sha256   TEXT NOT NULL,
    received_ms  INTEGER NOT NULL,
    UNIQUE (subscriber, origin, txn_id, txn_sha256)
) STRICT;

-- On every node: the mailbox each server says it takes mail at, as the record it signed (a
-- record with no mailbox says it has none any more). Only the newest record per server is kept.
CREATE TABLE mailbox_records (
    server      TEXT PRIMARY KEY,
    -- The mailbox's server name; NULL when the server withdrew its mailbox.
    mailbox     TEXT,
    -- Multiaddrs to dial the mailbox at, one a line.
    addresses   TEXT NOT NULL,
    ts          INTEGER NOT NULL,
    record      TEXT NOT NULL
) STRICT;

-- The room-key backup on the backup server, key by key (it used to ride in the sealed identity,
-- resealed whole on every change). On the server: each subscriber's entries of its current
-- backup version, as the device's key backup holds them (encrypted to the backup key: the
-- server cannot read them). On the device: which of its own entries the server has.
CREATE TABLE backup_room_keys (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    subscriber           TEXT NOT NULL REFERENCES backup_subscribers (server) ON DELETE CASCADE,
    version              TEXT NOT NULL,
    room_id              TEXT NOT NULL,
    session_id           TEXT NOT NULL,
    first_message_index  INTEGER NOT NULL,
    forwarded_count      INTEGER NOT NULL,
    is_verified          INTEGER NOT NULL,
    data                 TEXT NOT NULL,
    UNIQUE (subscriber, room_id, session_id)
) STRICT;

-- A replaced row (a better copy of the session) starts again at 0, so it is sent again.
ALTER TABLE backup_keys ADD COLUMN on_backup_server INTEGER NOT NULL DEFAULT 0;
CREATE INDEX backup_keys_not_on_backup_server ON backup_keys (localpart, version)
    WHERE on_backup_server = 0;
