"""A Negotiate client on MIT's GSSAPI (python3-gssapi): sends one BITS Create-Session with a
SPNEGO token for HTTP@<host>, then feeds the server's answer token back to GSSAPI, which checks
the mutual-authentication AP-REP. Prints "<status> <session id> <mutual: ok|none>"; exits 1 if
GSSAPI rejects the server's token. Usage: gss_client.py HOST PORT PATH"""
import base64
import http.client
import sys

import gssapi

host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
spnego = gssapi.OID.from_int_seq("1.3.6.1.5.5.2")
name = gssapi.Name(f"HTTP@{host}", gssapi.NameType.hostbased_service)
ctx = gssapi.SecurityContext(
    name=name,
    mech=spnego,
    usage="initiate",
    flags=gssapi.RequirementFlag.mutual_authentication,
)
token = ctx.step()
conn = http.client.HTTPConnection("127.0.0.1", port)
conn.request(
    "BITS_POST",
    path,
    headers={
        "Host": f"{host}:{port}",
        "BITS-Packet-Type": "Create-Session",
        "BITS-Supported-Protocols": "{7df0354d-249b-430f-820d-3d2a9bef4931}",
        "Content-Length": "0",
        "Authorization": "Negotiate " + base64.b64encode(token).decode(),
    },
)
resp = conn.getresponse()
resp.read()
mutual = "none"
answer = resp.getheader("WWW-Authenticate", "")
if answer.startswith("Negotiate "):
    try:
        ctx.step(base64.b64decode(answer[len("Negotiate "):]))
    except gssapi.exceptions.GSSError as e:
        print(f"{resp.status} - rejected: {e}")
        sys.exit(1)
    mutual = "ok" if ctx.complete else "incomplete"
print(resp.status, resp.getheader("BITS-Session-Id", "-"), mutual)
