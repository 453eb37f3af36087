-- IMAP on the node's store: folder hierarchy, subscriptions, expunge history
-- (CONDSTORE/QRESYNC, RFC 7162) and a per-message metadata cache.

-- A folder that only holds the place of its children (RFC 3501 6.3.4).
ALTER TABLE mailboxes ADD COLUMN noselect INTEGER NOT NULL DEFAULT 0;

-- What apps get to know about a message without decrypting it again: size,
-- ENVELOPE, BODYSTRUCTURE, header block. Encrypted with the node's metadata key
-- (XChaCha20-Poly1305, DATA_DIR/meta.key); made when first needed. A table of
-- its own: in `messages` it would sit behind the body, and SQLite would walk
-- the body's overflow pages to read it. Follows its message on MOVE (UPDATE
-- CASCADE) and goes with it (DELETE CASCADE).
CREATE TABLE message_meta (
    mailbox_id INTEGER NOT NULL,
    uid        INTEGER NOT NULL,
    meta       BLOB NOT NULL,
    PRIMARY KEY (mailbox_id, uid),
    FOREIGN KEY (mailbox_id, uid) REFERENCES messages (mailbox_id, uid)
        ON DELETE CASCADE ON UPDATE CASCADE
) WITHOUT ROWID;

CREATE INDEX messages_modseq ON messages (mailbox_id, modseq);
-- Covers SELECT's listing of a folder, so it never reads the table's rows
-- (each holds a body, about a page of its own).
CREATE INDEX messages_listing ON messages (mailbox_id, uid, flags, modseq, internaldate, size);

-- UIDs removed from a folder, with the mod-sequence of their removal, so a
-- session learns what others expunged since it last looked.
CREATE TABLE expunged (
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    uid        INTEGER NOT NULL,
    modseq     INTEGER NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
);
CREATE INDEX expunged_modseq ON expunged (mailbox_id, modseq);

-- Subscriptions (RFC 3501 6.3.6) are names: a name may be subscribed without a folder.
CREATE TABLE subscriptions (
    name TEXT PRIMARY KEY
);
INSERT INTO subscriptions (name) SELECT name FROM mailboxes;

-- Counters that must never go back (the last UIDVALIDITY handed out).
CREATE TABLE store_state (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
