# An HTTPS server of MTA-STS policies (run by tests/tests/mta_sts.rs).
# Usage: mta_sts_server.py PORT CERT KEY DIR
# GET /.well-known/mta-sts.txt with `Host: NAME` answers DIR/NAME.txt as
# text/plain, read at each request (so a test can change it); anything else
# is a 404. Listens on 127.0.0.1 only.
import http.server
import os
import ssl
import sys

PORT, CERT, KEY, DIR = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]


class Policies(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        host = (self.headers.get("Host") or "").split(":")[0].lower()
        path = os.path.join(DIR, host + ".txt")
        ok = self.path == "/.well-known/mta-sts.txt" and "/" not in host
        if not ok or not os.path.isfile(path):
            self.send_error(404)
            return
        with open(path, "rb") as f:
            body = f.read()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Policies)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(CERT, KEY)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
