"""A deterministic corpus of realistic email messages, made at run time.

`corpus(n, seed)` returns n messages (bytes, CRLF line ends, 7-bit), the same
bytes for the same (n, seed) on every machine. Sizes follow a log-normal
distribution with a median of about 8 KiB, clamped to 2-64 KiB. About 60 % are
text/plain, 25 % multipart/alternative (text + HTML), 15 % multipart/mixed with
an attachment (most of the large ones). Headers: From, To, some Cc, Subject
(a fifth with RFC 2047 encoded words, B and Q), Date (two years, several time
zones, in order), Message-ID, some In-Reply-To/References, List-Id, X-Mailer.

Python standard library only.
"""

import base64
import binascii
import math
import random
import time

TO = "Alice <alice@sandbox.test>"

FIRST = ["Anna", "Ben", "Chloé", "David", "Émilie", "Frank", "Grace", "Hugo", "Inès", "Jakob",
         "Kenji", "Lena", "Marta", "Nils", "Olga", "Pedro", "Quentin", "Rosa", "Søren", "Tomás",
         "Ulla", "Victor", "Wen", "Xavier", "Yusuf", "Zoë", "Łukasz", "Håkon", "Jürgen", "Françoise"]
LAST = ["Martin", "Müller", "García", "Rossi", "Nakamura", "Dubois", "Kowalski", "Novák",
        "Johansson", "O'Brien", "Smith", "Van den Berg", "Øvergaard", "Şahin", "Lefèvre", "Ivanova"]
DOMAINS = ["example.org", "example.net", "mail.example.com", "lists.example.org", "univ.example.edu",
           "company.example", "post.example.de", "correo.example.es", "example.fr", "example.jp"]
WORDS = ("the of and to in is that for it as with was on be by at this from or have an are not "
         "but all which one you had were can there their we will when more your what about out "
         "meeting report budget schedule project release server mailbox message attached please "
         "review thanks regards tomorrow friday deadline draft version update invoice travel "
         "holiday garden family weekend photos kitchen recipe concert tickets library bicycle "
         "quarterly results customer support ticket resolved pending approval contract signed").split()
ACCENTED = ("été café naïve résumé über straße Ärger façade déjà vu crème brûlée smørrebrød "
            "Zürich São Paulo Kraków 日本語 東京 こんにちは Привет мир Ελληνικά").split()
SUBJECT_WORDS = ("meeting notes budget Q3 review invoice trip photos dinner tomorrow release "
                 "plan draft proposal update question schedule report minutes agenda").split()
NON_ASCII_SUBJECTS = ["Réunion de lundi", "Grüße aus München", "Café à 15 h ?", "Résumé du projet",
                      "Überweisung erhalten", "Fotos vom Wochenende 📷", "会議の議事録", "Привет из Москвы",
                      "Año nuevo, vida nueva", "Smörgåsbord på fredag", "Zażółć gęślą jaźń"]
MAILERS = ["Mozilla Thunderbird 115.6", "Apple Mail (2.3731)", "K-9 Mail 6.7", "Microsoft Outlook 16.0",
           "mutt 2.2.9", "Roundcube Webmail/1.6.5"]
ATTACH = [("application/pdf", "report-{n}.pdf"), ("image/jpeg", "IMG_{n}.jpg"),
          ("image/png", "screenshot-{n}.png"), ("application/zip", "archive-{n}.zip"),
          ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "Entwurf-{n}-Änderungen.docx")]
ZONES = ["+0000", "+0100", "+0200", "-0500", "-0800", "+0900", "+0530"]

MIN_SIZE, MAX_SIZE, MEDIAN = 2048, 65536, 8192


def encoded_word(text, rng):
    """RFC 2047: UTF-8 encoded words (B or Q), each at most 75 characters, folded."""
    data = text.encode()
    if rng.random() < 0.5:
        words, chunk = [], b""
        for ch in text:
            b = ch.encode()
            if len(chunk) + len(b) > 30:
                words.append("=?UTF-8?B?" + base64.b64encode(chunk).decode() + "?=")
                chunk = b""
            chunk += b
        if chunk:
            words.append("=?UTF-8?B?" + base64.b64encode(chunk).decode() + "?=")
        return "\r\n ".join(words)
    out, cur = [], ""
    for byte in data:
        c = chr(byte)
        enc = "_" if c == " " else c if (c.isalnum() and byte < 128) else f"={byte:02X}"
        if len(cur) + len(enc) > 45:
            out.append("=?UTF-8?Q?" + cur + "?=")
            cur = ""
        cur += enc
    out.append("=?UTF-8?Q?" + cur + "?=")
    # Q words are split on byte boundaries, which can cut a UTF-8 sequence: RFC 2047
    # section 5 forbids that, so fall back to B when it would happen.
    try:
        for w in out:
            binascii.a2b_qp(w[10:-2].replace("_", " ").encode(), header=True).decode()
    except UnicodeDecodeError:
        return "=?UTF-8?B?" + base64.b64encode(data).decode() + "?="
    return "\r\n ".join(out)


def person(rng):
    first, last = rng.choice(FIRST), rng.choice(LAST)
    local = (first[0] + last).lower().encode("ascii", "ignore").decode().replace("'", "").replace(" ", "")
    addr = f"{local or 'user'}{rng.randrange(100)}@{rng.choice(DOMAINS)}"
    name = f"{first} {last}"
    if all(ord(c) < 128 for c in name):
        shown = f'"{name}"' if "'" in name else name
    else:
        shown = encoded_word(name, rng)
    return f"{shown} <{addr}>", addr


def sentence(rng, accents):
    n = rng.randint(6, 18)
    words = [rng.choice(ACCENTED) if accents and rng.random() < 0.08 else rng.choice(WORDS) for _ in range(n)]
    s = " ".join(words)
    return s[0].upper() + s[1:] + rng.choice([".", ".", ".", "?", "!"])


_POOL = {}


def _pool(accents):
    """Paragraphs to draw bodies from (made once, from a fixed seed, so the corpus
    stays deterministic and fast to make)."""
    if accents not in _POOL:
        rng = random.Random(1000 + accents)
        paras = []
        for _ in range(600):
            words = " ".join(sentence(rng, accents) for _ in range(rng.randint(2, 6))).split(" ")
            lines, cur = [], ""
            for w in words:
                if cur and len(cur) + 1 + len(w) > 72:
                    lines.append(cur)
                    cur = w
                else:
                    cur = f"{cur} {w}" if cur else w
            lines.append(cur)
            paras.append("\n".join(lines))
        _POOL[accents] = paras
    return _POOL[accents]


def paragraph_text(rng, nbytes, accents):
    """Plain text of about nbytes (UTF-8) in paragraphs, lines wrapped at 72."""
    pool = _pool(accents)
    paras, total = [], 0
    while total < nbytes:
        p = pool[rng.randrange(len(pool))]
        paras.append(p)
        total += len(p) + 2
    return "\n\n".join(paras)


def qp(text):
    """quoted-printable with CRLF line ends (soft breaks at 76)."""
    out = binascii.b2a_qp(text.encode(), istext=True, header=False)
    return out.replace(b"\n", b"\r\n")


def text_part(rng, nbytes, accents):
    text = paragraph_text(rng, nbytes, accents)
    if accents:
        return b"Content-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n", qp(text), text
    return (b"Content-Type: text/plain; charset=us-ascii; format=flowed\r\nContent-Transfer-Encoding: 7bit\r\n\r\n",
            text.replace("\n", "\r\n").encode(), text)


def html_of(text):
    paras = "".join(f"<p>{p.replace(chr(10), ' ')}</p>\n" for p in text.split("\n\n"))
    return f"<html><head><meta charset=\"utf-8\"></head><body>\n{paras}</body></html>\n"


def b64_lines(data):
    enc = base64.b64encode(data)
    return b"\r\n".join(enc[i:i + 76] for i in range(0, len(enc), 76))


def make_message(i, rng, when, size):
    """One message of about `size` bytes."""
    sender, sender_addr = person(rng)
    kind = rng.random()
    if size > 24576:
        kind = 0.9 if rng.random() < 0.7 else kind
    accents = rng.random() < 0.3
    h = [f"From: {sender}"]
    h.append(f"To: {TO}")
    if rng.random() < 0.3:
        h.append("Cc: " + ",\r\n ".join(person(rng)[0] for _ in range(rng.randint(1, 3))))
    if rng.random() < 0.2:
        subj = encoded_word(rng.choice(NON_ASCII_SUBJECTS) + f" #{i}", rng)
    else:
        subj = " ".join(rng.choice(SUBJECT_WORDS) for _ in range(rng.randint(2, 7))).capitalize() + f" #{i}"
    if rng.random() < 0.3:
        subj = rng.choice(["Re: ", "RE: ", "Fwd: ", "AW: "]) + subj
    h.append(f"Subject: {subj}")
    zone = rng.choice(ZONES)
    off = (int(zone[1:3]) * 3600 + int(zone[3:]) * 60) * (1 if zone[0] == "+" else -1)
    h.append("Date: " + time.strftime("%a, %d %b %Y %H:%M:%S ", time.gmtime(when + off)) + zone)
    dom = sender_addr.split("@")[1]
    h.append(f"Message-ID: <{i}.{rng.getrandbits(48):012x}@{dom}>")
    if rng.random() < 0.3:
        ref = f"<{rng.getrandbits(48):012x}@{rng.choice(DOMAINS)}>"
        h.append(f"In-Reply-To: {ref}")
        h.append(f"References: {ref}")
    if rng.random() < 0.2:
        h.append(f"List-Id: Team list <team.{dom}>")
    h.append(f"X-Mailer: {rng.choice(MAILERS)}")
    h.append("MIME-Version: 1.0")
    head = ("\r\n".join(h) + "\r\n").encode()
    room = max(400, size - len(head) - 120)

    if kind < 0.60:
        ph, body, _ = text_part(rng, int(room * (0.93 if accents else 1.0)), accents)
        msg = head + ph + body + b"\r\n"
    elif kind < 0.85:
        # Text and HTML of the same words: the HTML is about 1.15x the text.
        b = f"=_alt_{i}_{rng.getrandbits(32):08x}".encode()
        th, tbody, text = text_part(rng, int(room / 2.3), accents)
        html = html_of(text)
        hbody = qp(html)
        msg = (head + b"Content-Type: multipart/alternative; boundary=\"" + b + b"\"\r\n\r\n"
               + b"This is a multi-part message in MIME format.\r\n\r\n"
               + b"--" + b + b"\r\n" + th + tbody + b"\r\n"
               + b"--" + b + b"\r\nContent-Type: text/html; charset=UTF-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
               + hbody + b"\r\n--" + b + b"--\r\n")
    else:
        b = f"=_mix_{i}_{rng.getrandbits(32):08x}".encode()
        ctype, fname = rng.choice(ATTACH)
        fname = fname.format(n=i)
        th, tbody, _ = text_part(rng, rng.randint(300, 1500), accents)
        att_len = max(64, int((room - len(tbody) - 300) * 0.74))
        data = rng.randbytes(att_len)
        if all(ord(c) < 128 for c in fname):
            disp = f"attachment; filename=\"{fname}\"".encode()
            ct = f"{ctype}; name=\"{fname}\"".encode()
        else:
            from urllib.parse import quote
            disp = f"attachment;\r\n filename*=UTF-8''{quote(fname)}".encode()
            ct = ctype.encode()
        msg = (head + b"Content-Type: multipart/mixed; boundary=\"" + b + b"\"\r\n\r\n"
               + b"--" + b + b"\r\n" + th + tbody + b"\r\n"
               + b"--" + b + b"\r\nContent-Type: " + ct + b"\r\nContent-Disposition: " + disp
               + b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64_lines(data) + b"\r\n"
               + b"--" + b + b"--\r\n")
    return msg


def corpus(n, seed=1):
    rng = random.Random(seed)
    start = 1704067200          # 2024-01-01T00:00:00Z
    span = 2 * 365 * 86400
    out = []
    for i in range(1, n + 1):
        size = int(min(MAX_SIZE, max(MIN_SIZE, rng.lognormvariate(math.log(MEDIAN), 0.7))))
        when = start + (span * i) // n + rng.randrange(600)
        out.append(make_message(i, rng, when, size))
    return out


def message_id(msg):
    """The Message-ID header's value (without angle brackets), from the raw bytes."""
    k = msg.find(b"\r\nMessage-ID: <")
    if k < 0:
        return None
    e = msg.index(b">", k)
    return msg[k + 15:e].decode()


if __name__ == "__main__":
    import statistics
    import sys
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    t = time.monotonic()
    msgs = corpus(n)
    sizes = sorted(len(m) for m in msgs)
    print(f"{n} messages in {time.monotonic() - t:.1f}s: median {statistics.median(sizes) / 1024:.1f} KiB, "
          f"min {sizes[0]}, max {sizes[-1]}, total {sum(sizes) / 2**20:.1f} MiB")
    for m in msgs:
        assert max(m) < 128, "not 7-bit"
        assert b"\r\n" in m and b"\n" not in m.replace(b"\r\n", b""), "bare LF"
        assert b"\r" not in m.replace(b"\r\n", b""), "bare CR"
