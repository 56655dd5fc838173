-- Usernames are unique whatever their letter case, so "ALICE" cannot pose as "alice". A name
-- keeps the case it was registered with; logins and look-ups match it in any case.
-- On a database that already holds two names differing only in case, this migration fails
-- and names the duplicate key; rename one of the two users, then start the logic tier again.
CREATE UNIQUE INDEX users_username_lower_key ON users (lower(username));
