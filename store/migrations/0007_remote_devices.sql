-- Version 7: what other servers tell about their users' devices, for end-to-end encryption
-- across servers.

-- Other servers' users whose device list changed (an m.device_list_update or
-- m.signing_key_update EDU came): `stream_pos` is where the change entered this node's stream,
-- so /sync and keys/changes report it like a local user's; `stream_id` is the sender's own
-- counter of the last numbered update seen, to recognise a repeated EDU.
CREATE TABLE remote_device_lists (
    user_id     TEXT PRIMARY KEY,
    stream_id   INTEGER,
    stream_pos  INTEGER NOT NULL
) STRICT;
CREATE INDEX remote_device_lists_stream ON remote_device_lists (stream_pos);

-- The m.direct_to_device message ids already delivered, per origin server, so that an EDU
-- repeated by a retried transaction is not delivered twice.
CREATE TABLE remote_to_device_ids (
    origin      TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    PRIMARY KEY (origin, message_id)
) STRICT;
CREATE INDEX remote_to_device_ids_created ON remote_to_device_ids (created_ms);
