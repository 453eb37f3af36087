-- The relay's state. The same statements run on SQLite and PostgreSQL:
-- BIGINT for integers and times (seconds since the epoch), BYTEA for bytes
-- (SQLite stores any blob whatever the declared type), TEXT for the rest.

CREATE TABLE accounts (
    handle      TEXT PRIMARY KEY,
    quota_bytes BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- Every address that delivers to an account, lower case.
CREATE TABLE addresses (
    address TEXT PRIMARY KEY,
    handle  TEXT NOT NULL REFERENCES accounts (handle) ON DELETE CASCADE
);

-- One-time link tokens; only their SHA-256 is kept.
CREATE TABLE link_tokens (
    token_hash TEXT PRIMARY KEY,
    handle     TEXT NOT NULL REFERENCES accounts (handle) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    used_at    BIGINT
);

-- The home node linked to an account: its tunnel key and OpenPGP certificate.
CREATE TABLE nodes (
    node_key     TEXT PRIMARY KEY,
    handle       TEXT NOT NULL UNIQUE REFERENCES accounts (handle) ON DELETE CASCADE,
    openpgp_cert BYTEA NOT NULL,
    fingerprint  TEXT NOT NULL,
    linked_at    BIGINT NOT NULL
);

-- Mail waiting for a node. `data` is ciphertext (PGP/MIME to the node's key, or
-- the sender's own encryption); only the envelope is in clear.
CREATE TABLE spool (
    id              TEXT PRIMARY KEY,
    handle          TEXT NOT NULL REFERENCES accounts (handle) ON DELETE CASCADE,
    mail_from       TEXT NOT NULL,
    rcpt_to         TEXT NOT NULL,
    size            BIGINT NOT NULL,
    received_at     BIGINT NOT NULL,
    relay_encrypted BIGINT NOT NULL,
    data            BYTEA NOT NULL
);

CREATE INDEX spool_by_handle ON spool (handle, id);
