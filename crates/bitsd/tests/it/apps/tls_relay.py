"""A relay in the middle of TLS, as an NTLM/Kerberos relay attack places itself: it answers
clients with its own certificate (CERT, KEY) and forwards every byte to TARGET_PORT on
127.0.0.1 over a TLS connection of its own. Prints its port; serves until killed.
Usage: tls_relay.py CERT KEY TARGET_PORT"""
import select
import socket
import ssl
import sys
import threading

cert, key, target = sys.argv[1], sys.argv[2], int(sys.argv[3])
server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server_ctx.load_cert_chain(cert, key)
client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
client_ctx.check_hostname = False
client_ctx.verify_mode = ssl.CERT_NONE
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(16)
print(listener.getsockname()[1], flush=True)


def serve(raw):
    """One relayed connection, both directions in this one thread: an SSL socket must not be
    read in one thread while another writes it (OpenSSL's objects are not thread-safe; two
    pump threads once stalled a relayed handshake under load)."""
    front = back = None
    try:
        raw.settimeout(10)
        front = server_ctx.wrap_socket(raw, server_side=True)
        back = client_ctx.wrap_socket(
            socket.create_connection(("127.0.0.1", target), timeout=10)
        )
        for s in (front, back):
            s.setblocking(False)
        while True:
            ready = [s for s in (front, back) if s.pending()]
            if not ready:
                ready = select.select([front, back], [], [], 30)[0]
                if not ready:
                    return
            for src in ready:
                dst = back if src is front else front
                try:
                    data = src.recv(65536)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    # A TLS record without application data (a session ticket).
                    continue
                if not data:
                    return
                dst.settimeout(10)
                dst.sendall(data)
                dst.setblocking(False)
    except OSError:
        pass
    finally:
        for s in (front, back, raw):
            try:
                if s is not None:
                    s.close()
            except OSError:
                pass


while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
