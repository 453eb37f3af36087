"""Drives a sandbox node's POP3S port with Python's poplib: CAPA, AUTH PLAIN,
USER/PASS, STAT, LIST, UIDL, TOP, RETR, DELE, RSET, NOOP, QUIT, the maildrop
lock, a dropped session, and wrong passwords until the login is throttled.

Usage: commands.py SANDBOX_JSON EXPECTED_DIR
EXPECTED_DIR holds each INBOX message as the node renders it (CRLF), in files
named by message number. Prints "deleted UIDL" for the message removed at the
end, and "ALL OK"; exits non-zero at the first failed check.
"""

import base64
import json
import os
import poplib
import socket
import ssl
import sys
import time

manifest = json.load(open(sys.argv[1]))
expected_dir = sys.argv[2]
node = manifest["nodes"][0]
host, port = node["pop3s"].rsplit(":", 1)
port = int(port)
context = ssl.create_default_context(cafile=manifest["ca_cert"])


def check(cond, what):
    if not cond:
        print("FAILED:", what, flush=True)
        sys.exit(1)


class Pop3sFrom(poplib.POP3_SSL):
    """POP3S from a chosen loopback address (logins are throttled per address)."""

    def __init__(self, source):
        self.source = source
        super().__init__(host, port, context=context, timeout=30)

    def _create_socket(self, timeout):
        sock = socket.create_connection(
            (self.host, self.port), timeout, source_address=(self.source, 0)
        )
        return self.context.wrap_socket(sock, server_hostname=self.host)


def connect(source="127.0.0.1"):
    c = Pop3sFrom(source)
    check(c.getwelcome().startswith(b"+OK"), c.getwelcome())
    return c


def expect_error(fn, prefix):
    try:
        fn()
    except poplib.error_proto as e:
        msg = e.args[0]
        check(msg.startswith(prefix), f"{msg!r} does not start with {prefix!r}")
        return msg
    check(False, f"expected an error {prefix!r}")


def login(c, password=None):
    c.user(node["address"])
    return c.pass_(node["password"] if password is None else password)


def login_retrying(source="127.0.0.1"):
    """Logs in; a session dropped just before may hold the lock a moment longer."""
    for _ in range(100):
        c = connect(source)
        try:
            login(c)
            return c
        except poplib.error_proto as e:
            check(b"[IN-USE]" in e.args[0], e.args[0])
            c.quit()
            time.sleep(0.05)
    check(False, "the maildrop stayed locked")


def auth_plain(c, authzid, user, password):
    response = base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()
    return c._shortcmd("AUTH PLAIN " + response)


expected = [
    open(os.path.join(expected_dir, name), "rb").read()
    for name in sorted(os.listdir(expected_dir), key=int)
]
n = len(expected)
check(n >= 2, "at least two messages are needed")

# CAPA over implicit TLS: login offered, no STLS.
c = connect()
caps = c.capa()
for cap in ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "USER"]:
    check(cap in caps, f"CAPA lacks {cap}: {caps}")
check(caps.get("SASL") == ["PLAIN"], caps)
check("STLS" not in caps, "STLS offered on POP3S")

# AUTH PLAIN with an initial response (RFC 5034).
resp = auth_plain(c, "", node["address"], node["password"])
check(resp.startswith(b"+OK maildrop has %d messages" % n), resp)
check("USER" not in c.capa(), "USER offered after login")

count, size = c.stat()
check(count == n, f"STAT says {count} messages, expected {n}")
resp, listing, _ = c.list()
sizes = {int(a): int(b) for a, b in (line.split() for line in listing)}
check(sorted(sizes) == list(range(1, n + 1)), listing)
check(sum(sizes.values()) == size, "STAT size is not the sum of LIST sizes")
check(c.list(2) == b"+OK 2 %d" % sizes[2], c.list(2))

resp, uidls, _ = c.uidl()
ids = [line.split()[1] for line in uidls]
check(len(set(ids)) == n, f"UIDLs are not unique: {ids}")
for i, uid in enumerate(ids, 1):
    check(1 <= len(uid) <= 70 and all(0x21 <= b <= 0x7E for b in uid), uid)
    check(c.uidl(i) == b"+OK %d %s" % (i, uid), c.uidl(i))

for i, want in enumerate(expected, 1):
    resp, lines, octets = c.retr(i)
    got = b"\r\n".join(lines) + b"\r\n"
    check(got == want, f"RETR {i} differs from the node's message:\n{got!r}\n{want!r}")
    # The announced size is exactly what came, before dot-stuffing.
    check(octets == len(want) == sizes[i], f"message {i}: {octets} octets, LIST {sizes[i]}")
    check(resp == b"+OK %d octets" % sizes[i], resp)
    header, body = want.split(b"\r\n\r\n", 1)
    header_lines = header.split(b"\r\n")
    resp, top0, _ = c.top(i, 0)
    check(top0 == header_lines + [b""], f"TOP {i} 0: {top0}")
    resp, top3, _ = c.top(i, 3)
    check(top3 == header_lines + [b""] + body.split(b"\r\n")[:3], f"TOP {i} 3: {top3}")

check(c.noop().startswith(b"+OK"), "NOOP")
expect_error(lambda: c.retr(n + 1), b"-ERR no such message")
expect_error(lambda: c._shortcmd("RETR abc"), b"-ERR invalid message number")
expect_error(lambda: c._shortcmd("FROB"), b"-ERR unknown command")

# The maildrop is locked while this session holds it (RFC 1939 section 8).
other = connect()
expect_error(lambda: login(other), b"-ERR [IN-USE]")
other.quit()

# DELE hides a message until RSET.
check(c.dele(1).startswith(b"+OK"), "DELE 1")
check(c.stat() == (n - 1, size - sizes[1]), c.stat())
expect_error(lambda: c.retr(1), b"-ERR message 1 already deleted")
check(c.rset().startswith(b"+OK"), "RSET")
check(c.stat() == (n, size), "RSET did not undelete")

# A session that drops without QUIT deletes nothing.
c.dele(1)
c.file.close()
c.sock.close()
c = login_retrying()
check(c.stat() == (n, size), "a dropped session deleted something")
resp, uidls2, _ = c.uidl()
check([line.split()[1] for line in uidls2] == ids, "UIDLs changed between sessions")

# DELE and QUIT: removed for good.
c.dele(1)
resp = c.quit()
check(b"(%d messages left)" % (n - 1) in resp, resp)
print("deleted", ids[0].decode(), flush=True)
c = login_retrying()
check(c.stat()[0] == n - 1, "QUIT did not delete")
resp, uidls3, _ = c.uidl()
check([line.split()[1] for line in uidls3] == ids[1:], "UIDLs after a deletion")
c.quit()

# Wrong passwords from one address: [AUTH], then throttled ([LOGIN-DELAY]) even
# with the right one; another address still logs in.
bad = connect("127.0.0.2")
expect_error(lambda: login(bad, "wrong password"), b"-ERR [AUTH]")
bad.quit()
bad = connect("127.0.0.2")
expect_error(lambda: auth_plain(bad, "", node["address"], "wrong"), b"-ERR [AUTH]")
expect_error(lambda: auth_plain(bad, "bob", node["address"], node["password"]), b"-ERR [AUTH]")
bad.quit()
throttled = False
bad = connect("127.0.0.2")
for _ in range(10):
    msg = expect_error(lambda: login(bad, "still wrong"), b"-ERR [")
    if msg.startswith(b"-ERR [LOGIN-DELAY]"):
        throttled = True
        break
check(throttled, "wrong passwords were never throttled")
expect_error(lambda: login(bad), b"-ERR [LOGIN-DELAY]")
bad.quit()
c = login_retrying("127.0.0.1")
c.quit()
print("ALL OK", flush=True)
