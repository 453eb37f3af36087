-- Bytes waiting per account, kept by the spool writer in the same transaction
-- as each insert and delete, so the quota check is one row, not a SUM over the
-- whole backlog. And the size of each message as the node will see it
-- (decrypted), carried in the delivery so the node needn't decrypt to learn it.

CREATE TABLE spool_bytes (
    handle TEXT PRIMARY KEY REFERENCES accounts (handle) ON DELETE CASCADE,
    bytes  BIGINT NOT NULL
);

INSERT INTO spool_bytes (handle, bytes)
    SELECT handle, CAST(SUM(size) AS BIGINT) FROM spool GROUP BY handle;

ALTER TABLE spool ADD COLUMN plain_size BIGINT NOT NULL DEFAULT 0;
