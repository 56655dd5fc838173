-- Device tokens in PostgreSQL, the record that Redis caches. A Redis restart without
-- persistence then loses only the cache: SIGN_IN reads the token here on a miss.

-- SHA-256 of the device's current token; NULL until the device's first LOGIN after this
-- migration (older tokens live only in Redis).
ALTER TABLE devices ADD COLUMN token_hash bytea
    CONSTRAINT devices_token_hash_length CHECK (octet_length(token_hash) = 32);
-- When the current token stops being accepted.
ALTER TABLE devices ADD COLUMN token_expires_at timestamptz;
-- Set by LOGOUT, the business API's Logout and KickDevice; cleared by the next LOGIN, which
-- issues a new token.
ALTER TABLE devices ADD COLUMN token_revoked_at timestamptz;
