"""TLS test peer: echoes every byte back, or closes right after the handshake,
and logs the SNI name each client sent.

usage: tls_echo_server.py CERT KEY MODE   (MODE: echo | close_notify | abrupt)
Prints "ACCEPT 127.0.0.1:PORT" once listening, like openssl s_server.
"""
import socket
import ssl
import sys
import threading


def serve(conn, ctx, mode):
    tls = ctx.wrap_socket(conn, server_side=True)
    if mode == "close_notify":
        tls.settimeout(2)
        try:
            tls.unwrap()
        except (OSError, ssl.SSLError):
            pass
        return
    if mode == "abrupt":
        return
    while True:
        data = tls.recv(65536)
        if not data:
            break
        tls.sendall(data)


def main():
    cert, key, mode = sys.argv[1:4]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    # Logged so the tests can check what the client sent as SNI.
    ctx.sni_callback = lambda sock, name, c: print("SNI %s" % name, flush=True)
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    print("ACCEPT 127.0.0.1:%d" % ls.getsockname()[1], flush=True)
    while True:
        conn, _ = ls.accept()
        # One thread per client: tests keep one connection open while making another.
        threading.Thread(target=handle, args=(conn, ctx, mode), daemon=True).start()


def handle(conn, ctx, mode):
    try:
        serve(conn, ctx, mode)
    except (OSError, ssl.SSLError) as e:
        print("connection failed: %s" % e, file=sys.stderr, flush=True)
    finally:
        conn.close()


if __name__ == "__main__":
    main()
