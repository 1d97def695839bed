-- Version 3: what the Client-Server room API needs beyond the events themselves.

-- A client's transaction id maps to the event it created, so a retried send is not sent twice.
CREATE TABLE client_transactions (
    localpart  TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    txn_id     TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    PRIMARY KEY (localpart, device_id, txn_id)
) STRICT;

CREATE TABLE room_aliases (
    alias    TEXT PRIMARY KEY,
    room_id  TEXT NOT NULL,
    creator  TEXT NOT NULL
) STRICT;

CREATE TABLE filters (
    filter_id  INTEGER PRIMARY KEY,
    localpart  TEXT NOT NULL,
    filter     TEXT NOT NULL
) STRICT;

-- Rooms a user forgot: they no longer show in the user's sync.
CREATE TABLE forgotten_rooms (
    user_id  TEXT NOT NULL,
    room_id  TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id)
) STRICT;
