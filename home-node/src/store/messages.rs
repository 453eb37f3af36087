//! Messages in folders: listing, flags with mod-sequences (RFC 7162),
//! expunging, copying and moving with new UIDs in the target (RFC 4315);
//! appending is in `append`.
//! Every change bumps the folder's HIGHESTMODSEQ and is announced to sessions.

use super::WRITE_TX;
use super::{MailStore, StoreError};
use rusqlite::OptionalExtension;
use sqlx::{Row, Sqlite, Transaction};
use std::sync::{Arc, LazyLock};

/// One message as a session sees it (no body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgRow {
    pub uid: u32,
    /// Space-separated flags and keywords, e.g. `\Seen $Forwarded`; shared
    /// (see [`flag_value`]), so the copy of a folder's listing each session
    /// makes when its view changes costs no allocation per message.
    pub flags: Arc<str>,
    pub modseq: u64,
    pub internaldate: i64,
    pub size: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagOp {
    Add,
    Remove,
    Replace,
}

/// The outcome of a flag change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlagUpdate {
    /// Messages whose flags changed, with their new flags and mod-sequence.
    pub changed: Vec<MsgRow>,
    /// Messages left alone because they changed after UNCHANGEDSINCE.
    pub modified: Vec<u32>,
}

/// A stored flag string as a [`MsgRow`] holds it: the common values (none,
/// `\Seen`) are one allocation for every message that has them.
pub fn flag_value(flags: &str) -> Arc<str> {
    static NONE: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(""));
    static SEEN: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("\\Seen"));
    match flags {
        "" => NONE.clone(),
        "\\Seen" => SEEN.clone(),
        other => Arc::from(other),
    }
}

macro_rules! row_columns {
    () => {
        "uid, flags, modseq, internaldate, size"
    };
}

fn row(r: &sqlx::sqlite::SqliteRow) -> Result<MsgRow, StoreError> {
    Ok(MsgRow {
        uid: r.try_get::<i64, _>(0)? as u32,
        flags: flag_value(r.try_get::<&str, _>(1)?),
        modseq: r.try_get::<i64, _>(2)? as u64,
        internaldate: r.try_get(3)?,
        size: r.try_get(4)?,
    })
}

/// Applies a flag operation to a flag string; None when nothing changes.
pub fn apply_flags(current: &str, op: FlagOp, flags: &[String]) -> Option<String> {
    let has = |list: &[&str], f: &str| list.iter().any(|x| x.eq_ignore_ascii_case(f));
    let cur: Vec<&str> = current.split_whitespace().collect();
    let mut next: Vec<&str> = match op {
        FlagOp::Replace => Vec::new(),
        _ => cur.clone(),
    };
    match op {
        FlagOp::Add | FlagOp::Replace => {
            for f in flags {
                if !has(&next, f) {
                    next.push(f);
                }
            }
        }
        FlagOp::Remove => next.retain(|x| !flags.iter().any(|f| f.eq_ignore_ascii_case(x))),
    }
    let same = next.len() == cur.len() && next.iter().all(|f| has(&cur, f));
    (!same).then(|| next.join(" "))
}

/// Bumps a folder's HIGHESTMODSEQ and returns the new value.
pub(super) async fn bump(
    tx: &mut Transaction<'_, Sqlite>,
    mailbox_id: i64,
) -> Result<i64, StoreError> {
    Ok(
        sqlx::query("UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id = ?1 RETURNING highestmodseq")
            .bind(mailbox_id)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or(StoreError::Refused("that folder no longer exists"))?
            .try_get(0)?,
    )
}

/// [`bump`], also giving the folder's UIDVALIDITY.
async fn bump_validity(
    tx: &mut Transaction<'_, Sqlite>,
    mailbox_id: i64,
) -> Result<(i64, u32), StoreError> {
    let r = sqlx::query("UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id = ?1 RETURNING highestmodseq, uidvalidity")
        .bind(mailbox_id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(StoreError::Refused("that folder no longer exists"))?;
    Ok((r.try_get(0)?, r.try_get::<i64, _>(1)? as u32))
}

/// A flag change as committed: the folder's UIDVALIDITY, the change's
/// mod-sequence and the store's change generation just before the commit.
struct Committed {
    uidvalidity: u32,
    modseq: u64,
    generation: u64,
}

async fn next_uid(
    tx: &mut Transaction<'_, Sqlite>,
    mailbox_id: i64,
) -> Result<(u32, u32), StoreError> {
    let r = sqlx::query("UPDATE mailboxes SET uidnext = uidnext + 1 WHERE id = ?1 AND noselect = 0 RETURNING uidnext - 1, uidvalidity")
        .bind(mailbox_id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(StoreError::Refused("that folder cannot hold messages"))?;
    Ok((
        r.try_get::<i64, _>(0)? as u32,
        r.try_get::<i64, _>(1)? as u32,
    ))
}

impl MailStore {
    /// Every message of a folder, by UID. The rows come packed in one text
    /// value: sqlx hands SQLite rows over one by one between threads, which
    /// costs more than the query itself for a big folder.
    pub async fn snapshot(&self, mailbox_id: i64) -> Result<Vec<MsgRow>, StoreError> {
        let packed: Option<String> = sqlx::query(
            "SELECT group_concat(line, char(10)) FROM (SELECT uid || ' ' || modseq || ' ' || internaldate || ' ' || size || ' ' || flags AS line FROM messages WHERE mailbox_id = ?1 ORDER BY uid)",
        )
        .bind(mailbox_id)
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?;
        let packed = packed.unwrap_or_default();
        let mut out = Vec::with_capacity(packed.bytes().filter(|&b| b == b'\n').count() + 1);
        for line in packed.split('\n').filter(|l| !l.is_empty()) {
            let mut parts = line.splitn(5, ' ');
            let mut number = || parts.next().and_then(|p| p.parse::<i64>().ok());
            let (Some(uid), Some(modseq), Some(internaldate), Some(size)) =
                (number(), number(), number(), number())
            else {
                return Err(StoreError::Refused("a message row does not read back"));
            };
            out.push(MsgRow {
                uid: uid as u32,
                modseq: modseq as u64,
                internaldate,
                size,
                flags: flag_value(parts.next().unwrap_or("")),
            });
        }
        // SQLite keeps the subquery's order in practice; make sure of it.
        if !out.is_sorted_by_key(|m| m.uid) {
            out.sort_unstable_by_key(|m| m.uid);
        }
        Ok(out)
    }

    /// What changed in a folder after `modseq`: new or changed messages, and
    /// the UIDs expunged.
    pub async fn changes_since(
        &self,
        mailbox_id: i64,
        modseq: u64,
    ) -> Result<(Vec<MsgRow>, Vec<u32>), StoreError> {
        // Sorted here: with ORDER BY uid, SQLite walks the folder's whole
        // listing index instead of the few entries of the modseq index (a
        // scan of every message for each session's catching up).
        let rows = sqlx::query(concat!(
            "SELECT ",
            row_columns!(),
            " FROM messages WHERE mailbox_id = ?1 AND modseq > ?2"
        ))
        .bind(mailbox_id)
        .bind(modseq as i64)
        .fetch_all(&self.pool)
        .await?;
        let gone = sqlx::query(
            "SELECT uid FROM expunged WHERE mailbox_id = ?1 AND modseq > ?2 ORDER BY uid",
        )
        .bind(mailbox_id)
        .bind(modseq as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut rows: Vec<MsgRow> = rows.iter().map(row).collect::<Result<_, _>>()?;
        rows.sort_unstable_by_key(|r| r.uid);
        Ok((
            rows,
            gone.iter()
                .map(|r| Ok(r.try_get::<i64, _>(0)? as u32))
                .collect::<Result<_, StoreError>>()?,
        ))
    }

    /// The stored (encrypted) form of one message.
    pub async fn data(&self, mailbox_id: i64, uid: u32) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.readers.read(|c| {
            c.prepare_cached("SELECT data FROM messages WHERE mailbox_id = ?1 AND uid = ?2")?
                .query_row((mailbox_id, i64::from(uid)), |r| r.get(0))
                .optional()
        })?)
    }

    /// Changes the flags of the given messages. With `unchanged_since`
    /// (CONDSTORE), messages changed after it are left alone and reported.
    ///
    /// Flag changes are committed with `synchronous = NORMAL`: in WAL mode the
    /// database stays consistent, and the change is on disk at the next
    /// checkpoint or the next durable commit (a delivery, an APPEND, an
    /// expunge), instead of costing an fsync each. A power cut can lose the
    /// flags of the last moments, never a message, as with Dovecot, which does
    /// not fsync its index either. Opening a message (BODY[] sets `\Seen`)
    /// by ten apps at once was bound by those fsyncs.
    pub async fn set_flags(
        &self,
        mailbox_id: i64,
        uids: &[u32],
        op: FlagOp,
        flags: &[String],
        unchanged_since: Option<u64>,
    ) -> Result<FlagUpdate, StoreError> {
        let mut conn = self.relaxed().await?;
        let out = self
            .set_flags_on(&mut conn, mailbox_id, uids, op, flags, unchanged_since)
            .await;
        super::durable_again(conn).await;
        let (out, committed) = out?;
        if let Some(c) = committed {
            // The folder's shared listing follows the change, so sessions
            // catch up without asking the database (`current_listing`): it
            // is the folder's latest state when no other change was
            // announced between this commit and this announcement.
            let advanced = self
                .listings
                .advance(mailbox_id, c.uidvalidity, c.modseq, &out.changed);
            let generation = self.notify(mailbox_id);
            if advanced && generation == c.generation + 1 {
                self.listings.mark_current(mailbox_id, c.modseq, generation);
            }
        }
        Ok(out)
    }

    async fn set_flags_on(
        &self,
        conn: &mut sqlx::SqliteConnection,
        mailbox_id: i64,
        uids: &[u32],
        op: FlagOp,
        flags: &[String],
        unchanged_since: Option<u64>,
    ) -> Result<(FlagUpdate, Option<Committed>), StoreError> {
        let mut out = FlagUpdate::default();
        let mut tx = sqlx::Connection::begin_with(&mut *conn, WRITE_TX).await?;
        let mut modseq = None;
        let mut uidvalidity = 0;
        for chunk in uids.chunks(500) {
            let (lo, hi) = (chunk[0], chunk[chunk.len() - 1]);
            let rows = sqlx::query(concat!(
                "SELECT ",
                row_columns!(),
                " FROM messages WHERE mailbox_id = ?1 AND uid BETWEEN ?2 AND ?3 ORDER BY uid"
            ))
            .bind(mailbox_id)
            .bind(i64::from(lo))
            .bind(i64::from(hi))
            .fetch_all(&mut *tx)
            .await?;
            for r in rows {
                let mut m = row(&r)?;
                if chunk.binary_search(&m.uid).is_err() {
                    continue;
                }
                if unchanged_since.is_some_and(|u| m.modseq > u) {
                    out.modified.push(m.uid);
                    continue;
                }
                let Some(new) = apply_flags(&m.flags, op, flags) else {
                    continue;
                };
                let ms = match modseq {
                    Some(ms) => ms,
                    None => {
                        let (ms, validity) = bump_validity(&mut tx, mailbox_id).await?;
                        modseq = Some(ms);
                        uidvalidity = validity;
                        ms
                    }
                };
                sqlx::query("UPDATE messages SET flags = ?3, modseq = ?4 WHERE mailbox_id = ?1 AND uid = ?2")
                    .bind(mailbox_id)
                    .bind(i64::from(m.uid))
                    .bind(&new)
                    .bind(ms)
                    .execute(&mut *tx)
                    .await?;
                m.flags = flag_value(&new);
                m.modseq = ms as u64;
                out.changed.push(m);
            }
        }
        // Read while this transaction holds the write lock: no other change
        // can be committed until it ends.
        let generation = self.generation();
        tx.commit().await?;
        let committed = modseq.map(|ms| Committed {
            uidvalidity,
            modseq: ms as u64,
            generation,
        });
        Ok((out, committed))
    }

    /// Removes the messages flagged `\Deleted` (only those in `only`, when
    /// given: UID EXPUNGE); returns their UIDs.
    pub async fn expunge(
        &self,
        mailbox_id: i64,
        only: Option<&[u32]>,
    ) -> Result<Vec<u32>, StoreError> {
        let rows = sqlx::query("SELECT uid FROM messages WHERE mailbox_id = ?1 AND (' ' || flags || ' ') LIKE '% \\Deleted %' ORDER BY uid")
            .bind(mailbox_id)
            .fetch_all(&self.pool)
            .await?;
        let mut uids = Vec::new();
        for r in rows {
            let uid = r.try_get::<i64, _>(0)? as u32;
            if only.is_none_or(|o| o.binary_search(&uid).is_ok()) {
                uids.push(uid);
            }
        }
        if uids.is_empty() {
            return Ok(uids);
        }
        let mut tx = self.pool.begin_with(WRITE_TX).await?;
        let modseq = bump(&mut tx, mailbox_id).await?;
        for uid in &uids {
            remove(&mut tx, mailbox_id, *uid, modseq).await?;
        }
        tx.commit().await?;
        self.notify(mailbox_id);
        Ok(uids)
    }

    /// Copies messages to another folder (new UIDs there, flags kept);
    /// returns (source UID, new UID) pairs.
    pub async fn copy(
        &self,
        from: i64,
        uids: &[u32],
        to: i64,
    ) -> Result<Vec<(u32, u32)>, StoreError> {
        self.transfer(from, uids, to, false).await
    }

    /// Moves messages (RFC 6851): like COPY, then expunged from the source.
    pub async fn move_messages(
        &self,
        from: i64,
        uids: &[u32],
        to: i64,
    ) -> Result<Vec<(u32, u32)>, StoreError> {
        self.transfer(from, uids, to, true).await
    }

    async fn transfer(
        &self,
        from: i64,
        uids: &[u32],
        to: i64,
        remove_source: bool,
    ) -> Result<Vec<(u32, u32)>, StoreError> {
        let mut tx = self.pool.begin_with(WRITE_TX).await?;
        let mut pairs = Vec::with_capacity(uids.len());
        let dst_modseq = bump(&mut tx, to).await?;
        let src_modseq = if remove_source {
            bump(&mut tx, from).await?
        } else {
            0
        };
        for &uid in uids {
            let exists = sqlx::query("SELECT 1 FROM messages WHERE mailbox_id = ?1 AND uid = ?2")
                .bind(from)
                .bind(i64::from(uid))
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_none() {
                continue;
            }
            let (new_uid, _) = next_uid(&mut tx, to).await?;
            if remove_source {
                sqlx::query("UPDATE messages SET mailbox_id = ?3, uid = ?4, modseq = ?5 WHERE mailbox_id = ?1 AND uid = ?2")
                    .bind(from)
                    .bind(i64::from(uid))
                    .bind(to)
                    .bind(i64::from(new_uid))
                    .bind(dst_modseq)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT OR REPLACE INTO expunged (mailbox_id, uid, modseq) VALUES (?1, ?2, ?3)",
                )
                .bind(from)
                .bind(i64::from(uid))
                .bind(src_modseq)
                .execute(&mut *tx)
                .await?;
            } else {
                sqlx::query("INSERT INTO messages (mailbox_id, uid, internaldate, size, flags, modseq, data) SELECT ?3, ?4, internaldate, size, flags, ?5, data FROM messages WHERE mailbox_id = ?1 AND uid = ?2")
                    .bind(from)
                    .bind(i64::from(uid))
                    .bind(to)
                    .bind(i64::from(new_uid))
                    .bind(dst_modseq)
                    .execute(&mut *tx)
                    .await?;
                for sql in [
                    "INSERT INTO message_meta (mailbox_id, uid, meta) SELECT ?3, ?4, meta FROM message_meta WHERE mailbox_id = ?1 AND uid = ?2",
                    "INSERT INTO message_envelope (mailbox_id, uid, envelope) SELECT ?3, ?4, envelope FROM message_envelope WHERE mailbox_id = ?1 AND uid = ?2",
                ] {
                    sqlx::query(sql)
                        .bind(from)
                        .bind(i64::from(uid))
                        .bind(to)
                        .bind(i64::from(new_uid))
                        .execute(&mut *tx)
                        .await?;
                }
            }
            pairs.push((uid, new_uid));
        }
        tx.commit().await?;
        self.notify(to);
        if remove_source {
            self.notify(from);
        }
        Ok(pairs)
    }
}

pub(super) async fn remove(
    tx: &mut Transaction<'_, Sqlite>,
    mailbox_id: i64,
    uid: u32,
    modseq: i64,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM messages WHERE mailbox_id = ?1 AND uid = ?2")
        .bind(mailbox_id)
        .bind(i64::from(uid))
        .execute(&mut **tx)
        .await?;
    sqlx::query("INSERT OR REPLACE INTO expunged (mailbox_id, uid, modseq) VALUES (?1, ?2, ?3)")
        .bind(mailbox_id)
        .bind(i64::from(uid))
        .bind(modseq)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn flag_operations() {
        assert_eq!(
            apply_flags("", FlagOp::Add, &s(&["\\Seen"])),
            Some("\\Seen".into())
        );
        assert_eq!(apply_flags("\\Seen", FlagOp::Add, &s(&["\\seen"])), None);
        assert_eq!(
            apply_flags("\\Seen foo", FlagOp::Remove, &s(&["FOO"])),
            Some("\\Seen".into())
        );
        assert_eq!(
            apply_flags("\\Seen foo", FlagOp::Replace, &s(&["foo", "\\Seen"])),
            None
        );
        assert_eq!(
            apply_flags("\\Seen", FlagOp::Replace, &s(&[])),
            Some(String::new())
        );
    }

    /// Many sessions setting flags at once (10 IMAP clients fetching BODY[],
    /// which sets \Seen) all succeed: write transactions wait for the lock
    /// instead of failing with SQLITE_BUSY.
    #[tokio::test]
    async fn concurrent_flag_changes_all_succeed() {
        let (store, dir) = crate::store::temp_store("msgs").await;
        let inbox = store.mailbox("INBOX").await.unwrap().unwrap();
        let mut uids = Vec::new();
        for i in 0..40 {
            let (uid, _) = store.append(inbox.id, i, 1, b"x", "", None).await.unwrap();
            uids.push(uid);
        }
        let mut tasks = tokio::task::JoinSet::new();
        for uid in uids.clone() {
            let store = store.clone();
            tasks.spawn(async move {
                store
                    .set_flags(inbox.id, &[uid], FlagOp::Add, &s(&["\\Seen"]), None)
                    .await
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap().unwrap();
        }
        let rows = store.snapshot(inbox.id).await.unwrap();
        assert_eq!(rows.len(), 40);
        assert!(
            rows.iter().all(|r| r.flags.contains("\\Seen")),
            "every message is \\Seen"
        );
        store.close().await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn append_flags_copy_move_expunge() {
        let (store, dir) = crate::store::temp_store("msgs").await;
        let inbox = store.mailbox("inbox").await.unwrap().unwrap();
        let trash = store.mailbox("Trash").await.unwrap().unwrap();
        let (u1, v) = store
            .append(inbox.id, 1, 3, b"one", "", None)
            .await
            .unwrap();
        assert_eq!((u1, v), (1, inbox.uidvalidity));
        let (u2, _) = store
            .append(
                inbox.id,
                2,
                3,
                b"two",
                "\\Seen",
                Some(&super::super::MetaBytes {
                    meta: b"m",
                    envelope: b"e",
                }),
            )
            .await
            .unwrap();
        assert_eq!(store.counts(inbox.id).await.unwrap().unseen, 1);
        let before = store
            .mailbox_by_id(inbox.id)
            .await
            .unwrap()
            .unwrap()
            .highestmodseq;
        let up = store
            .set_flags(
                inbox.id,
                &[u1, u2],
                FlagOp::Add,
                &s(&["\\Deleted"]),
                Some(before - 1),
            )
            .await
            .unwrap();
        assert_eq!(up.changed.len(), 1, "{up:?}");
        assert_eq!(up.modified, vec![u2]);
        let pairs = store.copy(inbox.id, &[u2], trash.id).await.unwrap();
        assert_eq!(pairs, vec![(u2, 1)]);
        assert_eq!(
            store.metas(trash.id, &[1]).await.unwrap(),
            vec![(1, Some(b"m".to_vec()))]
        );
        assert_eq!(
            store.envelopes(trash.id, &[1]).await.unwrap(),
            vec![(1, Some(b"e".to_vec()))]
        );
        let (changed, gone) = store.changes_since(inbox.id, before).await.unwrap();
        assert_eq!((changed.len(), gone.len()), (1, 0));
        assert_eq!(store.expunge(inbox.id, None).await.unwrap(), vec![u1]);
        let moved = store
            .move_messages(inbox.id, &[u2], trash.id)
            .await
            .unwrap();
        assert_eq!(moved, vec![(u2, 2)]);
        let (_, gone) = store.changes_since(inbox.id, before).await.unwrap();
        assert_eq!(gone, vec![u1, u2]);
        assert_eq!(store.data(trash.id, 2).await.unwrap().unwrap(), b"two");
        store.close().await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn folders_create_rename_delete() {
        let (store, dir) = crate::store::temp_store("mbox").await;
        store.create_mailbox("a/b/c").await.unwrap();
        assert!(store.mailbox("a/b").await.unwrap().is_some());
        assert!(matches!(
            store.create_mailbox("a").await,
            Err(StoreError::MailboxExists(_))
        ));
        let old = store.mailbox("a/b/c").await.unwrap().unwrap();
        store.rename_mailbox("a", "x").await.unwrap();
        let renamed = store.mailbox("x/b/c").await.unwrap().unwrap();
        assert_eq!(renamed.uidvalidity, old.uidvalidity);
        store.delete_mailbox("x/b").await.unwrap();
        assert!(store.mailbox("x/b").await.unwrap().unwrap().noselect);
        assert!(store.delete_mailbox("INBOX").await.is_err());
        store.delete_mailbox("x/b/c").await.unwrap();
        store.create_mailbox("x/b/c").await.unwrap();
        let again = store.mailbox("x/b/c").await.unwrap().unwrap();
        assert!(again.uidvalidity > old.uidvalidity);
        let inbox = store.mailbox("INBOX").await.unwrap().unwrap();
        store.append(inbox.id, 1, 1, b"x", "", None).await.unwrap();
        store.rename_mailbox("INBOX", "Old").await.unwrap();
        assert_eq!(store.counts(inbox.id).await.unwrap().messages, 0);
        let old = store.mailbox("Old").await.unwrap().unwrap();
        assert_eq!(store.counts(old.id).await.unwrap().messages, 1);
        store.close().await;
        std::fs::remove_dir_all(dir).unwrap();
    }
}
