-- Version 8: what federation adds to rooms.

-- An invite to a room on another server, before this node is in it: the stripped state the
-- inviting server sent, shown to the invitee.
CREATE TABLE invite_state (
    room_id     TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    -- JSON array of stripped state events.
    state       TEXT NOT NULL,
    PRIMARY KEY (room_id, user_id)
) STRICT;

-- The room's current state right after the event was accepted (resolved across branches),
-- so sync can tell the state at any point of the timeline, including state that came from
-- another server without a place in this node's timeline.
ALTER TABLE event_state ADD COLUMN current_after INTEGER;
