-- Messaging: each user's own message sequence, the copies of every message its recipients
-- receive, idempotent sends, friends, groups and the seq each device has stored.

-- True lets anyone send the user direct messages; false only accepted friends.
ALTER TABLE users ADD COLUMN open boolean NOT NULL DEFAULT false;

-- The last seq given to a message of each user. The row appears with the user's first message
-- and only ever grows, inside the transaction that stores the message, so a rolled-back send
-- leaves no gap.
CREATE TABLE user_seq (
    user_id bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    last_seq bigint NOT NULL CONSTRAINT user_seq_last_seq_positive CHECK (last_seq > 0)
);

-- Message ids, shared by every recipient's copy of a message. A rolled-back send uses one up,
-- so ids have gaps; seqs do not.
CREATE SEQUENCE message_ids AS bigint;

-- One row per recipient user of a message (write diffusion). user_id has no foreign key: the
-- same transaction has just locked that user's user_seq row, which does reference users, and a
-- key-share lock on the users row for every copy would only add contention.
CREATE TABLE messages (
    user_id bigint NOT NULL,
    seq bigint NOT NULL CONSTRAINT messages_seq_positive CHECK (seq > 0),
    message_id bigint NOT NULL CONSTRAINT messages_message_id_positive CHECK (message_id > 0),
    sender_user_id bigint NOT NULL
        CONSTRAINT messages_sender_user_id_positive CHECK (sender_user_id > 0),
    -- 0 for a message posted by a back end (ServerSend).
    sender_device_id bigint NOT NULL
        CONSTRAINT messages_sender_device_id_not_negative CHECK (sender_device_id >= 0),
    -- ConversationType: 1 a user, 2 a group.
    conversation_type smallint NOT NULL
        CONSTRAINT messages_conversation_type_known CHECK (conversation_type IN (1, 2)),
    receiver_id bigint NOT NULL CONSTRAINT messages_receiver_id_positive CHECK (receiver_id > 0),
    -- The logic tier's max_content_bytes setting is at most 1 MiB.
    content bytea NOT NULL
        CONSTRAINT messages_content_length CHECK (octet_length(content) BETWEEN 1 AND 1048576),
    content_type text NOT NULL
        CONSTRAINT messages_content_type_length CHECK (octet_length(content_type) <= 64),
    client_msg_id text NOT NULL
        CONSTRAINT messages_client_msg_id_length CHECK (octet_length(client_msg_id) BETWEEN 1 AND 64),
    sent_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, seq)
);

-- The reply to each stored send, so a repeated send returns it and stores nothing. A row older
-- than a day no longer counts: a send with its key replaces it, and a periodic task deletes it.
-- sender_seq is 0 only inside the transaction that stores the message.
CREATE TABLE sent_messages (
    sender_user_id bigint NOT NULL
        CONSTRAINT sent_messages_sender_user_id_positive CHECK (sender_user_id > 0),
    sender_device_id bigint NOT NULL
        CONSTRAINT sent_messages_sender_device_id_not_negative CHECK (sender_device_id >= 0),
    client_msg_id text NOT NULL
        CONSTRAINT sent_messages_client_msg_id_length CHECK (octet_length(client_msg_id) BETWEEN 1 AND 64),
    message_id bigint NOT NULL,
    sender_seq bigint NOT NULL
        CONSTRAINT sent_messages_sender_seq_not_negative CHECK (sender_seq >= 0),
    sent_at timestamptz NOT NULL,
    PRIMARY KEY (sender_user_id, sender_device_id, client_msg_id)
);

CREATE INDEX sent_messages_sent_at_idx ON sent_messages (sent_at);

CREATE TABLE groups (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- 1 to 64 characters.
    name text NOT NULL CONSTRAINT groups_name_length CHECK (char_length(name) BETWEEN 1 AND 64),
    owner_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE group_members (
    group_id bigint NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    joined_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, user_id)
);

CREATE INDEX group_members_user_id_idx ON group_members (user_id);

-- Two rows per pair, one from each side, written and deleted together, so each user's list is
-- one index range. requested_by is the user who sent the request.
CREATE TABLE friendships (
    user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    friend_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    state text NOT NULL CONSTRAINT friendships_state_known CHECK (state IN ('requested', 'accepted')),
    requested_by bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, friend_id),
    CONSTRAINT friendships_not_self CHECK (user_id <> friend_id),
    CONSTRAINT friendships_requested_by_member CHECK (requested_by IN (user_id, friend_id))
);

-- The highest seq each device reported as stored (MESSAGE_ACK); it never goes down.
CREATE TABLE device_acks (
    device_id bigint PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    acked_seq bigint NOT NULL CONSTRAINT device_acks_acked_seq_not_negative CHECK (acked_seq >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);
