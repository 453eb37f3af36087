-- Bearer tokens for an account's use of the relay's HTTP API (custom
-- domains); only their SHA-256 is kept.
CREATE TABLE api_tokens (
    token_hash TEXT PRIMARY KEY,
    handle     TEXT NOT NULL REFERENCES accounts (handle) ON DELETE CASCADE,
    created_at BIGINT NOT NULL
);
