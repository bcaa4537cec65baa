"""A relay in the middle of TLS, as an NTLM/Kerberos relay attack places itself: it answers
clients with its own certificate (CERT, KEY) and forwards every byte to TARGET_PORT on
127.0.0.1 over a TLS connection of its own. Prints its port; serves until killed.
Usage: tls_relay.py CERT KEY TARGET_PORT"""
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


def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass


def serve(raw):
    try:
        front = server_ctx.wrap_socket(raw, server_side=True)
        back = client_ctx.wrap_socket(socket.create_connection(("127.0.0.1", target)))
    except OSError:
        raw.close()
        return
    threading.Thread(target=pump, args=(front, back), daemon=True).start()
    pump(back, front)


while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
