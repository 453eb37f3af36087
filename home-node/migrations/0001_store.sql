-- The node's mail store, shaped for IMAP (RFC 9051): folders with UIDVALIDITY
-- and UIDNEXT, messages with UIDs, flags and mod-sequences (RFC 7162).
-- Message bodies are kept as OpenPGP ciphertext to the node's own key.

CREATE TABLE mailboxes (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    special_use   TEXT,
    subscribed    INTEGER NOT NULL DEFAULT 1,
    uidvalidity   INTEGER NOT NULL,
    uidnext       INTEGER NOT NULL DEFAULT 1,
    highestmodseq INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE messages (
    mailbox_id   INTEGER NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    uid          INTEGER NOT NULL,
    -- The relay's queue id: a redelivered message is recognised and dropped.
    delivery_id  TEXT UNIQUE,
    internaldate INTEGER NOT NULL,
    -- Size of the decrypted message (RFC822.SIZE).
    size         INTEGER NOT NULL,
    flags        TEXT NOT NULL DEFAULT '',
    modseq       INTEGER NOT NULL,
    data         BLOB NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
);
