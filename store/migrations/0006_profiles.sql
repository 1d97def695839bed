-- Version 6: public profiles of local users.
CREATE TABLE profiles (
    localpart    TEXT PRIMARY KEY REFERENCES accounts (localpart) ON DELETE CASCADE,
    displayname  TEXT,
    avatar_url   TEXT
) STRICT;
