-- What a message list needs (ENVELOPE and RFC822.SIZE), apart from the rest of
-- the metadata cache: a `message_meta` row (header block, structure, about
-- 1.4 KB) overflows its page, and a FETCH 1:* (FLAGS ENVELOPE) read, decrypted
-- and decoded all of it for a few hundred bytes. Encrypted with the same key
-- (XChaCha20-Poly1305, DATA_DIR/meta.key), written with `message_meta`,
-- following its message on MOVE and going with it.
-- Numbered after 0100 (see there).
CREATE TABLE message_envelope (
    mailbox_id INTEGER NOT NULL,
    uid        INTEGER NOT NULL,
    envelope   BLOB NOT NULL,
    PRIMARY KEY (mailbox_id, uid),
    FOREIGN KEY (mailbox_id, uid) REFERENCES messages (mailbox_id, uid)
        ON DELETE CASCADE ON UPDATE CASCADE
) WITHOUT ROWID;
