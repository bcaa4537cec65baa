"""Prints one fresh Negotiate token (base64 SPNEGO around a Kerberos AP-REQ) for HTTP@HOST from
the credential cache, through MIT's GSSAPI (python3-gssapi): a token a test can send, resend
and replay at will. Usage: gss_token.py HOST [COUNT]: COUNT tokens, one per line."""
import base64
import sys

import gssapi

host = sys.argv[1]
count = int(sys.argv[2]) if len(sys.argv) > 2 else 1
spnego = gssapi.OID.from_int_seq("1.3.6.1.5.5.2")
name = gssapi.Name(f"HTTP@{host}", gssapi.NameType.hostbased_service)
for _ in range(count):
    ctx = gssapi.SecurityContext(name=name, mech=spnego, usage="initiate")
    print(base64.b64encode(ctx.step()).decode())
