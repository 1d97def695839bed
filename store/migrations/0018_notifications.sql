-- Version 18: notifications. Each local member's push rules are evaluated once per timeline
-- event, in stream order; the 'push_actions' counter says how far. Events before this version
-- are not evaluated, so an upgrade shows no old history as unread.
INSERT INTO counters (name, value) SELECT 'push_actions', value FROM counters WHERE name = 'stream';

-- The events that notified a user: what the matching rule's actions said.
CREATE TABLE push_actions (
    user_id     TEXT NOT NULL,
    stream_pos  INTEGER NOT NULL,
    room_id     TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    -- 'main', or the root of the thread the event is in (read receipts can be per thread).
    thread_id   TEXT NOT NULL,
    highlight   INTEGER NOT NULL,
    -- JSON array of the matching rule's actions.
    actions     TEXT NOT NULL,
    -- When it was evaluated; notifications older than a month are dropped.
    ts          INTEGER NOT NULL,
    -- Unread counts look up one room's newest; `/notifications` all rooms' (the index below).
    PRIMARY KEY (user_id, room_id, stream_pos)
) STRICT;
CREATE INDEX push_actions_user ON push_actions (user_id, stream_pos);
CREATE INDEX push_actions_ts ON push_actions (ts);

-- Where each local user last sent an event in each room and thread: sending marks what came
-- before it as read, as a read receipt does.
CREATE TABLE push_sent_marks (
    user_id     TEXT NOT NULL,
    room_id     TEXT NOT NULL,
    thread_id   TEXT NOT NULL,
    stream_pos  INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id, thread_id)
) STRICT;

-- Pushers a client registered (Element X does on login). Kept and listed only: the node is the
-- device, so there is no push gateway to call. A pusher goes with the device that set it.
CREATE TABLE pushers (
    localpart  TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    app_id     TEXT NOT NULL,
    pushkey    TEXT NOT NULL,
    -- The pusher as the client set it, JSON.
    pusher     TEXT NOT NULL,
    PRIMARY KEY (localpart, app_id, pushkey),
    FOREIGN KEY (localpart, device_id) REFERENCES devices (localpart, device_id) ON DELETE CASCADE
) STRICT;
CREATE INDEX pushers_key ON pushers (app_id, pushkey);
