# A WKD client and a signup client, with Python's standard library only: it
# computes the Web Key Directory path itself (z-base-32 of SHA-1 of the local
# part, draft-koch-openpgp-webkey-service section 3.1) and solves the relay's
# proof of work (SHA-256(challenge || nonce) with DIFFICULTY leading zero bits).
#
# Usage: wkd_signup.py MODE CONFIG_JSON; each mode prints one JSON line.
#   wkd    {"http": URL, "address": A, "method": "direct"|"advanced", "out": FILE}
#          -> {"status", "content_type", "url", "host"}; the body goes to FILE
#   policy {"http": URL, "domain": D, "method": "direct"|"advanced"}
#          -> {"status"}
#   signup {"http": URL, "handle": H}
#          -> {"status", "body" (the JSON answer), "tries" (nonces tried)}
import hashlib
import http.client
import json
import sys
import urllib.parse

MODE = sys.argv[1]
CFG = json.loads(sys.argv[2])

ZBASE32 = "ybndrfg8ejkmcpqxot1uwisza345h769"


def zbase32(data):
    bits = "".join(format(b, "08b") for b in data)
    bits += "0" * (-len(bits) % 5)
    return "".join(ZBASE32[int(bits[i:i + 5], 2)] for i in range(0, len(bits), 5))


def wkd_hash(local):
    lower = "".join(c.lower() if "A" <= c <= "Z" else c for c in local)
    return zbase32(hashlib.sha1(lower.encode()).digest())


# The draft's own example.
assert wkd_hash("Joe.Doe") == "iy9q119eutrkn8s1mk4r39qejnbu3n5q"


def request(method, path, host, body=None):
    """One request to the relay's web server (its IP literal), with the Host
    header a client would send for the name it looked up."""
    url = urllib.parse.urlsplit(CFG["http"])
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    headers = {"Host": host}
    if body is not None:
        body = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, resp.getheader("Content-Type"), data


if MODE == "wkd":
    local, domain = CFG["address"].rsplit("@", 1)
    h = wkd_hash(local)
    q = urllib.parse.urlencode({"l": local})
    if CFG["method"] == "direct":
        host, path = domain, f"/.well-known/openpgpkey/hu/{h}?{q}"
    else:
        host = "openpgpkey." + domain
        path = f"/.well-known/openpgpkey/{domain}/hu/{h}?{q}"
    status, ctype, data = request("GET", path, host)
    with open(CFG["out"], "wb") as f:
        f.write(data)
    print(json.dumps({"status": status, "content_type": ctype, "url": path, "host": host}))
elif MODE == "policy":
    domain = CFG["domain"]
    if CFG["method"] == "direct":
        host, path = domain, "/.well-known/openpgpkey/policy"
    else:
        host, path = "openpgpkey." + domain, f"/.well-known/openpgpkey/{domain}/policy"
    status, _, _ = request("GET", path, host)
    print(json.dumps({"status": status}))
elif MODE == "signup":
    host = CFG.get("host", "sandbox.test")
    status, _, data = request("GET", "/api/v1/pow", host)
    assert status == 200, (status, data)
    challenge = json.loads(data)
    assert challenge["algorithm"] == "sha256-leading-zero-bits", challenge
    difficulty = challenge["difficulty"]
    prefix = hashlib.sha256(challenge["challenge"].encode())
    nonce = 0
    while True:
        h = prefix.copy()
        h.update(str(nonce).encode())
        value = int.from_bytes(h.digest(), "big")
        if value >> (256 - difficulty) == 0:
            break
        nonce += 1
    body = {"handle": CFG["handle"], "pow": {"challenge": challenge["challenge"], "nonce": str(nonce)}}
    status, _, data = request("POST", "/api/v1/accounts", host, body)
    print(json.dumps({"status": status, "body": json.loads(data), "tries": nonce + 1}))
else:
    raise SystemExit(f"unknown mode {MODE}")
