# A mail app away from home, with Python's standard library only: it learns
# where the mailbox is from the relay's auto-configuration, and reaches the
# node through the relay's SNI passthrough, verifying the node's certificate
# against the sandbox CA alone.
#
# Usage: remote_access.py MODE CONFIG_JSON; each mode prints JSON (idle prints lines).
#   autoconfig   {"http": URL, "address": A}  -> the Thunderbird XML's IMAP server
#   mobileconfig {"http": URL, "address": A}  -> the Apple profile's mail payload
#   fetch  {"ip", "port", "host", "ca", "user", "password", "token"}
#          -> the certificate's names and the INBOX message holding TOKEN
#   login  {"ip", "port", "host", "ca", "user", "password"}
#          -> whether LOGIN succeeded, and the certificate's names
#   idle   {"ip", "port", "host", "ca", "user", "password"}
#          -> "IDLING", then "EXISTS <unix time>" when a new message is
#             announced, then "MESSAGE <hex of its BODY[]>"
import http.client
import imaplib
import json
import plistlib
import re
import socket
import ssl
import sys
import time
import urllib.parse
import xml.etree.ElementTree as ET

MODE = sys.argv[1]
CFG = json.loads(sys.argv[2])


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def http_get(path, host):
    """GET from the relay's web server with the given Host header (the
    name a mail app would ask for), connecting to its IP literal."""
    url = urllib.parse.urlsplit(CFG["http"])
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.request("GET", path, headers={"Host": host})
    resp = conn.getresponse()
    body = resp.read()
    check(resp.status == 200, f"GET {path} (Host {host}): {resp.status} {body[:300]!r}")
    return resp, body


def autoconfig():
    address = CFG["address"]
    domain = address.split("@", 1)[1]
    query = urllib.parse.urlencode({"emailaddress": address})
    resp, body = http_get(f"/mail/config-v1.1.xml?{query}", f"autoconfig.{domain}")
    check("xml" in resp.getheader("Content-Type", ""), "autoconfig is XML")
    root = ET.fromstring(body)
    check(root.tag == "clientConfig", f"root element {root.tag}")
    provider = root.find("emailProvider")
    check(provider is not None, "an emailProvider")
    check(domain in [d.text for d in provider.findall("domain")], "the provider names the domain")
    imap = [s for s in provider.findall("incomingServer") if s.get("type") == "imap"]
    check(len(imap) == 1, f"one IMAP incomingServer in {body!r}")
    return {k: imap[0].findtext(k) for k in ("hostname", "port", "socketType", "username", "authentication")}


def mobileconfig():
    address = CFG["address"]
    query = urllib.parse.urlencode({"emailaddress": address})
    resp, body = http_get(f"/apple/mail.mobileconfig?{query}", address.split("@", 1)[1])
    profile = plistlib.loads(body)
    check(profile.get("PayloadType") == "Configuration", f"a configuration profile: {profile!r}")
    payloads = [p for p in profile["PayloadContent"] if p.get("PayloadType") == "com.apple.mail.managed"]
    check(len(payloads) == 1, f"one mail payload: {profile!r}")
    p = payloads[0]
    keys = ("EmailAccountType", "EmailAddress", "IncomingMailServerHostName",
            "IncomingMailServerPortNumber", "IncomingMailServerUseSSL",
            "IncomingMailServerUsername", "IncomingMailServerAuthentication")
    out = {k: p.get(k) for k in keys}
    out["content_type"] = resp.getheader("Content-Type", "")
    out["uuids"] = [profile.get("PayloadUUID"), p.get("PayloadUUID")]
    return out


class IMAP4_SSL_At(imaplib.IMAP4_SSL):
    """IMAPS to an IP literal (resolved by the test at the relay's DNS),
    with the server's name for SNI and certificate verification."""

    def __init__(self, ip, port, host, ssl_context):
        self._ip = ip
        super().__init__(host, port, ssl_context=ssl_context)

    def _create_socket(self, timeout=None):
        sock = socket.create_connection((self._ip, self.port), timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def connect():
    # Only the sandbox CA: no system roots, hostname checked.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=CFG["ca"])
    check(ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED, "verifying context")
    m = IMAP4_SSL_At(CFG["ip"], int(CFG["port"]), CFG["host"], ctx)
    cert = m.sock.getpeercert()
    names = [v for (k, v) in cert.get("subjectAltName", ()) if k == "DNS"]
    return m, names


def ok(resp, what):
    typ, data = resp
    check(typ == "OK", f"{what}: expected OK, got {typ} {data!r}")
    return data


def fetch():
    m, names = connect()
    ok(m.login(CFG["user"], CFG["password"]), "LOGIN")
    ok(m.select("INBOX"), "SELECT INBOX")
    data = ok(m.fetch("1:*", "(BODY.PEEK[])"), "FETCH 1:* BODY.PEEK[]")
    found = [d[1] for d in data if isinstance(d, tuple) and CFG["token"].encode() in d[1]]
    check(len(found) == 1, f"one message holds the token: {data!r}")
    message = found[0]
    m.logout()
    return {"names": names, "message": message.decode("utf-8", "replace")}


def login():
    m, names = connect()
    try:
        typ, data = m.login(CFG["user"], CFG["password"])
        result = {"names": names, "ok": typ == "OK", "reply": repr(data)}
    except imaplib.IMAP4.error as e:
        result = {"names": names, "ok": False, "reply": str(e)}
    try:
        m.logout()
    except (imaplib.IMAP4.error, OSError):
        pass
    return result


def idle():
    m, _ = connect()
    ok(m.login(CFG["user"], CFG["password"]), "LOGIN")
    before = int(ok(m.select("INBOX"), "SELECT INBOX")[0])
    check("IDLE" in m.capabilities, f"IDLE offered: {m.capabilities}")
    tag = m._new_tag()
    m.send(tag + b" IDLE\r\n")
    line = m.readline()
    check(line.startswith(b"+"), f"IDLE continuation: {line!r}")
    print("IDLING", flush=True)
    m.sock.settimeout(30)
    while True:
        line = m.readline()
        check(line, "the connection stayed open in IDLE")
        mo = re.match(rb"\* (\d+) EXISTS", line)
        if mo and int(mo.group(1)) > before:
            print("EXISTS %.6f" % time.time(), flush=True)
            break
    m.send(b"DONE\r\n")
    while True:
        line = m.readline()
        check(line, "the connection stayed open after DONE")
        if line.startswith(tag + b" "):
            check(line.startswith(tag + b" OK"), f"IDLE ends OK: {line!r}")
            break
    data = ok(m.fetch(str(before + 1), "(BODY.PEEK[])"), "FETCH BODY.PEEK[]")
    message = [d for d in data if isinstance(d, tuple)][0][1]
    print("MESSAGE " + message.hex(), flush=True)
    m.logout()


if MODE == "idle":
    idle()
else:
    print(json.dumps({"autoconfig": autoconfig, "mobileconfig": mobileconfig,
                      "fetch": fetch, "login": login}[MODE]()))
