//! Folders: create, delete, rename (RFC 3501 6.3.3–6.3.5 with the hierarchy
//! delimiter "/"), subscriptions and the counts STATUS and SELECT report.

use super::WRITE_TX;
use super::{MailStore, StoreError};
use sqlx::{Row, Sqlite, Transaction};

/// The hierarchy delimiter of folder names.
pub const DELIMITER: char = '/';

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxInfo {
    pub id: i64,
    pub name: String,
    pub special_use: Option<String>,
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub highestmodseq: u64,
    /// Only holds the place of its children (`\Noselect`).
    pub noselect: bool,
}

/// Counts for STATUS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailboxCounts {
    pub messages: u32,
    pub unseen: u32,
    pub deleted: u32,
    pub size: u64,
}

macro_rules! columns {
    () => {
        "id, name, special_use, uidvalidity, uidnext, highestmodseq, noselect"
    };
}

fn info(r: &sqlx::sqlite::SqliteRow) -> Result<MailboxInfo, StoreError> {
    Ok(MailboxInfo {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        special_use: r.try_get(2)?,
        uidvalidity: r.try_get::<i64, _>(3)? as u32,
        uidnext: r.try_get::<i64, _>(4)? as u32,
        highestmodseq: r.try_get::<i64, _>(5)? as u64,
        noselect: r.try_get::<i64, _>(6)? != 0,
    })
}

/// INBOX is case-insensitive (RFC 3501 5.1); every other name is as given.
pub fn canonical(name: &str) -> String {
    if name.eq_ignore_ascii_case("INBOX") {
        return "INBOX".into();
    }
    match name.split_once(DELIMITER) {
        Some((first, rest)) if first.eq_ignore_ascii_case("INBOX") => format!("INBOX/{rest}"),
        _ => name.to_string(),
    }
}

/// A UIDVALIDITY (RFC 9051 2.3.1.1): seconds since the epoch, and always more
/// than any handed out before, so a re-created folder never reuses a value.
pub(crate) async fn next_uidvalidity(tx: &mut Transaction<'_, Sqlite>) -> Result<i64, StoreError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(1);
    let last: i64 = sqlx::query(
        "SELECT MAX(COALESCE((SELECT value FROM store_state WHERE key = 'uidvalidity'), 0), COALESCE((SELECT MAX(uidvalidity) FROM mailboxes), 0))",
    )
    .fetch_one(&mut **tx)
    .await?
    .try_get(0)?;
    let next = now.max(last + 1).clamp(1, u32::MAX as i64);
    sqlx::query("INSERT INTO store_state (key, value) VALUES ('uidvalidity', ?1) ON CONFLICT (key) DO UPDATE SET value = ?1")
        .bind(next)
        .execute(&mut **tx)
        .await?;
    Ok(next)
}

impl MailStore {
    /// One folder by name (INBOX in any case).
    pub async fn mailbox(&self, name: &str) -> Result<Option<MailboxInfo>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM mailboxes WHERE name = ?1"
        ))
        .bind(canonical(name))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(info).transpose()
    }

    pub async fn mailbox_by_id(&self, id: i64) -> Result<Option<MailboxInfo>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM mailboxes WHERE id = ?1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(info).transpose()
    }

    /// Every folder, by name.
    pub async fn all_mailboxes(&self) -> Result<Vec<MailboxInfo>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM mailboxes ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(info).collect()
    }

    /// A number that moves whenever a message is added to any folder (the
    /// sum of their UIDNEXT), and not when flags change.
    pub async fn uid_mark(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query("SELECT COALESCE(SUM(uidnext), 0) FROM mailboxes")
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?,
        )
    }

    pub async fn counts(&self, mailbox_id: i64) -> Result<MailboxCounts, StoreError> {
        let r = sqlx::query(
            "SELECT COUNT(*), \
             COALESCE(SUM(CASE WHEN (' ' || flags || ' ') LIKE '% \\Seen %' THEN 0 ELSE 1 END), 0), \
             COALESCE(SUM(CASE WHEN (' ' || flags || ' ') LIKE '% \\Deleted %' THEN 1 ELSE 0 END), 0), \
             COALESCE(SUM(size), 0) FROM messages WHERE mailbox_id = ?1",
        )
        .bind(mailbox_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(MailboxCounts {
            messages: r.try_get::<i64, _>(0)? as u32,
            unseen: r.try_get::<i64, _>(1)? as u32,
            deleted: r.try_get::<i64, _>(2)? as u32,
            size: r.try_get::<i64, _>(3)? as u64,
        })
    }

    /// Creates a folder and any missing parents (RFC 3501 6.3.3). A name that
    /// exists as a `\Noselect` placeholder becomes a real folder.
    pub async fn create_mailbox(&self, name: &str) -> Result<(), StoreError> {
        let name = canonical(name.trim_end_matches(DELIMITER));
        if name.is_empty() || name.split(DELIMITER).any(str::is_empty) {
            return Err(StoreError::Refused("that folder name is not valid"));
        }
        let mut tx = self.pool.begin_with(WRITE_TX).await?;
        let mut path = String::new();
        let parts: Vec<&str> = name.split(DELIMITER).collect();
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                path.push(DELIMITER);
            }
            path.push_str(part);
            let last = i + 1 == parts.len();
            let existing = sqlx::query("SELECT noselect FROM mailboxes WHERE name = ?1")
                .bind(&path)
                .fetch_optional(&mut *tx)
                .await?;
            match existing {
                Some(r) if last => {
                    if r.try_get::<i64, _>(0)? == 0 {
                        return Err(StoreError::MailboxExists(name));
                    }
                    sqlx::query("UPDATE mailboxes SET noselect = 0 WHERE name = ?1")
                        .bind(&path)
                        .execute(&mut *tx)
                        .await?;
                }
                Some(_) => {}
                None => {
                    let uidvalidity = next_uidvalidity(&mut tx).await?;
                    sqlx::query("INSERT INTO mailboxes (name, uidvalidity) VALUES (?1, ?2)")
                        .bind(&path)
                        .bind(uidvalidity)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes a folder (RFC 3501 6.3.4): INBOX never; a folder with children
    /// loses its messages and becomes `\Noselect`; a `\Noselect` folder with
    /// children is refused.
    pub async fn delete_mailbox(&self, name: &str) -> Result<(), StoreError> {
        let Some(mb) = self.mailbox(name).await? else {
            return Err(StoreError::NoMailbox(name.to_string()));
        };
        if mb.name == "INBOX" {
            return Err(StoreError::Refused("INBOX cannot be deleted"));
        }
        let children =
            sqlx::query("SELECT 1 FROM mailboxes WHERE substr(name, 1, ?2) = ?1 LIMIT 1")
                .bind(format!("{}{DELIMITER}", mb.name))
                .bind(mb.name.chars().count() as i64 + 1)
                .fetch_optional(&self.pool)
                .await?
                .is_some();
        let mut tx = self.pool.begin_with(WRITE_TX).await?;
        if children {
            if mb.noselect {
                return Err(StoreError::Refused(
                    "that name only holds its subfolders; delete them first",
                ));
            }
            sqlx::query("DELETE FROM messages WHERE mailbox_id = ?1")
                .bind(mb.id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE mailboxes SET noselect = 1, highestmodseq = highestmodseq + 1 WHERE id = ?1")
                .bind(mb.id)
                .execute(&mut *tx)
                .await?;
        } else {
            sqlx::query("DELETE FROM mailboxes WHERE id = ?1")
                .bind(mb.id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.notify(mb.id);
        Ok(())
    }

    /// Renames a folder and its children (RFC 3501 6.3.5). Renaming INBOX moves
    /// its messages to a new folder and leaves INBOX empty.
    pub async fn rename_mailbox(&self, from: &str, to: &str) -> Result<(), StoreError> {
        let Some(src) = self.mailbox(from).await? else {
            return Err(StoreError::NoMailbox(from.to_string()));
        };
        let to = canonical(to.trim_end_matches(DELIMITER));
        if to.is_empty() || to.split(DELIMITER).any(str::is_empty) {
            return Err(StoreError::Refused("that folder name is not valid"));
        }
        if self.mailbox(&to).await?.is_some() {
            return Err(StoreError::MailboxExists(to));
        }
        if to.starts_with(&format!("{}{DELIMITER}", src.name)) {
            return Err(StoreError::Refused("a folder cannot move into itself"));
        }
        // Parents of the new name.
        if let Some((parent, _)) = to.rsplit_once(DELIMITER) {
            if self.mailbox(parent).await?.is_none() {
                self.create_mailbox(parent).await?;
                sqlx::query("UPDATE mailboxes SET noselect = 1 WHERE name = ?1")
                    .bind(parent)
                    .execute(&self.pool)
                    .await?;
            }
        }
        let mut tx = self.pool.begin_with(WRITE_TX).await?;
        if src.name == "INBOX" {
            let uidvalidity = next_uidvalidity(&mut tx).await?;
            let new_id: i64 = sqlx::query(
                "INSERT INTO mailboxes (name, uidvalidity, uidnext, highestmodseq) VALUES (?1, ?2, ?3, ?4) RETURNING id",
            )
            .bind(&to)
            .bind(uidvalidity)
            .bind(i64::from(src.uidnext))
            .bind(src.highestmodseq as i64)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
            sqlx::query("UPDATE messages SET mailbox_id = ?2 WHERE mailbox_id = ?1")
                .bind(src.id)
                .bind(new_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT OR REPLACE INTO expunged (mailbox_id, uid, modseq) SELECT ?1, uid, ?2 FROM messages WHERE mailbox_id = ?3")
                .bind(src.id)
                .bind(src.highestmodseq as i64 + 1)
                .bind(new_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id = ?1")
                .bind(src.id)
                .execute(&mut *tx)
                .await?;
        } else {
            let prefix = format!("{}{DELIMITER}", src.name);
            sqlx::query(
                "UPDATE mailboxes SET name = ?2 || substr(name, ?3) WHERE substr(name, 1, ?4) = ?1",
            )
            .bind(&prefix)
            .bind(format!("{to}{DELIMITER}"))
            .bind(prefix.chars().count() as i64 + 1)
            .bind(prefix.chars().count() as i64)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE mailboxes SET name = ?2 WHERE id = ?1")
                .bind(src.id)
                .bind(&to)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE OR IGNORE subscriptions SET name = ?2 WHERE name = ?1")
                .bind(&src.name)
                .bind(&to)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.notify(src.id);
        Ok(())
    }

    /// Subscribes to or unsubscribes from a name (RFC 3501 6.3.6–6.3.7).
    pub async fn set_subscribed(&self, name: &str, on: bool) -> Result<(), StoreError> {
        let name = canonical(name);
        let sql = if on {
            "INSERT OR IGNORE INTO subscriptions (name) VALUES (?1)"
        } else {
            "DELETE FROM subscriptions WHERE name = ?1"
        };
        sqlx::query(sql).bind(name).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn subscriptions(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT name FROM subscriptions ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }
}
