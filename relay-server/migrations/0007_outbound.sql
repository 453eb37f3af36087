-- The outbound queue: mail that nodes submitted, waiting to be delivered to
-- other mail servers (or to another account of this relay). One row per
-- message, one per recipient still to be done; a recipient's row goes when it
-- is delivered or has failed for good (and its DSN is spooled), the message's
-- when no recipient is left. `data` is the message as the node signed it:
-- mail to other servers has to leave in clear, and is kept only until then.

CREATE TABLE outbound (
    id            TEXT PRIMARY KEY,
    handle        TEXT NOT NULL REFERENCES accounts (handle) ON DELETE CASCADE,
    -- The node's own id for the submission: a Submit sent again after a
    -- broken tunnel finds the message queued already.
    submission_id TEXT NOT NULL,
    mail_from     TEXT NOT NULL,
    data          BYTEA NOT NULL,
    created_at    BIGINT NOT NULL,
    UNIQUE (handle, submission_id)
);

CREATE TABLE outbound_rcpts (
    id         TEXT NOT NULL REFERENCES outbound (id) ON DELETE CASCADE,
    rcpt       TEXT NOT NULL,
    domain     TEXT NOT NULL,
    attempts   BIGINT NOT NULL,
    -- When to try next (seconds since the epoch); a delivery in progress
    -- pushes it ahead by a lease, so a crashed relay retries after it.
    next_at    BIGINT NOT NULL,
    last_error TEXT,
    PRIMARY KEY (id, rcpt)
);

CREATE INDEX outbound_rcpts_due ON outbound_rcpts (next_at);

-- Messages submitted per account and day (the daily cap survives restarts).
CREATE TABLE outbound_counts (
    handle   TEXT NOT NULL REFERENCES accounts (handle) ON DELETE CASCADE,
    day      BIGINT NOT NULL,
    messages BIGINT NOT NULL,
    PRIMARY KEY (handle, day)
);
