-- Version 14: the policy lists (Matrix policy rooms) this node subscribes to as a whole, as its
-- operator chose: PDUs from the users and servers they ban are refused at the federation edge.
-- Per-user subscriptions are the users' own account data (`io.hyphae.policy_subscriptions`).
CREATE TABLE policy_node_subscriptions (
    room_id     TEXT PRIMARY KEY,
    added_ms    INTEGER NOT NULL
) STRICT;
