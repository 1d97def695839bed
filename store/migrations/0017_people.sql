-- Version 17: what this node knows of people beyond its own accounts, and presence.

-- Profiles of other servers' users as their servers last answered (`query/profile`): served
-- while fresh, and while their server is away. Bounded: the oldest are dropped.
CREATE TABLE remote_profiles (
    user_id      TEXT PRIMARY KEY,
    displayname  TEXT,
    avatar_url   TEXT,
    fetched_ms   INTEGER NOT NULL
) STRICT;
CREATE INDEX remote_profiles_fetched ON remote_profiles (fetched_ms);

-- Who owns each node that connected here, as the node last said (`io.hyphae/owner`): the user
-- directory's people nearby. Bounded like the profiles.
CREATE TABLE peer_owners (
    server_name  TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    displayname  TEXT,
    learned_ms   INTEGER NOT NULL
) STRICT;
CREATE INDEX peer_owners_learned ON peer_owners (learned_ms);

-- Presence as last set: by local users (PUT /presence, /sync's set_presence) and by other
-- servers for their users (m.presence EDUs). What clients see is derived from it, from the
-- time since the user was last active and, for other servers' users, from whether their
-- server is connected.
CREATE TABLE presence (
    user_id         TEXT PRIMARY KEY,
    state           TEXT NOT NULL CHECK (state IN ('online', 'unavailable', 'offline')),
    -- Set with PUT /presence: a sync's implicit "online" does not override it.
    explicit        INTEGER NOT NULL DEFAULT 0,
    status_msg      TEXT,
    last_active_ms  INTEGER NOT NULL
) STRICT;

-- When each other server was last connected to this node: its users' last_active_ago.
CREATE TABLE server_last_seen (
    server_name   TEXT PRIMARY KEY,
    last_seen_ms  INTEGER NOT NULL
) STRICT;
CREATE INDEX server_last_seen_at ON server_last_seen (last_seen_ms);
