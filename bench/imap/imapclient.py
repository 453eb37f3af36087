"""A small IMAP client for timing: one socket, a byte buffer, literals read by
length. It parses no more than the benchmark needs (tagged status, untagged
responses with their literals), so the client's own CPU stays small next to the
server's. Python standard library only.
"""

import socket
import ssl
import time


class ImapError(Exception):
    pass


class Imap:
    def __init__(self, host, port, timeout=120):
        self.sock = socket.create_connection((host, port), timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pos = 0
        self.n = 0
        greeting, _ = self.response()
        if not greeting.startswith(b"* OK") and not greeting.startswith(b"* PREAUTH"):
            raise ImapError(f"greeting: {greeting[:200]!r}")
        self.greeting = greeting

    # ---------------------------------------------------------------- reading

    def _fill(self):
        if self.pos > 1 << 20:
            del self.buf[:self.pos]
            self.pos = 0
        chunk = self.sock.recv(1 << 18)
        if not chunk:
            raise ImapError("connection closed by the server")
        self.buf += chunk

    def response(self):
        """One response: (its text with each literal replaced by {N}, [literals])."""
        parts, lits = [], []
        while True:
            e = self.buf.find(b"\r\n", self.pos)
            while e < 0:
                self._fill()
                e = self.buf.find(b"\r\n", self.pos)
            line = bytes(self.buf[self.pos:e])
            self.pos = e + 2
            parts.append(line)
            if line.endswith(b"}"):
                o = line.rfind(b"{")
                if o >= 0 and line[o + 1:-1].isdigit():
                    n = int(line[o + 1:-1])
                    while len(self.buf) - self.pos < n:
                        self._fill()
                    lits.append(bytes(self.buf[self.pos:self.pos + n]))
                    self.pos += n
                    continue
            return b"".join(parts), lits

    # ---------------------------------------------------------------- commands

    def send(self, line):
        """Sends a command; returns its tag."""
        self.n += 1
        tag = b"b%d" % self.n
        self.sock.sendall(tag + b" " + line + b"\r\n")
        return tag

    def command(self, line, on_untagged=None):
        """Runs a command to its tagged reply. Untagged responses go to
        on_untagged(text, literals) when given, else are collected and returned."""
        if isinstance(line, str):
            line = line.encode()
        tag = self.send(line)
        out = []
        prefix = tag + b" "
        while True:
            text, lits = self.response()
            if text.startswith(prefix):
                status = text[len(prefix):]
                if not status.startswith(b"OK"):
                    raise ImapError(f"{line[:60]!r}: {status[:300]!r}")
                return out
            if text.startswith(b"+"):
                raise ImapError(f"{line[:60]!r}: unexpected continuation {text[:100]!r}")
            if on_untagged is not None:
                on_untagged(text, lits)
            else:
                out.append((text, lits))

    def capabilities(self):
        caps = set()
        for text, _ in self.command("CAPABILITY"):
            if text.upper().startswith(b"* CAPABILITY "):
                caps |= set(text[13:].upper().split())
        return caps

    def starttls(self, cafile=None):
        self.command("STARTTLS")
        ctx = ssl.create_default_context(cafile=cafile) if cafile else ssl._create_unverified_context()
        ctx.check_hostname = False
        if self.pos != len(self.buf):
            raise ImapError("data after STARTTLS's reply (RFC 3501 section 6.2.1 forbids it)")
        self.sock = ctx.wrap_socket(self.sock)

    def login(self, user, password, cafile=None):
        caps = self.capabilities()
        if b"LOGINDISABLED" in caps and b"STARTTLS" in caps:
            self.starttls(cafile)
        self.command(b"LOGIN " + quote(user) + b" " + quote(password))

    def select(self, mailbox="INBOX"):
        """SELECT; returns (EXISTS, seconds)."""
        t = time.perf_counter()
        res = self.command(b"SELECT " + quote(mailbox))
        dt = time.perf_counter() - t
        exists = None
        for text, _ in res:
            f = text.split()
            if len(f) >= 3 and f[2].upper() == b"EXISTS":
                exists = int(f[1])
        return exists, dt

    def status_messages(self, mailbox="INBOX"):
        for text, _ in self.command(b"STATUS " + quote(mailbox) + b" (MESSAGES)"):
            up = text.upper()
            k = up.find(b"MESSAGES ")
            if up.startswith(b"* STATUS") and k >= 0:
                return int(up[k + 9:].split(b")")[0].split()[0])
        raise ImapError("no STATUS response")

    def logout(self):
        try:
            self.command("LOGOUT")
        except (ImapError, OSError):
            pass
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def quote(s):
    if isinstance(s, str):
        s = s.encode()
    return b'"' + s.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def fetch_items(text):
    """The part of '* N FETCH (...)' after 'FETCH ', upper-cased, or None."""
    if not text.startswith(b"* "):
        return None
    sp = text.find(b" ", 2)
    if sp < 0 or text[sp + 1:sp + 7].upper() != b"FETCH ":
        return None
    return text[sp + 7:]


def uid_of(items):
    up = items.upper()
    k = up.find(b"UID ")
    if k < 0:
        return None
    e = k + 4
    while e < len(up) and up[e:e + 1].isdigit():
        e += 1
    return int(up[k + 4:e])
