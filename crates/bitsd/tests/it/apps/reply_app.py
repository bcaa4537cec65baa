#!/usr/bin/env python3
"""A BITS server application (spec §9) for the upload-reply tests; stdlib only.

It answers every notification with a JSON receipt of the upload:
``{"size": N, "sha256": "<hex>"}``.

* By value (no ``BITS-Request-DataFile-Name``): the upload is the request body; the receipt is
  the response body.
* By reference: the upload is read from ``BITS-Request-DataFile-Name``; the receipt is written to
  ``BITS-Response-DataFile-Name`` and the response body is empty.

It binds 127.0.0.1 on a free port and prints that port as the first line on stdout.
"""

import hashlib
import http.server
import json
import sys


def receipt(data: bytes) -> bytes:
    return json.dumps({"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}).encode()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # keep test output quiet
        pass

    def answer(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length) if length else b""
        request_file = self.headers.get("BITS-Request-DataFile-Name")
        response_file = self.headers.get("BITS-Response-DataFile-Name")
        if self.headers.get("BITS-Original-Request-URL") is None:
            self.answer(400)
            return
        if request_file is None and response_file is None:
            self.answer(200, receipt(body))
            return
        if request_file is None or response_file is None or body:
            self.answer(400)
            return
        try:
            with open(request_file, "rb") as f:
                data = f.read()
            with open(response_file, "wb") as f:
                f.write(receipt(data))
        except OSError:
            self.answer(500)
            return
        self.answer(200)


def main() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
