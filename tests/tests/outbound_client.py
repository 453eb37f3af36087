# Python's smtplib, imaplib and dkimpy against Own-Mailbox's sending path
# (run by tests/tests/outbound.rs). Usage: outbound_client.py MODE CONFIG_JSON
#   send:   {"submission": "127.0.0.1:P", "user", "password", "mail_from",
#            "from", "to": [...], "subject"}  -> prints "CODE TEXT" of the
#           server's final answer (250 when queued), exit 0 either way
#   imap:   {"imap": "127.0.0.1:P", "user", "password", "subject"} -> prints
#           the first INBOX message whose Subject contains "subject", exit 1 if none
#   dkim:   {"file": PATH, "dns": "127.0.0.1:P"} -> verifies the message's DKIM
#           signature with dkimpy, its key looked up at the relay's DNS only;
#           prints the signing domain, exit 1 if it fails
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
    with smtplib.SMTP(host, port, timeout=90) as s:
        s.ehlo("client.test")
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


def dkim_verify():
    import dkim
    import dns.resolver

    host, port = hostport("dns")
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [host]
    res.port = port

    def dnsfunc(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        answer = res.resolve(name, "TXT", lifetime=timeout)
        return b"".join(b"".join(r.strings) for r in answer)

    data = open(CFG["file"], "rb").read()
    d = dkim.DKIM(data)
    if not d.verify(dnsfunc=dnsfunc):
        print("DKIM verification failed")
        sys.exit(1)
    print(d.domain.decode())


{"send": send, "imap": imap, "dkim": dkim_verify}[MODE]()
