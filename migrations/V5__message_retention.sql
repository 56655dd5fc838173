-- Lets the logic tier delete message copies older than its message_retention_days without
-- reading the whole table. Copies arrive in sent_at order, so each range of blocks covers a
-- short span of time and a BRIN index stays a few pages. autosummarize has autovacuum
-- summarize each range once it fills, so the delete does not read every new block.
CREATE INDEX messages_sent_at_brin ON messages USING brin (sent_at) WITH (autosummarize = on);
