-- Version 1: accounts, devices, events and room state, end-to-end keys, account data.
-- Every change a client can see gets a position in one stream (`counters.stream`).

CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) STRICT;
INSERT INTO counters (name, value) VALUES ('stream', 0);

CREATE TABLE accounts (
    localpart     TEXT PRIMARY KEY,
    -- An argon2id PHC string; NULL for an account that cannot log in with a password.
    password_hash TEXT,
    created_ms    INTEGER NOT NULL,
    deactivated   INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE TABLE devices (
    localpart     TEXT NOT NULL REFERENCES accounts (localpart) ON DELETE CASCADE,
    device_id     TEXT NOT NULL,
    display_name  TEXT,
    created_ms    INTEGER NOT NULL,
    last_seen_ms  INTEGER,
    last_seen_ip  TEXT,
    PRIMARY KEY (localpart, device_id)
) STRICT;

-- Only a hash of each access token is kept, so a copy of the database logs nobody in.
CREATE TABLE access_tokens (
    token_hash  BLOB PRIMARY KEY,
    localpart   TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    FOREIGN KEY (localpart, device_id) REFERENCES devices (localpart, device_id) ON DELETE CASCADE
) STRICT;
CREATE INDEX access_tokens_device ON access_tokens (localpart, device_id);

CREATE TABLE rooms (
    room_id       TEXT PRIMARY KEY,
    room_version  TEXT NOT NULL,
    created_ms    INTEGER NOT NULL
) STRICT;

-- Every PDU the node holds, accepted or rejected. Outliers (known, but not part of the room's
-- timeline here) have no stream position.
CREATE TABLE events (
    event_id          TEXT PRIMARY KEY,
    room_id           TEXT NOT NULL,
    stream_pos        INTEGER UNIQUE,
    depth             INTEGER NOT NULL,
    sender            TEXT NOT NULL,
    event_type        TEXT NOT NULL,
    state_key         TEXT,
    origin_server_ts  INTEGER NOT NULL,
    -- The PDU as received or built, canonical JSON.
    pdu               TEXT NOT NULL,
    rejection_reason  TEXT,
    soft_failed       INTEGER NOT NULL DEFAULT 0,
    outlier           INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX events_room_stream ON events (room_id, stream_pos);
CREATE INDEX events_room_depth ON events (room_id, depth);

-- prev_events and auth_events; the referenced event may not be known yet, hence no foreign key.
CREATE TABLE event_edges (
    event_id       TEXT NOT NULL REFERENCES events (event_id) ON DELETE CASCADE,
    prev_event_id  TEXT NOT NULL,
    PRIMARY KEY (event_id, prev_event_id)
) STRICT;
CREATE INDEX event_edges_prev ON event_edges (prev_event_id);

CREATE TABLE event_auth (
    event_id       TEXT NOT NULL REFERENCES events (event_id) ON DELETE CASCADE,
    auth_event_id  TEXT NOT NULL,
    PRIMARY KEY (event_id, auth_event_id)
) STRICT;

-- The room's newest events (nothing here points at them): the prev_events of the next event.
CREATE TABLE forward_extremities (
    room_id   TEXT NOT NULL,
    event_id  TEXT NOT NULL REFERENCES events (event_id) ON DELETE CASCADE,
    PRIMARY KEY (room_id, event_id)
) STRICT;

-- Room state at an event: a snapshot is a full map (type, state_key) -> event id, shared by every
-- event whose state before it is the same.
CREATE TABLE state_snapshots (
    snapshot_id  INTEGER PRIMARY KEY,
    room_id      TEXT NOT NULL
) STRICT;
CREATE TABLE state_snapshot_entries (
    snapshot_id  INTEGER NOT NULL REFERENCES state_snapshots (snapshot_id) ON DELETE CASCADE,
    event_type   TEXT NOT NULL,
    state_key    TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    PRIMARY KEY (snapshot_id, event_type, state_key)
) STRICT;
CREATE TABLE event_state (
    event_id     TEXT PRIMARY KEY REFERENCES events (event_id) ON DELETE CASCADE,
    -- State before the event.
    snapshot_id  INTEGER NOT NULL REFERENCES state_snapshots (snapshot_id)
) STRICT;

CREATE TABLE current_state (
    room_id     TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    state_key   TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    PRIMARY KEY (room_id, event_type, state_key)
) STRICT;

-- Current membership per user and room, for the user-centred queries sync makes.
CREATE TABLE memberships (
    room_id     TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    membership  TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    stream_pos  INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id)
) STRICT;
CREATE INDEX memberships_user ON memberships (user_id, membership);

CREATE TABLE to_device_inbox (
    stream_pos  INTEGER PRIMARY KEY,
    localpart   TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    sender      TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    content     TEXT NOT NULL,
    FOREIGN KEY (localpart, device_id) REFERENCES devices (localpart, device_id) ON DELETE CASCADE
) STRICT;
CREATE INDEX to_device_inbox_device ON to_device_inbox (localpart, device_id, stream_pos);

-- Device keys of local and remote users (remote ones cached from federation).
CREATE TABLE device_keys (
    user_id     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    keys        TEXT NOT NULL,
    stream_pos  INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id)
) STRICT;

CREATE TABLE one_time_keys (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    algorithm  TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    key        TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm, key_id)
) STRICT;

CREATE TABLE fallback_keys (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    algorithm  TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    key        TEXT NOT NULL,
    used       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id, algorithm)
) STRICT;

-- Global account data has room_id ''.
CREATE TABLE account_data (
    localpart   TEXT NOT NULL REFERENCES accounts (localpart) ON DELETE CASCADE,
    room_id     TEXT NOT NULL DEFAULT '',
    event_type  TEXT NOT NULL,
    content     TEXT NOT NULL,
    stream_pos  INTEGER NOT NULL,
    PRIMARY KEY (localpart, room_id, event_type)
) STRICT;
