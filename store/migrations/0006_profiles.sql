-- Version 6: public profiles of local users, and indexes for reading rooms as of a position.
CREATE TABLE profiles (
    localpart    TEXT PRIMARY KEY REFERENCES accounts (localpart) ON DELETE CASCADE,
    displayname  TEXT,
    avatar_url   TEXT
) STRICT;

-- A client's own events carry its transaction id back to it (unsigned.transaction_id).
CREATE INDEX client_transactions_event ON client_transactions (event_id);

-- State of a room as of a stream position, and a member's membership as of one.
CREATE INDEX events_room_state_stream ON events (room_id, event_type, state_key, stream_pos)
    WHERE state_key IS NOT NULL;
