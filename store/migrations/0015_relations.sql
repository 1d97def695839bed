-- Version 15: the relations index (`m.relates_to` of the events in rooms' timelines: threads,
-- edits, references, reactions), for the relations and threads APIs and the aggregations
-- bundled into served events.

-- One row per accepted timeline event that relates to another; rejected events never get one,
-- and a redacted event loses it (its content, the relation with it, is gone).
CREATE TABLE relations (
    event_id    TEXT PRIMARY KEY REFERENCES events (event_id) ON DELETE CASCADE,
    room_id     TEXT NOT NULL,
    -- `m.relates_to.event_id`: the event this one relates to (it may not be known here).
    relates_to  TEXT NOT NULL,
    rel_type    TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    sender      TEXT NOT NULL,
    stream_pos  INTEGER NOT NULL
) STRICT;
CREATE INDEX relations_target ON relations (relates_to, rel_type, stream_pos);
CREATE INDEX relations_room ON relations (room_id, rel_type, relates_to);

-- What rooms already hold.
INSERT INTO relations (event_id, room_id, relates_to, rel_type, event_type, sender, stream_pos)
SELECT event_id, room_id,
       json_extract(pdu, '$.content."m.relates_to".event_id'),
       json_extract(pdu, '$.content."m.relates_to".rel_type'),
       event_type, sender, stream_pos
FROM events
WHERE stream_pos IS NOT NULL AND rejection_reason IS NULL
  AND instr(pdu, '"m.relates_to"') > 0
  AND json_valid(pdu)
  AND json_type(pdu, '$.content."m.relates_to".event_id') = 'text'
  AND json_type(pdu, '$.content."m.relates_to".rel_type') = 'text'
  AND length(json_extract(pdu, '$.content."m.relates_to".event_id')) <= 255
  AND length(json_extract(pdu, '$.content."m.relates_to".rel_type')) <= 255;

-- The state event a state event replaced, for events kept without the state before them
-- (history fetched from other servers), is found through `events_room_state_stream` (0006).
