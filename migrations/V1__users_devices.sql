-- Accounts and the devices they log in from.

CREATE TABLE users (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- 3 to 32 ASCII letters, digits, '_', '-' or '.', compared case-sensitively.
    username text NOT NULL UNIQUE
        CONSTRAINT users_username_format
        CHECK (char_length(username) BETWEEN 3 AND 32 AND username ~ '^[A-Za-z0-9_.-]+$'),
    -- Argon2id PHC string, for example "$argon2id$v=19$m=19456,t=2,p=1$...".
    password_hash text NOT NULL
        CONSTRAINT users_password_hash_length CHECK (octet_length(password_hash) <= 512),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE devices (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    platform text NOT NULL DEFAULT ''
        CONSTRAINT devices_platform_length CHECK (octet_length(platform) <= 32),
    model text NOT NULL DEFAULT ''
        CONSTRAINT devices_model_length CHECK (octet_length(model) <= 64),
    app_version text NOT NULL DEFAULT ''
        CONSTRAINT devices_app_version_length CHECK (octet_length(app_version) <= 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    last_login_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX devices_user_id_idx ON devices (user_id);
