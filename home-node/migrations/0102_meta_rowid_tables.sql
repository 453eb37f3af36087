-- `message_meta` and `message_envelope` become ordinary (rowid) tables, their
-- key in an index of its own. As WITHOUT ROWID tables their rows were their
-- index entries, and a row longer than about a quarter of a page (the sealed
-- metadata is over a kilobyte) spills into an overflow page; SQLite then reads
-- the whole row, past its page cache, for every key compared during a lookup or
-- an insert. bench/outbound measured it: most of the node's CPU went to those
-- reads while it kept sent messages with their metadata. Now the key lives in
-- a small index and a row is read once.
CREATE TABLE message_meta_rowid (
    mailbox_id INTEGER NOT NULL,
    uid        INTEGER NOT NULL,
    meta       BLOB NOT NULL,
    PRIMARY KEY (mailbox_id, uid),
    FOREIGN KEY (mailbox_id, uid) REFERENCES messages (mailbox_id, uid)
        ON DELETE CASCADE ON UPDATE CASCADE
);
INSERT INTO message_meta_rowid (mailbox_id, uid, meta)
    SELECT mailbox_id, uid, meta FROM message_meta;
DROP TABLE message_meta;
ALTER TABLE message_meta_rowid RENAME TO message_meta;

CREATE TABLE message_envelope_rowid (
    mailbox_id INTEGER NOT NULL,
    uid        INTEGER NOT NULL,
    envelope   BLOB NOT NULL,
    PRIMARY KEY (mailbox_id, uid),
    FOREIGN KEY (mailbox_id, uid) REFERENCES messages (mailbox_id, uid)
        ON DELETE CASCADE ON UPDATE CASCADE
);
INSERT INTO message_envelope_rowid (mailbox_id, uid, envelope)
    SELECT mailbox_id, uid, envelope FROM message_envelope;
DROP TABLE message_envelope;
ALTER TABLE message_envelope_rowid RENAME TO message_envelope;
