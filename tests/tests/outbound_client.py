# Python's smtplib, imaplib and dkimpy against Own-Mailbox's sending path
# (run by tests/tests/outbound.rs). Usage: outbound_client.py MODE CONFIG_JSON
#   send:   {"submission": "127.0.0.1:P", "implicit_tls": false, "user",
#            "password", "mail_from", "from", "to": [...], "subject"} -> STARTTLS
#           (or TLS from the start with implicit_tls), AUTH, the message; prints
#           "CODE TEXT" of the server's final answer (250 when queued), exit 0
#           either way
#   imap:   {"imap": "127.0.0.1:P", "user", "password", "subject"} -> prints
#           the first INBOX message whose Subject contains "subject", exit 1 if none
#   dkim:   {"file": PATH, "dns": "127.0.0.1:P"} -> verifies the message's DKIM
#           signature with dkimpy, its key looked up at the relay's DNS only;
#           prints the signing domain, exit 1 if it fails
#   auth:   {"file": PATH, "dns": "127.0.0.1:P"} -> judges a message as it was
#           received, as the recipient's side would: SPF (pyspf) for the client
#           address, HELO and Return-Path that the receiving Postfix recorded, DKIM
#           (dkimpy) and DMARC alignment with the From domain (RFC 7489 §3.1,
#           relaxed: same last two labels) under the published _dmarc policy; all
#           DNS at the relay's server only. Prints JSON {spf, dkim, dmarc, policy}
import imaplib
import json
import smtplib
import ssl
import sys
from email.message import EmailMessage

MODE = sys.argv[1]
CFG = json.loads(sys.argv[2])


def hostport(key):
    host, port = CFG[key].rsplit(":", 1)
    return host, int(port)


def no_verify():
    # The node's certificate is self-signed in these tests.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def send():
    msg = EmailMessage()
    msg["From"] = CFG["from"]
    msg["To"] = ", ".join(CFG["to"])
    msg["Subject"] = CFG["subject"]
    msg.set_content("Hello from smtplib.\n.leading dot line\n")
    host, port = hostport("submission")
    if CFG.get("implicit_tls"):
        session = smtplib.SMTP_SSL(host, port, timeout=90, context=no_verify())
    else:
        session = smtplib.SMTP(host, port, timeout=90)
    with session as s:
        s.ehlo("client.test")
        if not CFG.get("implicit_tls"):
            s.starttls(context=no_verify())
            s.ehlo("client.test")
        s.login(CFG["user"], CFG["password"])
        try:
            s.send_message(msg, from_addr=CFG["mail_from"], to_addrs=CFG["to"])
            print("250 queued")
        except smtplib.SMTPSenderRefused as e:
            print(e.smtp_code, e.smtp_error.decode())
        except smtplib.SMTPRecipientsRefused as e:
            code, text = list(e.recipients.values())[0]
            print(code, text.decode())
        except smtplib.SMTPDataError as e:
            print(e.smtp_code, e.smtp_error.decode())


def imap():
    host, port = hostport("imap")
    m = imaplib.IMAP4(host, port)
    m.starttls(ssl_context=no_verify())
    m.login(CFG["user"], CFG["password"])
    m.select("INBOX")
    typ, data = m.search(None, "ALL")
    for num in data[0].split():
        typ, parts = m.fetch(num, "(RFC822)")
        raw = parts[0][1]
        if CFG["subject"].encode() in raw:
            sys.stdout.write(raw.decode("utf-8", "replace"))
            m.logout()
            return
    m.logout()
    sys.exit(1)


def resolver():
    """A resolver that asks the relay's DNS server only, also made dnspython's default
    (pyspf uses the default one)."""
    import dns.resolver

    host, port = hostport("dns")
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [host]
    res.port = port
    dns.resolver.default_resolver = res
    return res


def dkim_check(data, res):
    """(verified, signing domain) by dkimpy, its key looked up through `res`."""
    import dkim

    def dnsfunc(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        answer = res.resolve(name, "TXT", lifetime=timeout)
        return b"".join(b"".join(r.strings) for r in answer)

    d = dkim.DKIM(data)
    ok = d.verify(dnsfunc=dnsfunc)
    return ok, (d.domain or b"").decode()


def dkim_verify():
    data = open(CFG["file"], "rb").read()
    ok, domain = dkim_check(data, resolver())
    if not ok:
        print("DKIM verification failed")
        sys.exit(1)
    print(domain)


def aligned(domain, from_domain, mode):
    domain, from_domain = domain.lower().rstrip("."), from_domain.lower().rstrip(".")
    if mode == "s":
        return domain == from_domain
    return domain.split(".")[-2:] == from_domain.split(".")[-2:]


def auth_check():
    import email
    import re
    from email.utils import parseaddr

    import dns.resolver
    import spf

    res = resolver()
    data = open(CFG["file"], "rb").read()
    msg = email.message_from_bytes(data)
    from_domain = parseaddr(msg["From"])[1].rsplit("@", 1)[-1]
    return_path = parseaddr(msg["Return-Path"] or "")[1]
    # The receiving Postfix's own Received field: "from HELO (NAME [IP])".
    seen = re.search(r"from (\S+) \(.*?\[([0-9a-fA-F.:]+)\]\)", msg.get_all("Received")[0])
    helo, ip = seen.group(1), seen.group(2)
    spf_result, _ = spf.check2(i=ip, s=return_path, h=helo)
    dkim_ok, dkim_domain = dkim_check(data, res)
    tags = {}
    for r in res.resolve(f"_dmarc.{from_domain}", "TXT"):
        record = b"".join(r.strings).decode()
        if record.startswith("v=DMARC1"):
            tags = dict(t.strip().split("=", 1) for t in record.split(";") if "=" in t)
    spf_aligned = spf_result == "pass" and aligned(return_path.rsplit("@", 1)[-1], from_domain, tags.get("aspf", "r"))
    dkim_aligned = dkim_ok and aligned(dkim_domain, from_domain, tags.get("adkim", "r"))
    print(json.dumps({
        "ip": ip, "helo": helo, "return_path": return_path,
        "spf": spf_result, "spf_aligned": spf_aligned,
        "dkim": "pass" if dkim_ok else "fail", "dkim_aligned": dkim_aligned,
        "dmarc": "pass" if tags and (spf_aligned or dkim_aligned) else "fail",
        "policy": tags.get("p"),
    }))


{"send": send, "imap": imap, "dkim": dkim_verify, "auth": auth_check}[MODE]()
