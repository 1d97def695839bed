-- Version 13: mailboxes (DESIGN.md "Backup server").
--
-- On a backup server: transactions other servers could not deliver to a subscriber, held until
-- the subscriber connects and takes them. Each is the sending server's signed transaction, kept
-- whole, so the mailbox can neither forge nor read it.
CREATE TABLE backup_mailbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    subscriber   TEXT NOT NULL REFERENCES backup_subscribers (server) ON DELETE CASCADE,
    origin       TEXT NOT NULL,
    txn_id       TEXT NOT NULL,
    -- The signed transaction, as JSON; its length counts against the subscriber's quota.
    txn          TEXT NOT NULL,
    received_ms  INTEGER NOT NULL,
    -- A sender retrying a transaction whose answer it lost stores nothing twice.
    UNIQUE (subscriber, origin, txn_id)
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
