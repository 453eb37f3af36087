-- Which zone version last changed each account's DNS data, so that a relay
-- process follows changes made elsewhere (the operator CLI, another instance)
-- account by account, and never applies an older snapshot over a newer one.
-- And the index that finds an account's addresses without a full scan.
ALTER TABLE accounts ADD COLUMN dns_version BIGINT NOT NULL DEFAULT 0;

CREATE INDEX accounts_by_dns_version ON accounts (dns_version);
CREATE INDEX addresses_by_handle ON addresses (handle);
