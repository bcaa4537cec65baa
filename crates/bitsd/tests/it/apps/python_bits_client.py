"""A BITS upload written the way hand-made clients write it, with CPython's http.client.

Usage: python_bits_client.py HOST:PORT PATH

Ping, Create-Session and Close-Session go out without a body, so http.client sends no
Content-Length (it adds one only for methods that expect a body). The first fragment is sent
with a Content-Length; the second with encode_chunked=True from a generator, which gives
Transfer-Encoding: chunked and no Content-Length. Exits non-zero on any unexpected answer.
"""
import http.client
import sys

PROTOCOL = "{7df0354d-249b-430f-820d-3d2a9bef4931}"


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    path = sys.argv[2]
    data = bytes(i * 7 % 251 for i in range(200_000))
    conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def post(headers, body=None, **kw):
        conn.request("BITS_POST", path, body=body, headers=headers, **kw)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200 or resp.getheader("BITS-Packet-Type") != "Ack":
            sys.exit(f"{headers.get('BITS-Packet-Type')}: {resp.status} {resp.getheaders()}")
        return resp

    post({"BITS-Packet-Type": "Ping"})
    sid = post(
        {"BITS-Packet-Type": "Create-Session", "BITS-Supported-Protocols": PROTOCOL}
    ).getheader("BITS-Session-Id")
    half = 80_000
    post(
        {
            "BITS-Packet-Type": "Fragment",
            "BITS-Session-Id": sid,
            "Content-Range": f"bytes 0-{half - 1}/{len(data)}",
        },
        data[:half],
    )

    def pieces():
        for at in range(half, len(data), 10_000):
            yield data[at : at + 10_000]

    resp = post(
        {
            "BITS-Packet-Type": "Fragment",
            "BITS-Session-Id": sid,
            "Content-Range": f"bytes {half}-{len(data) - 1}/{len(data)}",
        },
        pieces(),
        encode_chunked=True,
    )
    if resp.getheader("BITS-Received-Content-Range") != str(len(data)):
        sys.exit(f"chunked fragment: {resp.getheaders()}")
    post({"BITS-Packet-Type": "Close-Session", "BITS-Session-Id": sid})
    print("ok")


main()
