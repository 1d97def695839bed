-- Version 16: the local room directory, and the full-text index that /search reads.

-- Rooms this server lists in its public room directory (createRoom with visibility "public",
-- or PUT /directory/list/room/{roomId}).
CREATE TABLE room_directory (
    room_id       TEXT PRIMARY KEY,
    published_ms  INTEGER NOT NULL
) STRICT;

-- What of a timeline event can be searched, per the spec's search keys: an m.room.message's
-- content.body, an m.room.name's content.name, an m.room.topic's content.topic. Encrypted events
-- (m.room.encrypted) have nothing a server can read; rejected events and outliers are not in
-- any timeline; a redacted event has no content left.
CREATE VIEW searchable_events (event_id, stream_pos, text) AS
SELECT event_id, stream_pos, text FROM (
    SELECT event_id, stream_pos,
        CASE WHEN json_valid(pdu) THEN json_extract(pdu, CASE event_type
            WHEN 'm.room.message' THEN '$.content.body'
            WHEN 'm.room.name' THEN '$.content.name'
            ELSE '$.content.topic' END) END AS text
    FROM events
    WHERE stream_pos IS NOT NULL AND rejection_reason IS NULL
      AND ((event_type = 'm.room.message' AND state_key IS NULL)
           OR (event_type IN ('m.room.name', 'm.room.topic') AND state_key = ''))
) WHERE typeof(text) = 'text';

-- The index: one row per searchable event, its rowid the event's stream position. Contentless:
-- the text stays in `events` only.
CREATE VIRTUAL TABLE event_search USING fts5 (
    text,
    content = '',
    contentless_delete = 1,
    tokenize = 'unicode61 remove_diacritics 2'
);

-- Kept by triggers, so every way an event enters or changes in `events` (built here, received,
-- back-filled, restored, an outlier taking its place in the timeline, redacted) is indexed.
CREATE TRIGGER event_search_insert AFTER INSERT ON events BEGIN
    INSERT OR REPLACE INTO event_search (rowid, text)
    SELECT stream_pos, text FROM searchable_events WHERE event_id = new.event_id;
END;

CREATE TRIGGER event_search_update
AFTER UPDATE OF pdu, stream_pos, rejection_reason, event_type, state_key ON events BEGIN
    DELETE FROM event_search WHERE rowid = old.stream_pos;
    INSERT OR REPLACE INTO event_search (rowid, text)
    SELECT stream_pos, text FROM searchable_events WHERE event_id = new.event_id;
END;

CREATE TRIGGER event_search_delete AFTER DELETE ON events BEGIN
    DELETE FROM event_search WHERE rowid = old.stream_pos;
END;

-- What a database from before this version already holds.
INSERT INTO event_search (rowid, text) SELECT stream_pos, text FROM searchable_events;
