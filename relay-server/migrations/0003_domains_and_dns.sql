-- Addresses under HANDLE.DOMAIN, custom domains, and the DNS records the relay
-- publishes for accounts (issue 4).

-- Whether ANYTHING@HANDLE.DOMAIN delivers to the account (1) or not (0).
ALTER TABLE accounts ADD COLUMN aliases BIGINT NOT NULL DEFAULT 1;

-- A user's own domain. Mail for it is accepted only while `state` is
-- 'verified'; a domain whose records disappear becomes 'suspended' (kept, so
-- that fixing the records brings it back), and removing it deletes the row.
-- `report` is the last check, as JSON, for the API to show.
CREATE TABLE domains (
    domain       TEXT PRIMARY KEY,
    handle       TEXT NOT NULL REFERENCES accounts (handle) ON DELETE CASCADE,
    verify_token TEXT NOT NULL,
    state        TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    verified_at  BIGINT,
    checked_at   BIGINT,
    report       TEXT
);

CREATE INDEX domains_by_handle ON domains (handle);

-- Records the relay publishes on a node's behalf, by kind: 'dkim' (the node's
-- DKIM public key record, TXT at HANDLE._domainkey.DOMAIN) and 'acme' (TXT at
-- _acme-challenge.HANDLE.DOMAIN, for the node's own certificate by DNS-01).
CREATE TABLE account_records (
    handle     TEXT NOT NULL REFERENCES accounts (handle) ON DELETE CASCADE,
    kind       TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (handle, kind, value)
);

-- Grows with every change to what the DNS zone publishes, in the same
-- transaction, so that a relay process sees changes made by another one (the
-- operator CLI, or another instance on the same PostgreSQL database).
CREATE TABLE zone_version (
    id      BIGINT PRIMARY KEY,
    version BIGINT NOT NULL
);

INSERT INTO zone_version (id, version) VALUES (1, 0);
