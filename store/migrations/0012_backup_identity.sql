-- Version 12: a subscriber's encrypted identity on its backup server, for restoring onto a new
-- device (ARCHITECTURE.md "Backup server and mailbox"). The blob is sealed with a key derived from
-- the recovery key; `lookup_id` is derived from the recovery key too, so a new device that has only
-- the recovery key (and no identity to authenticate with) can find it, and nobody else can.
CREATE TABLE backup_identity (
    subscriber  TEXT PRIMARY KEY REFERENCES backup_subscribers (server) ON DELETE CASCADE,
    lookup_id   TEXT NOT NULL UNIQUE,
    blob        TEXT NOT NULL,
    updated_ms  INTEGER NOT NULL
) STRICT;
