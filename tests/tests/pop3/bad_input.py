"""Bad input on a sandbox node's POP3 port, while another client is served over
POP3S at the same time: garbage, overlong lines and unknown commands get -ERR
and the session goes on until too many errors close it; plaintext pipelined
after STLS is not obeyed; connections from one address are capped.

Usage: bad_input.py SANDBOX_JSON. Prints "ALL OK"; exits non-zero at the first
failed check.
"""

import json
import poplib
import socket
import ssl
import sys
import time

manifest = json.load(open(sys.argv[1]))
node = manifest["nodes"][0]
plain_host, plain_port = node["pop3"].rsplit(":", 1)
plain = (plain_host, int(plain_port))
tls_host, tls_port = node["pop3s"].rsplit(":", 1)
context = ssl.create_default_context(cafile=manifest["ca_cert"])


def check(cond, what):
    if not cond:
        print("FAILED:", what, flush=True)
        sys.exit(1)


class Raw:
    """A line-oriented raw client."""

    def __init__(self, source="127.0.0.1"):
        self.sock = socket.create_connection(plain, 30, source_address=(source, 0))
        self.buf = b""

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def send(self, data):
        self.sock.sendall(data)

    def cmd(self, data):
        self.send(data)
        return self.line()

    def closed(self):
        """True when the server has closed the connection."""
        try:
            return self.line() is None
        except ConnectionResetError:
            return True


# Client A: logged in over POP3S for the whole run.
a = poplib.POP3_SSL(tls_host, int(tls_port), context=context, timeout=30)
a.user(node["address"])
a.pass_(node["password"])
count, size = a.stat()
check(count >= 1, "client A sees no message")

# Client B: bad input on the plain port.
b = Raw()
check(b.line().startswith(b"+OK"), "greeting")
check(b.cmd(b"\x00\xff\xfe garbage\r\n").startswith(b"-ERR"), "binary garbage")
check(b.cmd(b"X" * 5000 + b"\r\n").startswith(b"-ERR line too long"), "overlong line")
check(b.cmd(b"FROB nicate\r\n") == b"-ERR unknown command", "unknown command")
check(b.cmd(b"RETR 1\r\n") == b"-ERR log in first", "RETR before login")

# A is served meanwhile.
check(a.noop().startswith(b"+OK"), "A's NOOP")
resp, lines, octets = a.retr(1)
check(resp.startswith(b"+OK") and octets > 0, "A's RETR")

# B's session still works after its errors.
check(b.cmd(b"CAPA\r\n").startswith(b"+OK"), "CAPA after errors")
while b.line() != b".":
    pass
# A megabyte with no line end: one -ERR, then the session reads lines again.
b.send(b"Y" * (1 << 20))
check(b.line().startswith(b"-ERR line too long"), "a megabyte line")
check(b.cmd(b"\r\nNOOP\r\n") == b"-ERR log in first", "NOOP after the long line")
# More errors: the session is closed.
b.send(b"BAD\r\n" * 20)
lines = []
while True:
    line = b.line()
    if line is None:
        break
    lines.append(line)
check(lines and lines[-1] == b"-ERR too many errors; closing the connection", lines)
check(all(line.startswith(b"-ERR") for line in lines), lines)

# Plaintext pipelined after STLS is dropped, not obeyed.
c = Raw()
c.line()
c.send(b"STLS\r\nUSER " + node["address"].encode() + b"\r\n")
check(c.line() == b"+OK begin TLS negotiation", "STLS")
try:
    tls = context.wrap_socket(c.sock, server_hostname=plain_host)
    tls.sendall(b"PASS " + node["password"].encode() + b"\r\n")
    reply = tls.recv(1000)
    check(reply == b"-ERR send USER first\r\n", f"injected USER obeyed: {reply!r}")
    tls.close()
except ssl.SSLError:
    pass  # the injected bytes broke the handshake: not obeyed either

check(a.stat() == (count, size), "A's STAT at the end")
a.quit()

# At most 10 connections at once from one address.
conns = []
for _ in range(10):
    r = Raw("127.0.0.3")
    check(r.line().startswith(b"+OK"), "greeting under the cap")
    conns.append(r)
over = Raw("127.0.0.3")
line = over.line()
check(line is not None and line.startswith(b"-ERR [SYS/TEMP] too many connections"), line)
check(over.closed(), "the connection over the cap stays open")
other = Raw("127.0.0.4")
check(other.line().startswith(b"+OK"), "another address is capped too")
for r in conns:
    r.cmd(b"QUIT\r\n")
    r.sock.close()
for _ in range(100):
    r = Raw("127.0.0.3")
    line = r.line()
    if line and line.startswith(b"+OK"):
        break
    time.sleep(0.05)
check(line and line.startswith(b"+OK"), "the cap is not released")
print("ALL OK", flush=True)
