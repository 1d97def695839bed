-- Version 4: end-to-end encryption: cross-signing keys and signatures, device-list tombstones,
-- sendToDevice transaction ids, and room-key backup.

-- A user's cross-signing keys (local users' as uploaded, remote ones cached from federation).
-- `public_key` is the unpadded base64 key, which signatures name as `ed25519:<public_key>`.
CREATE TABLE cross_signing_keys (
    user_id     TEXT NOT NULL,
    usage       TEXT NOT NULL CHECK (usage IN ('master', 'self_signing', 'user_signing')),
    public_key  TEXT NOT NULL,
    keys        TEXT NOT NULL,
    stream_pos  INTEGER NOT NULL,
    PRIMARY KEY (user_id, usage)
) STRICT;
CREATE INDEX cross_signing_keys_stream ON cross_signing_keys (stream_pos);

-- Signatures uploaded with keys/signatures/upload, merged into the keys when they are queried.
-- The target is a device (`target_key_id` = device id) or a cross-signing key (its public key).
CREATE TABLE key_signatures (
    target_user_id  TEXT NOT NULL,
    target_key_id   TEXT NOT NULL,
    signer_user_id  TEXT NOT NULL,
    signer_key_id   TEXT NOT NULL,
    signature       TEXT NOT NULL,
    PRIMARY KEY (target_user_id, target_key_id, signer_user_id, signer_key_id)
) STRICT;

CREATE INDEX device_keys_stream ON device_keys (stream_pos);

-- Devices whose keys went with the device: their user's device list changed at `stream_pos`.
CREATE TABLE device_keys_tombstones (
    user_id     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    stream_pos  INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id)
) STRICT;
CREATE INDEX device_keys_tombstones_stream ON device_keys_tombstones (stream_pos);

-- sendToDevice transaction ids already delivered, so that a retried request is not delivered
-- twice.
CREATE TABLE to_device_txns (
    localpart   TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    txn_id      TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    PRIMARY KEY (localpart, device_id, txn_id),
    FOREIGN KEY (localpart, device_id) REFERENCES devices (localpart, device_id) ON DELETE CASCADE
) STRICT;
CREATE INDEX to_device_txns_created ON to_device_txns (created_ms);

-- Server-side room-key backup: versions (a deleted one keeps its row so its number is never
-- reused) and the encrypted session keys in each.
CREATE TABLE backup_versions (
    localpart  TEXT NOT NULL REFERENCES accounts (localpart) ON DELETE CASCADE,
    version    INTEGER NOT NULL,
    -- {"algorithm": ..., "auth_data": ...}
    algorithm  TEXT NOT NULL,
    etag       INTEGER NOT NULL DEFAULT 0,
    deleted    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (localpart, version)
) STRICT;

CREATE TABLE backup_keys (
    localpart            TEXT NOT NULL,
    version              INTEGER NOT NULL,
    room_id              TEXT NOT NULL,
    session_id           TEXT NOT NULL,
    first_message_index  INTEGER NOT NULL,
    forwarded_count      INTEGER NOT NULL,
    is_verified          INTEGER NOT NULL,
    -- The whole KeyBackupData object.
    data                 TEXT NOT NULL,
    PRIMARY KEY (localpart, version, room_id, session_id),
    FOREIGN KEY (localpart, version) REFERENCES backup_versions (localpart, version)
        ON DELETE CASCADE
) STRICT;
