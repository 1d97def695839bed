-- Version 9: the end-to-end encryption state of the app's own in-process client (node::app).
-- Every vodozemac object (account, Olm and Megolm sessions) is kept as its pickle, encrypted with
-- the client's pickle key: a copy of the database alone decrypts nothing. Device keys are public
-- and kept in the clear.

-- One Olm account per (user, device) using the in-process client; the other tables hang off it.
CREATE TABLE app_crypto_accounts (
    account_id             INTEGER PRIMARY KEY,
    user_id                TEXT NOT NULL,
    device_id              TEXT NOT NULL,
    pickle                 TEXT NOT NULL,
    -- Whether the signed device keys were uploaded (once per device).
    device_keys_published  INTEGER NOT NULL DEFAULT 0,
    UNIQUE (user_id, device_id)
) STRICT;

-- Olm sessions, per peer identity key (curve25519); a peer may have several.
CREATE TABLE app_olm_sessions (
    account_id    INTEGER NOT NULL REFERENCES app_crypto_accounts (account_id) ON DELETE CASCADE,
    sender_key    TEXT NOT NULL,
    session_id    TEXT NOT NULL,
    pickle        TEXT NOT NULL,
    created_ms    INTEGER NOT NULL,
    -- Last creation or successful decryption: the session to encrypt with is the newest.
    last_used_ms  INTEGER NOT NULL,
    PRIMARY KEY (account_id, sender_key, session_id)
) STRICT;

-- Megolm sessions others (and this device) encrypt room events with.
CREATE TABLE app_inbound_group_sessions (
    account_id         INTEGER NOT NULL REFERENCES app_crypto_accounts (account_id) ON DELETE CASCADE,
    room_id            TEXT NOT NULL,
    session_id         TEXT NOT NULL,
    -- The curve25519 key of the device that created the session.
    sender_key         TEXT NOT NULL,
    -- The ed25519 key that device claimed (in the Olm payload, or the forwarder's word).
    signing_key        TEXT NOT NULL,
    -- The user who sent the key over Olm; NULL for a forwarded key whose owner is not known.
    sender_user        TEXT,
    first_known_index  INTEGER NOT NULL,
    -- JSON array: the curve25519 keys of the devices that forwarded it ([] when received directly).
    forwarding_chain   TEXT NOT NULL,
    pickle             TEXT NOT NULL,
    received_ms        INTEGER NOT NULL,
    PRIMARY KEY (account_id, room_id, session_id)
) STRICT;

-- Replay protection: the event each (session, message index) decrypted first.
CREATE TABLE app_megolm_seen (
    account_id        INTEGER NOT NULL REFERENCES app_crypto_accounts (account_id) ON DELETE CASCADE,
    room_id           TEXT NOT NULL,
    session_id        TEXT NOT NULL,
    message_index     INTEGER NOT NULL,
    event_id          TEXT NOT NULL,
    origin_server_ts  INTEGER NOT NULL,
    PRIMARY KEY (account_id, room_id, session_id, message_index)
) STRICT;

-- The Megolm session this device encrypts a room's events with (one per room).
CREATE TABLE app_outbound_group_sessions (
    account_id     INTEGER NOT NULL REFERENCES app_crypto_accounts (account_id) ON DELETE CASCADE,
    room_id        TEXT NOT NULL,
    session_id     TEXT NOT NULL,
    pickle         TEXT NOT NULL,
    created_ms     INTEGER NOT NULL,
    message_count  INTEGER NOT NULL,
    PRIMARY KEY (account_id, room_id)
) STRICT;

-- The devices an outbound session was shared with, and at which message index.
CREATE TABLE app_outbound_shares (
    account_id     INTEGER NOT NULL,
    room_id        TEXT NOT NULL,
    session_id     TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    device_id      TEXT NOT NULL,
    curve25519     TEXT NOT NULL,
    message_index  INTEGER NOT NULL,
    PRIMARY KEY (account_id, room_id, user_id, device_id),
    FOREIGN KEY (account_id, room_id) REFERENCES app_outbound_group_sessions (account_id, room_id)
        ON DELETE CASCADE
) STRICT;

-- Users whose device keys the client keeps; `outdated` once their device list changed.
CREATE TABLE app_tracked_users (
    account_id  INTEGER NOT NULL REFERENCES app_crypto_accounts (account_id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL,
    outdated    INTEGER NOT NULL,
    PRIMARY KEY (account_id, user_id)
) STRICT;

-- Their devices' keys, checked (self-signed, ids matching) when they were queried.
CREATE TABLE app_devices (
    account_id  INTEGER NOT NULL,
    user_id     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    curve25519  TEXT NOT NULL,
    ed25519     TEXT NOT NULL,
    -- The device keys object as queried.
    keys        TEXT NOT NULL,
    PRIMARY KEY (account_id, user_id, device_id),
    FOREIGN KEY (account_id, user_id) REFERENCES app_tracked_users (account_id, user_id)
        ON DELETE CASCADE
) STRICT;

-- Room keys this device asked its user's other devices for (m.room_key_request), still open.
CREATE TABLE app_key_requests (
    account_id  INTEGER NOT NULL REFERENCES app_crypto_accounts (account_id) ON DELETE CASCADE,
    room_id     TEXT NOT NULL,
    session_id  TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    sender_key  TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    PRIMARY KEY (account_id, room_id, session_id)
) STRICT;
