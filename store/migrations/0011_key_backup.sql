-- Version 11: server-side key backup of the app's own client (`m.megolm_backup.v1.curve25519-aes-sha2`,
-- the spec's room_keys API). The client uploads its Megolm sessions encrypted to the backup's
-- curve25519 public key; this keeps which backup version it uploads to, its keys, and which
-- sessions are uploaded already.

-- The backup version a client uploads to (at most one). The private key (the recovery key's 32
-- bytes) is kept only encrypted, with a key derived from the client's pickle key.
CREATE TABLE app_key_backup (
    account_id   INTEGER PRIMARY KEY REFERENCES app_crypto_accounts (account_id) ON DELETE CASCADE,
    version      TEXT NOT NULL,
    -- Unpadded base64, as in the version's auth_data.
    public_key   TEXT NOT NULL,
    private_key  TEXT NOT NULL
) STRICT;

-- Whether the session, as stored, is in the current backup version: set once uploaded, cleared
-- when a better copy of the session replaces the row and when a new backup version starts.
ALTER TABLE app_inbound_group_sessions ADD COLUMN backed_up INTEGER NOT NULL DEFAULT 0;

CREATE INDEX app_inbound_group_sessions_not_backed_up
    ON app_inbound_group_sessions (account_id) WHERE backed_up = 0;
