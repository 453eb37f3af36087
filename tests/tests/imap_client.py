# Python's imaplib against the node's IMAP server (run by tests/tests/imap.rs).
# Standard library only. Usage: imap_client.py MODE CONFIG_JSON
# CONFIG_JSON: {"imap": "127.0.0.1:P", "imaps": "127.0.0.1:P", "ca": PATH,
#               "user": ADDRESS, "password": PW, ...}
import imaplib
import json
import re
import socket
import ssl
import sys
import time

MODE = sys.argv[1]
CFG = json.loads(sys.argv[2])


def hostport(key):
    host, port = CFG[key].rsplit(":", 1)
    return host, int(port)


def tls_context():
    ctx = ssl.create_default_context(cafile=CFG["ca"])
    return ctx


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def ok(resp, what=""):
    typ, data = resp
    check(typ == "OK", f"{what}: expected OK, got {typ} {data!r}")
    return data


def imaps():
    host, port = hostport("imaps")
    m = imaplib.IMAP4_SSL(host, port, ssl_context=tls_context())
    return m


def starttls():
    host, port = hostport("imap")
    m = imaplib.IMAP4(host, port)
    check("STARTTLS" in m.capabilities, f"STARTTLS offered: {m.capabilities}")
    ok(m.starttls(ssl_context=tls_context()), "STARTTLS")
    check("STARTTLS" not in m.capabilities, "no STARTTLS after STARTTLS")
    return m


def login(m):
    ok(m.login(CFG["user"], CFG["password"]), "LOGIN")
    return m


def untagged(m, name):
    return m.untagged_responses.pop(name, [])


def raw_command(m, line):
    """Sends one raw command line (bytes, no CRLF) and returns the lines up
    to its tagged reply."""
    tag = m._new_tag()
    m.send(tag + b" " + line + b"\r\n")
    lines = []
    while True:
        l = m.readline()
        if not l:
            raise AssertionError(f"connection closed after {line!r}: {lines!r}")
        lines.append(l)
        if l.startswith(tag + b" "):
            return lines


MESSAGE = (
    b"From: Alice Example <alice@example.org>\r\n"
    b"To: Bob <bob@example.net>, carol@example.com\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= from the test\r\n"
    b"Date: Mon, 7 Feb 2022 21:52:25 -0800\r\n"
    b"Message-ID: <m1@example.org>\r\n"
    b"X-Custom: needle-in-header\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="BOUND"\r\n'
    b"\r\n"
    b"--BOUND\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Hello Bob, the word is pineapple. K=C3=A4se.\r\n"
    b"--BOUND\r\n"
    b"Content-Type: application/octet-stream; name=\"a.bin\"\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"Content-Disposition: attachment; filename=\"a.bin\"\r\n"
    b"\r\n"
    b"AAECAwQFBgc=\r\n"
    b"--BOUND--\r\n"
)


def fetch_one(m, cmd_args, uid=False):
    if uid:
        typ, data = m.uid("FETCH", *cmd_args)
    else:
        typ, data = m.fetch(*cmd_args)
    check(typ == "OK", f"FETCH {cmd_args}: {typ} {data!r}")
    return data


def main():
    # --- IMAPS, capabilities, ID, NAMESPACE, ENABLE ---------------------------
    m = imaps()
    for cap in ["IMAP4REV1", "AUTH=PLAIN", "LITERAL+", "SASL-IR", "ID", "IDLE"]:
        check(cap in m.capabilities, f"{cap} in {m.capabilities}")
    check("LOGINDISABLED" not in m.capabilities, "login allowed over TLS")
    # Commands in the wrong state.
    lines = raw_command(m, b"SELECT INBOX")
    check(b" BAD" in lines[-1], f"SELECT before login: {lines!r}")
    login(m)
    typ, data = m.capability()
    caps = data[0].decode().upper().split()
    for cap in ["UIDPLUS", "MOVE", "CONDSTORE", "SPECIAL-USE", "ENABLE", "NAMESPACE", "UNSELECT", "BINARY", "UTF8=ACCEPT"]:
        check(cap in caps, f"{cap} after login: {caps}")
    typ, data = m.xatom("ID", '("name" "imaplib")')
    check(typ == "OK", f"ID {typ}")
    check(b"Own-Mailbox" in untagged(m, "ID")[0], "ID reply")
    typ, data = m.namespace()
    check(typ == "OK" and b'(("" "/"))' in data[0], f"NAMESPACE {data!r}")
    typ, data = m._simple_command("ENABLE", "CONDSTORE")
    check(typ == "OK", "ENABLE")
    check(b"CONDSTORE" in untagged(m, "ENABLED")[0].upper(), "ENABLED CONDSTORE")
    ok(m.noop(), "NOOP")

    # --- LIST / LSUB with SPECIAL-USE -----------------------------------------
    data = ok(m.list('""', "*"), "LIST")
    listing = b"\n".join(data)
    for name, attr in [(b"INBOX", None), (b"Sent", b"\\Sent"), (b"Drafts", b"\\Drafts"),
                       (b"Trash", b"\\Trash"), (b"Junk", b"\\Junk"), (b"Archive", b"\\Archive")]:
        line = [l for l in data if l.endswith(b" " + name) or l.endswith(b'"' + name + b'"')]
        check(line, f"{name} listed: {listing!r}")
        if attr:
            check(attr in line[0], f"{name} has {attr}: {line[0]!r}")
    data = ok(m.list('""', '""'), "LIST delimiter")
    check(b'"/"' in data[0], f"delimiter: {data!r}")
    data = ok(m.lsub('""', "*"), "LSUB")
    check(any(l.endswith(b"INBOX") for l in data), f"LSUB: {data!r}")

    # --- CREATE / RENAME / DELETE / SUBSCRIBE, non-ASCII names ----------------
    ok(m.create('"Entw&APw-rfe/&U,BTFw-"'), "CREATE mUTF-7")
    data = ok(m.list('""', '"Entw&APw-rfe*"'), "LIST created")
    check(any(l.endswith(b"Entw&APw-rfe/&U,BTFw-") or l.endswith(b'"Entw&APw-rfe/&U,BTFw-"') for l in data), f"new folder listed: {data!r}")
    check(any(b"HasChildren" in l and (l.endswith(b"Entw&APw-rfe") or l.endswith(b'"Entw&APw-rfe"')) for l in data), f"parent: {data!r}")
    typ, data = m.create("INBOX")
    check(typ == "NO", "CREATE INBOX refused")
    ok(m.rename('"Entw&APw-rfe"', "Projects"), "RENAME")
    data = ok(m.list('""', "Projects/%"), "LIST renamed")
    check(any(b"Projects/&U,BTFw-" in l for l in data), f"child renamed: {data!r}")
    ok(m.subscribe("Projects/&U,BTFw-"), "SUBSCRIBE")
    data = ok(m.lsub('""', "Projects/*"), "LSUB")
    check(any(b"Projects/&U,BTFw-" in l for l in data), f"LSUB: {data!r}")
    ok(m.unsubscribe("Projects/&U,BTFw-"), "UNSUBSCRIBE")
    data = ok(m.lsub('""', "Projects/*"), "LSUB after")
    check(data == [None], f"LSUB after unsubscribe: {data!r}")
    ok(m.delete("Projects/&U,BTFw-"), "DELETE")
    typ, _ = m.delete("INBOX")
    check(typ == "NO", "DELETE INBOX refused")
    typ, _ = m.select("No/Such/Folder")
    check(typ == "NO", "SELECT of a missing folder")

    # --- UTF8=ACCEPT on a second connection (STARTTLS) ------------------------
    u = login(starttls())
    ok(u._simple_command("ENABLE", "UTF8=ACCEPT"), "ENABLE UTF8=ACCEPT")
    lines = raw_command(u, 'CREATE "Übersicht"'.encode())
    check(b" OK" in lines[-1], f"CREATE UTF-8: {lines!r}")
    data = ok(m.list('""', "&ANw-bersicht"), "LIST of a UTF-8 created folder, seen in mUTF-7")
    check(data != [None], f"Übersicht listed as mUTF-7: {data!r}")
    raw_command(u, 'DELETE "Übersicht"'.encode())
    u.logout()

    # --- APPEND with flags, date, APPENDUID; synchronising literal ------------
    date = imaplib.Time2Internaldate(time.mktime((2021, 3, 4, 5, 6, 7, 0, 0, -1)))
    typ, data = m.append("INBOX", r"(\Flagged $Label1)", date, MESSAGE)
    check(typ == "OK", f"APPEND {typ} {data!r}")
    mo = re.search(rb"APPENDUID (\d+) (\d+)", data[0])
    check(mo, f"APPENDUID in {data!r}")
    uidvalidity, uid1 = int(mo.group(1)), int(mo.group(2))
    typ, data = m.append("Nonexistent", None, None, MESSAGE)
    check(typ == "NO" and b"TRYCREATE" in data[0], f"APPEND TRYCREATE {data!r}")

    # --- SELECT with CONDSTORE -------------------------------------------------
    typ, data = m.select("INBOX")
    check(typ == "OK", "SELECT")
    exists = int(data[0])
    check(exists >= 1, "EXISTS")
    check(int(untagged(m, "UIDVALIDITY")[0]) == uidvalidity, "UIDVALIDITY")
    hms = untagged(m, "HIGHESTMODSEQ")
    check(hms and int(hms[0]) > 0, f"HIGHESTMODSEQ {hms}")
    check(b"\\*" in untagged(m, "PERMANENTFLAGS")[0], "PERMANENTFLAGS \\*")
    seq = exists  # the appended message is the last one

    # --- FETCH -----------------------------------------------------------------
    data = fetch_one(m, (str(seq), "(UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE MODSEQ)"))
    meta = data[0] if isinstance(data[0], bytes) else data[0][0]
    check(b"\\Flagged" in meta and b"$Label1" in meta, f"flags {meta!r}")
    check(b"04-Mar-2021" in meta, f"INTERNALDATE {meta!r}")
    check(b"RFC822.SIZE %d" % len(MESSAGE) in meta, f"size {meta!r}")
    check(b'"=?utf-8?q?Gr=C3=BC=C3=9Fe?= from the test"' in meta, f"ENVELOPE subject {meta!r}")
    check(b'("Alice Example" NIL "alice" "example.org")' in meta, f"ENVELOPE from {meta!r}")
    check(b'"<m1@example.org>"' in meta, f"message-id {meta!r}")
    check(b'("text" "plain" ("charset" "utf-8") NIL NIL "QUOTED-PRINTABLE"' in meta, f"BODYSTRUCTURE {meta!r}")
    check(b'"mixed" ("boundary" "BOUND")' in meta, f"multipart {meta!r}")
    check(re.search(rb"MODSEQ \(\d+\)", meta), f"MODSEQ {meta!r}")
    data = fetch_one(m, (str(seq), "(BODY.PEEK[])"))
    check(data[0][1] == MESSAGE, "BODY[] equals the appended message")
    data = fetch_one(m, (str(seq), "(RFC822.SIZE)"))
    check(b"RFC822.SIZE %d" % len(MESSAGE) in data[0], "RFC822.SIZE = len(BODY[])")
    data = fetch_one(m, (str(seq), "(BODY.PEEK[HEADER.FIELDS (SUBJECT X-CUSTOM)])"))
    check(data[0][1] == b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= from the test\r\nX-Custom: needle-in-header\r\n\r\n", f"HEADER.FIELDS {data!r}")
    data = fetch_one(m, (str(seq), "(BODY.PEEK[HEADER.FIELDS.NOT (SUBJECT X-CUSTOM DATE)])"))
    check(b"Subject" not in data[0][1] and b"From: Alice" in data[0][1], f"HEADER.FIELDS.NOT {data!r}")
    data = fetch_one(m, (str(seq), "(BODY.PEEK[1])"))
    check(data[0][1] == b"Hello Bob, the word is pineapple. K=C3=A4se.", f"BODY[1] {data!r}")
    data = fetch_one(m, (str(seq), "(BODY.PEEK[2.MIME])"))
    check(data[0][1].startswith(b"Content-Type: application/octet-stream"), f"BODY[2.MIME] {data!r}")
    data = fetch_one(m, (str(seq), "(BODY.PEEK[TEXT])"))
    check(data[0][1].startswith(b"--BOUND\r\n"), f"BODY[TEXT] {data!r}")
    data = fetch_one(m, (str(seq), "(BODY.PEEK[]<6.5>)"))
    check(data[0][1] == MESSAGE[6:11] and b"BODY[]<6>" in data[0][0], f"partial {data!r}")
    data = fetch_one(m, (str(seq), "(BINARY.PEEK[2] BINARY.SIZE[2])"))
    check(data[0][1] == bytes(range(8)), f"BINARY[2] {data!r}")
    check(b"BINARY.SIZE[2] 8" in b"".join(x if isinstance(x, bytes) else x[0] for x in data), f"BINARY.SIZE {data!r}")
    data = fetch_one(m, (str(seq), "(BINARY.PEEK[1])"))
    check(data[0][1] == "Hello Bob, the word is pineapple. Käse.".encode(), f"BINARY[1] {data!r}")
    data = fetch_one(m, (str(seq), "(RFC822.HEADER)"))
    check(data[0][1] == MESSAGE[: MESSAGE.index(b"\r\n\r\n") + 4], "RFC822.HEADER")
    data = fetch_one(m, (str(seq), "(FLAGS)"))
    check(b"\\Seen" not in data[0], f"PEEK leaves \\Seen alone {data!r}")
    data = fetch_one(m, (str(uid1), "(BODY[1])"), uid=True)
    joined = b" ".join(x if isinstance(x, bytes) else x[0] for x in data)
    check(b"UID %d" % uid1 in joined, f"UID FETCH has UID {data!r}")
    data = fetch_one(m, (str(seq), "(FLAGS)"))
    check(b"\\Seen" in data[0], f"BODY[] sets \\Seen {data!r}")
    data = fetch_one(m, (str(seq), "(RFC822)"))
    check(data[0][1] == MESSAGE, "RFC822")
    data = fetch_one(m, ("1:*", "(FLAGS)"))
    check(len([d for d in data if d]) == exists, "FETCH 1:*")

    # --- STORE, CONDSTORE ------------------------------------------------------
    data = fetch_one(m, (str(seq), "(MODSEQ)"))
    modseq = int(re.search(rb"MODSEQ \((\d+)\)", data[0]).group(1))
    typ, data = m.store(str(seq), "+FLAGS", r"(\Answered)")
    check(typ == "OK" and b"\\Answered" in data[0], f"STORE +FLAGS {data!r}")
    new_modseq = int(re.search(rb"MODSEQ \((\d+)\)", data[0]).group(1))
    check(new_modseq > modseq, "STORE bumps MODSEQ")
    data = fetch_one(m, ("1:*", "(FLAGS) (CHANGEDSINCE %d)" % modseq))
    check(len([d for d in data if d]) == 1 and b"MODSEQ" in data[0], f"CHANGEDSINCE {data!r}")
    typ, data = m.store(str(seq), "(UNCHANGEDSINCE %d) +FLAGS" % modseq, r"(\Draft)")
    check(typ == "OK" and b"MODIFIED" in data[-1] if data and data[-1] else False, f"UNCHANGEDSINCE refused: {typ} {data!r}")
    typ, data = m.store(str(seq), "-FLAGS.SILENT", r"(\Answered)")
    check(typ == "OK", "STORE .SILENT")
    data = fetch_one(m, (str(seq), "(FLAGS)"))
    check(b"\\Answered" not in data[0] and b"\\Draft" not in data[0], f"flags now {data!r}")
    typ, data = m.store(str(seq), "FLAGS", r"(\Seen \Flagged $Label1 custom)")
    check(typ == "OK" and b"custom" in data[0], f"STORE FLAGS {data!r}")

    # --- SEARCH ----------------------------------------------------------------
    def search(*criteria, uid=False, charset=None):
        if uid:
            typ, data = m.uid("SEARCH", *criteria) if charset is None else m.uid("SEARCH", "CHARSET", charset, *criteria)
        else:
            typ, data = m.search(charset, *criteria)
        check(typ == "OK", f"SEARCH {criteria}: {typ} {data!r}")
        return [int(x) for x in data[0].split() if x.isdigit()]

    check(seq in search("SUBJECT", "test"), "SUBJECT finds")
    check(seq not in search("SUBJECT", "nothere"), "SUBJECT must not find")
    check(seq in search("FROM", "alice@example.org"), "FROM")
    check(seq in search("TO", "carol"), "TO")
    check(seq not in search("CC", "carol"), "CC")
    check(seq in search("HEADER", "X-Custom", "needle"), "HEADER")
    check(seq in search("BODY", "pineapple"), "BODY")
    check(seq not in search("BODY", "needle-in-header"), "BODY is not the header")
    check(seq in search("TEXT", "needle-in-header"), "TEXT covers the header")
    check(seq in search("TEXT", "PINEAPPLE"), "TEXT case-insensitive")
    check(seq in search("FLAGGED", "KEYWORD", "custom"), "FLAGGED KEYWORD")
    check(seq not in search("UNFLAGGED"), "UNFLAGGED")
    check(seq in search("OR", "SUBJECT", "nothere", "FROM", "alice"), "OR")
    check(seq not in search("NOT", "FROM", "alice"), "NOT")
    check(seq in search("SINCE", "1-Mar-2021", "BEFORE", "10-Mar-2021"), "SINCE/BEFORE")
    check(seq in search("ON", "4-Mar-2021"), "ON")
    check(seq in search("SENTON", "7-Feb-2022"), "SENTON")
    check(seq not in search("SENTSINCE", "8-Feb-2022"), "SENTSINCE")
    check(seq in search("LARGER", str(len(MESSAGE) - 1), "SMALLER", str(len(MESSAGE) + 1)), "LARGER/SMALLER")
    check(seq in search("%d" % seq), "sequence set")
    check(search("UID", str(uid1), uid=True) == [uid1], "UID SEARCH")
    check(seq in search("MODSEQ", str(modseq)), "MODSEQ")
    check(seq in search("SUBJECT", "from", charset="US-ASCII"), "charset US-ASCII")
    m.literal = "Käse".encode()
    typ, data = m.search("UTF-8", "BODY")
    check(typ == "OK" and str(seq).encode() in data[0].split(), f"SEARCH CHARSET UTF-8 with a literal: {data!r}")
    m.literal = "Grüße".encode()
    typ, data = m.search("UTF-8", "SUBJECT")
    check(typ == "OK" and str(seq).encode() in data[0].split(), f"SEARCH decoded subject: {data!r}")
    typ, data = m.search("KOI8-R", "ALL")
    check(typ == "NO", f"unknown charset: {typ} {data!r}")

    # --- two sessions: flags, new mail and expunges seen by the other ---------
    b = login(imaps())
    ok(b.select("INBOX"), "B SELECT")
    ok(m.store(str(seq), "+FLAGS", "(shared-flag)"), "A STORE")
    ok(b.noop(), "B NOOP")
    fetches = untagged(b, "FETCH")
    check(any(b"shared-flag" in f for f in fetches), f"B sees A's flag: {fetches!r}")
    typ, data = m.append("INBOX", r"(\Deleted)", None, b"Subject: second\r\n\r\nsecond body\r\n")
    uid2 = int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1))
    ok(b.noop(), "B NOOP 2")
    check(untagged(b, "EXISTS") == [str(exists + 1).encode()], "B sees EXISTS")
    ok(m.noop(), "A NOOP")
    typ, data = m.expunge()
    check(typ == "OK" and data == [str(exists + 1).encode()], f"EXPUNGE responses {data!r}")
    ok(b.noop(), "B NOOP 3")
    check(untagged(b, "EXPUNGE") == [str(exists + 1).encode()], "B sees EXPUNGE")
    b.logout()

    # --- COPY / MOVE with COPYUID, UID EXPUNGE ---------------------------------
    typ, data = m.copy(str(seq), "Archive")
    check(typ == "OK" and b"COPYUID" in data[0], f"COPY {data!r}")
    mo = re.search(rb"COPYUID \d+ (\d+) (\d+)", data[0])
    check(int(mo.group(1)) == uid1, "COPYUID source")
    typ, data = m.copy(str(seq), "NoSuchFolder")
    check(typ == "NO" and b"TRYCREATE" in data[0], "COPY TRYCREATE")
    typ, data = m.status("Archive", "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ)")
    check(typ == "OK" and b"MESSAGES 1" in data[0] and b"HIGHESTMODSEQ" in data[0], f"STATUS {data!r}")
    ok(m.select("Archive"), "SELECT Archive")
    data = fetch_one(m, ("1", "(BODY.PEEK[])"))
    check(data[0][1] == MESSAGE, "copied message intact")
    typ, data = m.uid("MOVE", "1:*", "Trash")
    check(typ == "OK", f"UID MOVE {typ}")
    check(any(b"COPYUID" in x for x in untagged(m, "OK")), "MOVE's COPYUID")
    check(untagged(m, "EXPUNGE") == [b"1"], "MOVE's EXPUNGE")
    ok(m.select("Trash"), "SELECT Trash")
    ok(m.store("1", "+FLAGS", r"(\Deleted)"), "flag in Trash")
    typ, data = m.uid("EXPUNGE", "1:*")
    check(typ == "OK", f"UID EXPUNGE {typ} {data!r}")
    check(untagged(m, "EXPUNGE") == [b"1"] or data == [b"1"], f"UID EXPUNGE response {data!r}")
    ok(m.unselect(), "UNSELECT")

    # --- EXAMINE is read-only; CLOSE expunges ----------------------------------
    typ, data = m.select("INBOX", readonly=True)
    check(typ == "OK", "EXAMINE")
    typ, data = m.store("1", "+FLAGS", r"(\Deleted)")
    check(typ == "NO", f"STORE in EXAMINE refused: {typ}")
    ok(m.select("INBOX"), "SELECT again")
    ok(m.check(), "CHECK")
    ok(m.close(), "CLOSE")
    typ, data = m.fetch("1", "(FLAGS)")
    check(typ == "BAD", "FETCH after CLOSE")

    # --- AUTHENTICATE PLAIN, with and without SASL-IR ---------------------------
    a = imaps()
    plain = ("\0" + CFG["user"] + "\0" + CFG["password"]).encode()
    ok(a.authenticate("PLAIN", lambda _: plain), "AUTHENTICATE PLAIN")
    a.logout()
    a = imaps()
    import base64
    lines = raw_command(a, b"AUTHENTICATE PLAIN " + base64.b64encode(plain))
    check(b" OK" in lines[-1], f"SASL-IR {lines!r}")
    lines = raw_command(a, b"LOGOUT")
    check(lines[0].startswith(b"* BYE"), "LOGOUT BYE")
    a = imaps()
    bad = base64.b64encode(b"\0" + CFG["user"].encode() + b"\0wrong-password")
    lines = raw_command(a, b"AUTHENTICATE PLAIN " + bad)
    check(b" NO" in lines[-1], f"wrong password refused {lines!r}")

    # --- literals: synchronising and non-synchronising --------------------------
    a = imaps()
    user, pw = CFG["user"].encode(), CFG["password"].encode()
    tag = a._new_tag()
    a.send(tag + b" LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\n" % (len(user), user, len(pw), pw))
    while True:
        l = a.readline()
        if l.startswith(tag):
            check(b" OK" in l, f"LOGIN with LITERAL+ {l!r}")
            break
    msg = b"Subject: nonsync\r\n\r\nbody\r\n"
    lines = raw_command(a, b"APPEND Drafts (\\Draft) {%d+}\r\n%s" % (len(msg), msg))
    check(b"APPENDUID" in lines[-1], f"APPEND with LITERAL+ {lines!r}")
    a.logout()
    m.logout()
    print("ALL OK")


def idle():
    """Selects INBOX, enters IDLE, prints IDLING, then prints the time the
    first EXISTS arrived, and leaves."""
    m = login(imaps())
    typ, data = m.select("INBOX")
    before = int(data[0])
    tag = m._new_tag()
    m.send(tag + b" IDLE\r\n")
    l = m.readline()
    check(l.startswith(b"+"), f"IDLE continuation {l!r}")
    print("IDLING", flush=True)
    m.sock.settimeout(30)
    while True:
        l = m.readline()
        mo = re.match(rb"\* (\d+) EXISTS", l)
        if mo and int(mo.group(1)) > before:
            print("EXISTS %.6f" % time.time(), flush=True)
            break
    m.send(b"DONE\r\n")
    while True:
        l = m.readline()
        if l.startswith(tag):
            check(b" OK" in l, f"IDLE ends OK {l!r}")
            break
    # The delivered message as the app sees it.
    typ, data = m.fetch(str(before + 1), "(BODY.PEEK[] RFC822.SIZE)")
    body = data[0][1]
    check(b"RFC822.SIZE %d" % len(body) in data[0][0], f"RFC822.SIZE matches {data[0][0]!r}")
    sys.stdout.buffer.write(b"BODY " + body.hex().encode() + b"\n")
    sys.stdout.flush()
    m.logout()


def body():
    """Prints BODY[] of the last INBOX message (hex), over plaintext on loopback."""
    host, port = hostport("imap")
    m = imaplib.IMAP4(host, port)
    check("LOGINDISABLED" not in m.capabilities, "loopback may log in before TLS")
    login(m)
    typ, data = m.select("INBOX")
    n = int(data[0])
    typ, data = m.fetch(str(n), "(BODY.PEEK[])")
    sys.stdout.write("BODY " + data[0][1].hex() + "\n")
    m.logout()


def bad_input():
    """Garbage, unknown commands, states, huge literals and endless lines get
    BAD/NO; a second client keeps being served throughout."""
    host, port = hostport("imaps")
    other = login(imaps())
    ok(other.select("INBOX"), "other SELECT")

    def conn():
        s = socket.create_connection((host, port))
        s = tls_context().wrap_socket(s, server_hostname=host)
        f = s.makefile("rb")
        greeting = f.readline()
        check(greeting.startswith(b"* OK"), f"greeting {greeting!r}")
        return s, f

    def until_tag(f, tag):
        lines = []
        while True:
            l = f.readline()
            if not l:
                return lines
            lines.append(l)
            if l.startswith(tag + b" ") or l.startswith(b"* BAD") and tag == b"*":
                return lines

    s, f = conn()
    s.sendall(b"\x00\xff\xfe garbage \x01\r\n")
    l = f.readline()
    check(l.startswith(b"* BAD") or b" BAD" in l, f"garbage {l!r}")
    s.sendall(b"a1 FROBNICATE now\r\n")
    check(b"a1 BAD" in until_tag(f, b"a1")[-1], "unknown command")
    s.sendall(b"a2 FETCH 1 FLAGS\r\n")
    check(b"a2 BAD" in until_tag(f, b"a2")[-1], "FETCH before login")
    s.sendall(b"a3 LOGIN " + CFG["user"].encode() + b" " + CFG["password"].encode() + b"\r\n")
    check(b"a3 OK" in until_tag(f, b"a3")[-1], "LOGIN")
    s.sendall(b"a4 FETCH 1 FLAGS\r\n")
    check(b"a4 BAD" in until_tag(f, b"a4")[-1], "FETCH before SELECT")
    s.sendall(b"a5 LOGIN x y\r\n")
    check(b"a5 BAD" in until_tag(f, b"a5")[-1], "LOGIN twice")
    s.sendall(b"a6 APPEND INBOX {999999999}\r\n")
    l = until_tag(f, b"a6")[-1]
    check(b"a6 NO" in l or b"a6 BAD" in l, f"huge literal refused {l!r}")
    s.sendall(b"a7 NOOP\r\n")
    check(b"a7 OK" in until_tag(f, b"a7")[-1], "still serving after a refused literal")
    ok(other.noop(), "other client served")
    s.sendall(b"a8 APPEND INBOX {999999999+}\r\nxxxxxxxx")
    lines = until_tag(f, b"a8")
    check(lines and (b"a8 BAD" in lines[-1]), f"huge non-sync literal: {lines!r}")
    rest = f.read()
    check(rest.startswith(b"* BYE") or rest == b"", f"closed after it: {rest[:100]!r}")
    s.close()
    # A line with no end, past the cap.
    s, f = conn()
    try:
        s.sendall(b"a1 NOOP " + b"x" * (200 * 1024))
    except OSError:
        pass
    l = f.readline()
    check(l.startswith(b"* BAD") or l.startswith(b"* BYE"), f"endless line {l!r}")
    s.close()
    ok(other.noop(), "other client still served")
    other.logout()
    print("ALL OK")


{"main": main, "idle": idle, "body": body, "bad": bad_input}[MODE]()
