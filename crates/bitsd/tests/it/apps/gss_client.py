"""A Negotiate client on MIT's GSSAPI (python3-gssapi): one BITS Create-Session, answering every
401 that carries a token with the next GSSAPI step on the same connection, and feeding the
final answer's token back to GSSAPI (which checks the server's side of the exchange). SPNEGO
picks the mechanism: Kerberos with a ticket, NTLM (gss-ntlmssp, credentials from
NTLM_USER_FILE) without one. Prints "<status> <session id> <final: ok|none>"; exits 1 if GSSAPI
rejects a server token. Usage: gss_client.py HOST PORT PATH"""
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
conn = http.client.HTTPConnection("127.0.0.1", port)
token = ctx.step()
for _ in range(4):
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
    answer = resp.getheader("WWW-Authenticate", "")
    server_token = (
        base64.b64decode(answer[len("Negotiate "):]) if answer.startswith("Negotiate ") else None
    )
    if resp.status == 401 and server_token and not ctx.complete:
        try:
            token = ctx.step(server_token)
        except gssapi.exceptions.GSSError as e:
            print(f"{resp.status} - challenge rejected: {e} [{answer[:80]}]")
            sys.exit(1)
        continue
    break
final = "none"
if resp.status == 200 and server_token and not ctx.complete:
    try:
        ctx.step(server_token)
    except gssapi.exceptions.GSSError as e:
        print(f"{resp.status} - rejected: {e}")
        sys.exit(1)
if resp.status == 200:
    final = "ok" if ctx.complete else "incomplete"
print(resp.status, resp.getheader("BITS-Session-Id", "-"), final)
