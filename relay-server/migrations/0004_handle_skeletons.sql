-- The look-alike skeleton of each account's handle (accounts::handle::skeleton),
-- so a signup whose handle reads like an existing one is refused with one
-- indexed look-up. Existing accounts get theirs when the store opens (the
-- skeleton is computed in Rust, not SQL). Not unique: the operator may create
-- a look-alike on purpose (`omb-relay account add --force`).
ALTER TABLE accounts ADD COLUMN skeleton TEXT;

CREATE INDEX accounts_by_skeleton ON accounts (skeleton);
