"""An HTTP server whose Negotiate check is MIT's GSSAPI acceptor (python3-gssapi, the service
key from KRB5_KTNAME): answers one BITS Ping with 401 Negotiate, then checks the token the
client sends. Prints its port, then "<initiator>" when GSSAPI accepted the token or
"rejected: <why>"; answers a BITS Ack (200) or 401."""
import base64
import http.server
import sys

import gssapi


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_BITS_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Negotiate "):
            self.answer(401, {"WWW-Authenticate": "Negotiate"})
            return
        ctx = gssapi.SecurityContext(usage="accept")
        try:
            reply = ctx.step(base64.b64decode(auth[len("Negotiate "):]))
        except gssapi.exceptions.GSSError as e:
            print("rejected:", e, flush=True)
            self.answer(401, {"WWW-Authenticate": "Negotiate"})
            return
        print(ctx.initiator_name, flush=True)
        headers = {"BITS-Packet-Type": "Ack"}
        if reply:
            headers["WWW-Authenticate"] = "Negotiate " + base64.b64encode(reply).decode()
        self.answer(200, headers)
        self.server.done = True

    def answer(self, status, headers):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
server.done = False
print(server.server_address[1], flush=True)
while not server.done:
    server.handle_request()
