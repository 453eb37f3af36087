//! mbsync (Debian's isync) keeps a local Maildir in step with alice's mailbox
//! on her node, both ways, over IMAP with STARTTLS, verifying the node's
//! certificate against the sandbox CA: new mail delivered through the relay,
//! a large message, flags, moves between folders, deletions, a new draft and
//! a new folder on either side show on the other. A second laptop away from home syncs the same mailbox over
//! IMAPS through the relay's SNI passthrough, and each sees the other's
//! changes. The server side is read and changed with Python's imaplib.

use omb_tests::apps::{
    assert_same_message, big_message, python, scripts_dir, test_message, NodeInfo, RunningSandbox,
};
use omb_tests::harness::{have_tool, token};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Headers mbsync itself adds to the messages it copies (its transaction id).
const MBSYNC_HEADERS: &[&str] = &["X-TUID"];

/// How mbsync reaches the node.
enum Route {
    /// At home: the node's IMAP port, STARTTLS.
    Direct,
    /// Away: the relay's `imaps` port, TLS with SNI `NAME.sandbox.test`
    /// passed through to the node.
    Relay(SocketAddr),
}

/// mbsync with a fresh HOME and its own configuration (mode 0600).
struct Mbsync {
    home: PathBuf,
    config: PathBuf,
    maildir: PathBuf,
}

impl Mbsync {
    fn new(home: &Path, node: &NodeInfo, ca: &Path, route: Route) -> Self {
        let home = home.to_path_buf();
        let maildir = home.join("Mail");
        std::fs::create_dir_all(&maildir).expect("create Maildir root");
        let pass_file = home.join(".mail-password");
        std::fs::write(&pass_file, &node.password).expect("write password file");
        std::fs::set_permissions(&pass_file, std::fs::Permissions::from_mode(0o600))
            .expect("chmod password file");
        // isync 1.4 checks the certificate against the name in `Host` (DNS
        // names only, never an IP literal), and sends it as SNI; so `Host` is
        // the node's name and a `Tunnel` reaches the IP literal, with no
        // resolver involved. TLS runs end to end between mbsync and the node.
        let (addr, tls) = match route {
            Route::Direct => (node.imap, "STARTTLS"),
            Route::Relay(imaps) => (imaps, "IMAPS"),
        };
        let tunnel = format!(
            "python3 {} {} {}",
            scripts_dir().join("tcp_pipe.py").display(),
            addr.ip(),
            addr.port()
        );
        let config = format!(
            "IMAPAccount {name}\n\
             Host {name}.sandbox.test\n\
             Tunnel \"{tunnel}\"\n\
             User {address}\n\
             PassCmd \"cat {pass}\"\n\
             SSLType {tls}\n\
             CertificateFile {ca}\n\n\
             IMAPStore {name}-remote\n\
             Account {name}\n\n\
             MaildirStore {name}-local\n\
             Path {maildir}/\n\
             Inbox {maildir}/INBOX\n\
             SubFolders Verbatim\n\n\
             Channel {name}\n\
             Far :{name}-remote:\n\
             Near :{name}-local:\n\
             Patterns *\n\
             Create Both\n\
             Expunge Both\n\
             SyncState *\n",
            name = node.name,
            address = node.address,
            pass = pass_file.display(),
            ca = ca.display(),
            maildir = maildir.display(),
        );
        let config_path = home.join(".mbsyncrc-test");
        std::fs::write(&config_path, config).expect("write mbsync config");
        std::fs::set_permissions(&config_path, std::fs::Permissions::from_mode(0o600))
            .expect("chmod mbsync config");
        Mbsync {
            home,
            config: config_path,
            maildir,
        }
    }

    /// `mbsync -a`; panics with its transcript unless it succeeds.
    fn sync(&self) -> String {
        let out = Command::new("mbsync")
            .env("HOME", &self.home)
            .env_remove("XDG_CONFIG_HOME")
            .arg("-V")
            .arg("-c")
            .arg(&self.config)
            .arg("-a")
            .stdin(Stdio::null())
            .output()
            .expect("run mbsync");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "mbsync failed:\n{text}");
        text
    }

    /// The messages of a local folder (`new/` and `cur/`).
    fn local(&self, folder: &str) -> Vec<LocalMessage> {
        let mut found = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(self.maildir.join(folder).join(sub)) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                let flags = name
                    .split_once(":2,")
                    .map(|(_, f)| f.to_string())
                    .unwrap_or_default();
                let text = String::from_utf8_lossy(&std::fs::read(&path).expect("read message"))
                    .into_owned();
                found.push(LocalMessage { path, flags, text });
            }
        }
        found
    }

    fn find_local(&self, folder: &str, tok: &str) -> Option<LocalMessage> {
        let mut all: Vec<_> = self
            .local(folder)
            .into_iter()
            .filter(|m| m.text.contains(tok))
            .collect();
        assert!(
            all.len() <= 1,
            "{tok} is in local {folder} {} times",
            all.len()
        );
        all.pop()
    }

    fn local_message(&self, folder: &str, tok: &str) -> LocalMessage {
        self.find_local(folder, tok)
            .unwrap_or_else(|| panic!("{tok} is not in the local {folder}"))
    }

    /// Sets a message's Maildir flags, as a mail app does: a rename into `cur/`.
    fn set_flags(&self, m: &LocalMessage, flags: &str) {
        let mut sorted: Vec<char> = flags.chars().collect();
        sorted.sort_unstable();
        let name = format!("{}:2,{}", m.base(), sorted.into_iter().collect::<String>());
        let cur = m.path.parent().and_then(Path::parent).expect("folder");
        std::fs::rename(&m.path, cur.join("cur").join(name)).expect("rename");
    }

    /// Moves a message to another folder as a mail app does: a rename, without
    /// mbsync's UID (`,U=N`), which belongs to the old folder (mbsync(1)).
    fn move_local(&self, m: &LocalMessage, folder: &str) {
        let base = m.base();
        let base = match base.find(",U=") {
            Some(i) => {
                let rest = &base[i + 3..];
                let end = rest.find(',').map(|j| i + 3 + j).unwrap_or(base.len());
                format!("{}{}", &base[..i], &base[end..])
            }
            None => base.to_string(),
        };
        let to = self
            .maildir
            .join(folder)
            .join("cur")
            .join(format!("{base}:2,{}", m.flags));
        std::fs::rename(&m.path, to).expect("move between folders");
    }
}

struct LocalMessage {
    path: PathBuf,
    flags: String,
    text: String,
}

impl LocalMessage {
    /// The file name without the `:2,FLAGS` info part.
    fn base(&self) -> String {
        let name = self
            .path
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        name.split_once(":2,")
            .map(|(b, _)| b.to_string())
            .unwrap_or(name)
    }
}

/// alice's mailbox as imaplib sees it over IMAPS.
struct Server {
    config: String,
}

#[derive(Debug, serde::Deserialize)]
struct ServerMessage {
    uid: u32,
    flags: Vec<String>,
    message: String,
}

impl Server {
    fn new(node: &NodeInfo, ca: &Path) -> Self {
        let config = serde_json::json!({
            "imaps": node.imaps.to_string(),
            "sni": format!("{}.sandbox.test", node.name),
            "ca": ca,
            "user": node.address,
            "password": node.password,
        });
        Server {
            config: config.to_string(),
        }
    }

    fn run(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec![self.config.as_str()];
        all.extend_from_slice(args);
        let out = python("imap_ops.py", &all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("imap_ops.py {args:?}: {e}: {out}"))
    }

    fn list(&self, folder: &str) -> Vec<ServerMessage> {
        serde_json::from_value(self.run(&["list", folder])).expect("message list")
    }

    fn find(&self, folder: &str, tok: &str) -> Option<ServerMessage> {
        let mut all: Vec<_> = self
            .list(folder)
            .into_iter()
            .filter(|m| m.message.contains(tok))
            .collect();
        assert!(
            all.len() <= 1,
            "{tok} is in the server's {folder} {} times",
            all.len()
        );
        all.pop()
    }

    fn message(&self, folder: &str, tok: &str) -> ServerMessage {
        self.find(folder, tok)
            .unwrap_or_else(|| panic!("{tok} is not in the server's {folder}"))
    }
}

/// The Message-IDs of a set of messages, sorted.
fn message_ids<'a>(texts: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut ids: Vec<String> = texts
        .map(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Message-ID: "))
                .unwrap_or("(none)")
                .trim()
                .to_string()
        })
        .collect();
    ids.sort();
    ids
}

#[test]
fn mbsync_syncs_both_ways() {
    if !have_tool("mbsync") || !have_tool("swaks") || !have_tool("python3") {
        return;
    }
    let sandbox = RunningSandbox::start("mbsync", &["alice"]);
    let alice = sandbox.node("alice");
    let ca = sandbox.ca();
    let mbsync = Mbsync::new(&sandbox.path().join("home"), &alice, &ca, Route::Direct);
    let server = Server::new(&alice, &ca);

    // New mail delivered through the relay appears in the Maildir after a
    // sync, decrypted, byte for byte what swaks sent.
    let toks: Vec<String> = (0..5).map(|_| token()).collect();
    let sent: Vec<String> = toks
        .iter()
        .enumerate()
        .map(|(i, t)| sandbox.deliver("alice", &test_message(&alice.address, &format!("m{i}"), t)))
        .collect();
    let big_tok = token();
    let big = sandbox.deliver("alice", &big_message(&alice.address, &big_tok, 400 * 1024));
    mbsync.sync();
    for (t, s) in toks.iter().zip(&sent) {
        let m = mbsync.local_message("INBOX", t);
        assert_same_message(&m.text, s, MBSYNC_HEADERS, "synced to the Maildir");
        assert!(
            !m.flags.contains('S'),
            "new mail arrives unseen: {:?}",
            m.path
        );
    }
    let m = mbsync.local_message("INBOX", &big_tok);
    assert_same_message(&m.text, &big, MBSYNC_HEADERS, "a 400 KiB message");
    for folder in ["Sent", "Drafts", "Trash", "Junk", "Archive"] {
        assert!(
            mbsync.maildir.join(folder).join("cur").is_dir(),
            "the server's {folder} was not created locally"
        );
    }

    // Local changes reach the server: flags, a move, a deletion, a new draft.
    mbsync.set_flags(&mbsync.local_message("INBOX", &toks[0]), "SF");
    mbsync.move_local(&mbsync.local_message("INBOX", &toks[1]), "Archive");
    let doomed = mbsync.local_message("INBOX", &toks[2]);
    mbsync.set_flags(&doomed, &format!("{}T", doomed.flags));
    let draft_tok = token();
    let draft = format!(
        "From: Alice <{a}>\nTo: Bob <bob@example.net>\nSubject: draft {draft_tok}\n\
         Date: Mon, 02 Mar 2026 10:00:00 +0000\nMessage-ID: <{draft_tok}@sandbox.test>\n\n\
         A draft written offline, {draft_tok}.\n",
        a = alice.address
    );
    std::fs::write(
        mbsync
            .maildir
            .join("Drafts/cur")
            .join(format!("1772445600.{draft_tok}.laptop:2,D")),
        &draft,
    )
    .expect("write a draft");
    // A folder made locally, with a message filed in it.
    let note_tok = token();
    let note = format!(
        "From: Alice <{a}>\nTo: Alice <{a}>\nSubject: note {note_tok}\n\
         Date: Mon, 02 Mar 2026 11:00:00 +0000\nMessage-ID: <{note_tok}@sandbox.test>\n\n\
         Filed in a folder made on the laptop, {note_tok}.\n",
        a = alice.address
    );
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(mbsync.maildir.join("Projects").join(sub)).expect("mkdir");
    }
    std::fs::write(
        mbsync
            .maildir
            .join("Projects/cur")
            .join(format!("1772449200.{note_tok}.laptop:2,S")),
        &note,
    )
    .expect("write a note");
    mbsync.sync();

    let flagged = server.message("INBOX", &toks[0]);
    for flag in ["\\Seen", "\\Flagged"] {
        assert!(
            flagged.flags.iter().any(|f| f == flag),
            "a flag set locally is not on the server: {:?}",
            flagged.flags
        );
    }
    assert!(
        server.find("INBOX", &toks[1]).is_none(),
        "a message moved locally out of INBOX is still in the server's INBOX"
    );
    let archived = server.message("Archive", &toks[1]);
    assert_same_message(
        &archived.message,
        &sent[1],
        MBSYNC_HEADERS,
        "moved to Archive",
    );
    assert!(
        server.find("INBOX", &toks[2]).is_none(),
        "a message deleted locally is still on the server"
    );
    assert!(
        mbsync.find_local("INBOX", &toks[2]).is_none(),
        "the message deleted locally was not expunged locally"
    );
    let drafted = server.message("Drafts", &draft_tok);
    assert_same_message(&drafted.message, &draft, MBSYNC_HEADERS, "draft appended");
    assert!(
        drafted.flags.iter().any(|f| f == "\\Draft"),
        "the draft lost its \\Draft flag: {:?}",
        drafted.flags
    );
    let filed = server.message("Projects", &note_tok);
    assert_same_message(
        &filed.message,
        &note,
        MBSYNC_HEADERS,
        "filed in a new folder",
    );
    assert!(
        filed.flags.iter().any(|f| f == "\\Seen"),
        "the note lost its \\Seen flag: {:?}",
        filed.flags
    );

    // Server changes reach the Maildir: flags, a deletion, a move, new mail.
    let uid = |folder: &str, tok: &str| server.message(folder, tok).uid.to_string();
    let u3 = uid("INBOX", &toks[3]);
    server.run(&["store", "INBOX", &u3, "+FLAGS", "(\\Flagged \\Answered)"]);
    let u0 = uid("INBOX", &toks[0]);
    server.run(&["delete", "INBOX", &u0]);
    let u4 = uid("INBOX", &toks[4]);
    server.run(&["move", "INBOX", &u4, "Archive"]);
    let late_tok = token();
    let late = sandbox.deliver("alice", &test_message(&alice.address, "late", &late_tok));
    mbsync.sync();

    let m3 = mbsync.local_message("INBOX", &toks[3]);
    assert!(
        m3.flags.contains('F') && m3.flags.contains('R'),
        "flags set on the server are not in the Maildir: {:?}",
        m3.path
    );
    assert!(
        mbsync.find_local("INBOX", &toks[0]).is_none(),
        "a message deleted on the server is still in the Maildir"
    );
    assert!(
        mbsync.find_local("INBOX", &toks[4]).is_none(),
        "a message moved on the server is still in the local INBOX"
    );
    let m4 = mbsync.local_message("Archive", &toks[4]);
    assert_same_message(&m4.text, &sent[4], MBSYNC_HEADERS, "moved on the server");
    let m5 = mbsync.local_message("INBOX", &late_tok);
    assert_same_message(&m5.text, &late, MBSYNC_HEADERS, "late delivery");

    // Nothing left to do: another sync changes nothing, and both sides hold
    // the same messages in every folder.
    mbsync.sync();
    assert_same_folders(&mbsync, &server);
}

/// Both sides hold the same folders, and the same messages in each.
fn assert_same_folders(mbsync: &Mbsync, server: &Server) {
    let mut remote_folders: Vec<String> =
        serde_json::from_value(server.run(&["folders"])).expect("folder list");
    remote_folders.sort();
    let mut local_folders: Vec<String> = std::fs::read_dir(&mbsync.maildir)
        .expect("read the Maildir root")
        .flatten()
        .filter(|e| e.path().join("cur").is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    local_folders.sort();
    assert_eq!(local_folders, remote_folders, "the folders differ");
    for folder in &remote_folders {
        let local = mbsync.local(folder);
        let remote = server.list(folder);
        assert_eq!(
            message_ids(local.iter().map(|m| m.text.as_str())),
            message_ids(remote.iter().map(|m| m.message.as_str())),
            "{folder} differs between the Maildir and the server"
        );
    }
}

/// A laptop at home (STARTTLS to the node) and one away (IMAPS through the
/// relay's SNI passthrough) sync the same mailbox: each gets the mail, and
/// what one changes the other sees after its next sync.
#[test]
fn mbsync_at_home_and_away_through_the_relay() {
    if !have_tool("mbsync") || !have_tool("swaks") || !have_tool("python3") {
        return;
    }
    let sandbox = RunningSandbox::start("mbsync-away", &["alice"]);
    let alice = sandbox.node("alice");
    let ca = sandbox.ca();
    let home = Mbsync::new(&sandbox.path().join("home"), &alice, &ca, Route::Direct);
    let away = Mbsync::new(
        &sandbox.path().join("away"),
        &alice,
        &ca,
        Route::Relay(sandbox.relay_addr("imaps")),
    );
    let server = Server::new(&alice, &ca);
    let toks: Vec<String> = (0..2).map(|_| token()).collect();
    let sent: Vec<String> = toks
        .iter()
        .map(|t| sandbox.deliver("alice", &test_message(&alice.address, "both", t)))
        .collect();

    let transcript = away.sync();
    assert!(
        transcript.contains("Connection is now encrypted"),
        "mbsync did not use TLS through the relay:\n{transcript}"
    );
    home.sync();
    for (t, s) in toks.iter().zip(&sent) {
        for (laptop, m) in [("away", &away), ("home", &home)] {
            let msg = m.local_message("INBOX", t);
            assert_same_message(&msg.text, s, MBSYNC_HEADERS, laptop);
        }
    }

    // Away: read one, delete the other. At home, after syncing, the same.
    away.set_flags(&away.local_message("INBOX", &toks[0]), "S");
    let doomed = away.local_message("INBOX", &toks[1]);
    away.set_flags(&doomed, "T");
    away.sync();
    home.sync();
    assert!(
        home.local_message("INBOX", &toks[0]).flags.contains('S'),
        "read away, unread at home"
    );
    assert!(
        home.find_local("INBOX", &toks[1]).is_none(),
        "deleted away, still at home"
    );
    assert_same_folders(&home, &server);
    assert_same_folders(&away, &server);
}
