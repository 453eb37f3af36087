# What the server holds, and changes made on the server, with Python's imaplib
# (standard library only): the tests' independent view of a node's mailbox.
#
# Usage: imap_ops.py CONFIG_JSON OP ARGS...
# CONFIG_JSON: {"imaps": "127.0.0.1:P", "sni": NAME, "ca": PATH, "user": ADDRESS,
#               "password": PW}; the certificate is verified for NAME against
#               the CA alone.
# OPs (each prints JSON):
#   list FOLDER                 [{"uid": N, "flags": [...], "message": TEXT}, ...]
#   folders                     ["INBOX", ...]
#   store FOLDER UID ITEM FLAGS UID STORE (ITEM e.g. +FLAGS, FLAGS e.g. "(\Flagged)")
#   delete FOLDER UID           \Deleted, then UID EXPUNGE of that UID
#   move FOLDER UID DEST        UID MOVE
import imaplib
import json
import re
import socket
import ssl
import sys

CFG = json.loads(sys.argv[1])
OP = sys.argv[2]
ARGS = sys.argv[3:]


class IMAP4_SSL_At(imaplib.IMAP4_SSL):
    """IMAPS to an IP literal, with the TLS server name given apart."""

    def __init__(self, addr, server_hostname, ssl_context):
        host, port = addr.rsplit(":", 1)
        self._ip = host
        self._sni = server_hostname
        super().__init__(server_hostname, int(port), ssl_context=ssl_context)

    def _create_socket(self, timeout=None):
        sock = socket.create_connection((self._ip, self.port), timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname=self._sni)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def ok(resp, what):
    typ, data = resp
    check(typ == "OK", f"{what}: expected OK, got {typ} {data!r}")
    return data


def connect():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=CFG["ca"])
    m = IMAP4_SSL_At(CFG["imaps"], CFG["sni"], ctx)
    ok(m.login(CFG["user"], CFG["password"]), "LOGIN")
    return m


def select(m, folder, readonly=False):
    ok(m.select(folder, readonly), f"SELECT {folder}")


def list_folder(m, folder):
    select(m, folder, readonly=True)
    data = ok(m.uid("FETCH", "1:*", "(UID FLAGS)"), "UID FETCH FLAGS")
    out = []
    for line in data:
        if line is None:
            continue
        if isinstance(line, tuple):
            line = line[0]
        uid = re.search(rb"UID (\d+)", line)
        flags = re.search(rb"FLAGS \(([^)]*)\)", line)
        check(uid and flags, f"UID and FLAGS in {line!r}")
        out.append({"uid": int(uid.group(1)), "flags": flags.group(1).decode().split()})
    for msg in out:
        data = ok(m.uid("FETCH", str(msg["uid"]), "(BODY.PEEK[])"), "UID FETCH BODY.PEEK[]")
        parts = [d for d in data if isinstance(d, tuple)]
        check(len(parts) == 1, f"one BODY[] for UID {msg['uid']}: {data!r}")
        msg["message"] = parts[0][1].decode("utf-8", "replace")
    m.close()
    return out


def main():
    m = connect()
    if OP == "list":
        result = list_folder(m, ARGS[0])
    elif OP == "folders":
        data = ok(m.list(), "LIST")
        result = []
        for line in data:
            mo = re.match(rb'\((.*?)\) (NIL|"[^"]*") (.*)$', line)
            check(mo, f"LIST line {line!r}")
            name = mo.group(3).decode()
            result.append(name[1:-1] if name.startswith('"') else name)
    elif OP == "store":
        folder, uid, item, flags = ARGS
        select(m, folder)
        ok(m.uid("STORE", uid, item, flags), "UID STORE")
        result = "OK"
    elif OP == "delete":
        folder, uid = ARGS
        select(m, folder)
        ok(m.uid("STORE", uid, "+FLAGS.SILENT", r"(\Deleted)"), "UID STORE \\Deleted")
        ok(m.uid("EXPUNGE", uid), "UID EXPUNGE")
        result = "OK"
    elif OP == "move":
        folder, uid, dest = ARGS
        select(m, folder)
        ok(m.uid("MOVE", uid, dest), "UID MOVE")
        result = "OK"
    else:
        raise SystemExit(f"unknown op {OP}")
    m.logout()
    print(json.dumps(result))


main()
