-- Version 2: what federation needs to be durable: the outbox and the peer book.

-- Written before anything is sent; a row leaves only when its destination acknowledged it.
CREATE TABLE outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    destination  TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('pdu', 'edu')),
    payload      TEXT NOT NULL,
    created_ms   INTEGER NOT NULL
) STRICT;
CREATE INDEX outbox_destination ON outbox (destination, kind, id);

-- Peers met before, so a restarted node redials them at once.
CREATE TABLE peers (
    peer_id       TEXT PRIMARY KEY,
    found_via     TEXT NOT NULL,
    last_seen_ms  INTEGER NOT NULL
) STRICT;
CREATE TABLE peer_addresses (
    peer_id       TEXT NOT NULL REFERENCES peers (peer_id) ON DELETE CASCADE,
    address       TEXT NOT NULL,
    last_seen_ms  INTEGER NOT NULL,
    PRIMARY KEY (peer_id, address)
) STRICT;
