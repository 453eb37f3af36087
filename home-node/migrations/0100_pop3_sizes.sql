-- What POP3 announces for each message (RFC 1939: LIST and STAT give the exact
-- octets RETR sends). That is not `messages.size`: POP3 sends CRLF line endings,
-- and accounts with `ciphertext_to_apps` get the stored ciphertext. Worked out
-- once per message and view (it needs a decryption), then kept here.
-- Numbered 0100 so that the IMAP store's migrations, written at the same time,
-- keep 0002 onwards.
CREATE TABLE pop3_sizes (
    mailbox_id INTEGER NOT NULL,
    uid        INTEGER NOT NULL,
    -- 0: the decrypted view; 1: the ciphertext handed to apps.
    ciphertext INTEGER NOT NULL,
    size       INTEGER NOT NULL,
    PRIMARY KEY (mailbox_id, uid, ciphertext),
    FOREIGN KEY (mailbox_id, uid) REFERENCES messages (mailbox_id, uid)
        ON DELETE CASCADE ON UPDATE CASCADE
);
