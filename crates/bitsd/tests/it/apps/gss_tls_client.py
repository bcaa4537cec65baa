"""A Negotiate client on MIT's GSSAPI over TLS with channel bindings, as Windows sends them with
extended protection: `tls-server-end-point` of the certificate the client saw (SHA-256 of its
DER; the test certificates are signed with SHA-256) in the GSSAPI channel bindings, so the
Kerberos authenticator (or gss-ntlmssp's NTLMv2 answer) carries their MD5. One BITS
Create-Session over one connection, answering each 401 that carries a token. Certificates are
not verified (the test talks to loopback, maybe through a relay). Prints the final status.
Usage: gss_tls_client.py HOST PORT PATH [bindings|none|wrong]"""
import base64
import hashlib
import http.client
import ssl
import sys

import gssapi
import gssapi.raw

host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
mode = sys.argv[4] if len(sys.argv) > 4 else "bindings"
tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
tls.check_hostname = False
tls.verify_mode = ssl.CERT_NONE
conn = http.client.HTTPSConnection("127.0.0.1", port, context=tls, timeout=20)
conn.connect()
cert = conn.sock.getpeercert(binary_form=True)
bindings = None
if mode != "none":
    seen = cert if mode == "bindings" else b"another certificate"
    data = b"tls-server-end-point:" + hashlib.sha256(seen).digest()
    bindings = gssapi.raw.ChannelBindings(application_data=data)
spnego = gssapi.OID.from_int_seq("1.3.6.1.5.5.2")
name = gssapi.Name(f"HTTP@{host}", gssapi.NameType.hostbased_service)
ctx = gssapi.SecurityContext(
    name=name, mech=spnego, usage="initiate", channel_bindings=bindings
)
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
    if resp.status == 401 and answer.startswith("Negotiate ") and not ctx.complete:
        try:
            token = ctx.step(base64.b64decode(answer[len("Negotiate "):]))
        except gssapi.exceptions.GSSError as e:
            print(f"{resp.status} challenge rejected: {e}")
            sys.exit(1)
        continue
    break
print(resp.status)
