#!/usr/bin/python3
"""A small threaded SOCKS5 proxy for tests (RFC 1928 CONNECT, optional
RFC 1929 user/password).  It logs every requested destination to --log,
one line per connection: "connect ATYP HOST PORT" (ATYP: name, ipv4, ipv6),
then "auth ok USER" / "auth failed USER" when credentials are used.

  socks5_proxy.py --port-file F --log L [--user U --password P]
                  [--reply N] [--raw HEX] [--map HOST=ADDR ...] [--port-map P=Q ...]

--reply N answers every CONNECT with reply code N (e.g. 5: refused) instead
of connecting; --raw HEX sends these bytes as the whole reply to the
CONNECT (malformed replies); --map makes the proxy connect to ADDR when
asked for HOST (test names that resolve nowhere), --port-map to port Q when
asked for port P (so a test can ask for 465 or 587 without binding them).
"""

import argparse
import os
import socket
import struct
import sys
import threading


def recv_exact(sk, n):
    data = b""
    while len(data) < n:
        chunk = sk.recv(n - len(data))
        if not chunk:
            raise ConnectionError("eof")
        data += chunk
    return data


def pump(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    finally:
        for sk in (a, b):
            try:
                sk.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Proxy:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.maps = dict(m.split("=", 1) for m in args.map)
        self.ports = {int(a): int(b) for a, b in (m.split("=", 1) for m in args.port_map)}

    def log(self, line):
        with self.lock, open(self.args.log, "a") as f:
            f.write(line + "\n")

    def handle(self, c):
        try:
            ver, n = recv_exact(c, 2)
            methods = recv_exact(c, n)
            want = 2 if self.args.user is not None else 0
            if ver != 5 or want not in methods:
                c.sendall(b"\x05\xff")
                self.log("no-method offered=%s" % methods.hex())
                return
            c.sendall(bytes([5, want]))
            if want == 2:
                v, ul = recv_exact(c, 2)
                user = recv_exact(c, ul).decode()
                (pl,) = recv_exact(c, 1)
                pw = recv_exact(c, pl).decode()
                ok = user == self.args.user and pw == self.args.password
                self.log("auth %s %s" % ("ok" if ok else "failed", user))
                c.sendall(b"\x01" + (b"\x00" if ok else b"\x01"))
                if not ok:
                    return
            ver, cmd, _, atyp = recv_exact(c, 4)
            if atyp == 1:
                host, kind = socket.inet_ntop(socket.AF_INET, recv_exact(c, 4)), "ipv4"
            elif atyp == 4:
                host, kind = socket.inet_ntop(socket.AF_INET6, recv_exact(c, 16)), "ipv6"
            else:
                (ln,) = recv_exact(c, 1)
                host, kind = recv_exact(c, ln).decode(), "name"
            (port,) = struct.unpack("!H", recv_exact(c, 2))
            self.log("connect %s %s %d" % (kind, host, port))
            if self.args.raw is not None:
                c.sendall(bytes.fromhex(self.args.raw))
                return
            if self.args.reply is not None:
                c.sendall(bytes([5, self.args.reply, 0, 1, 0, 0, 0, 0, 0, 0]))
                return
            try:
                up = socket.create_connection((self.maps.get(host, host),
                                               self.ports.get(port, port)), timeout=10)
                up.settimeout(None)
            except OSError:
                c.sendall(b"\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00")
                return
            bound = up.getsockname()
            c.sendall(b"\x05\x00\x00\x01" + socket.inet_aton(bound[0])
                      + struct.pack("!H", bound[1]))
            t = threading.Thread(target=pump, args=(up, c), daemon=True)
            t.start()
            pump(c, up)
            t.join()
            up.close()
        except (OSError, ConnectionError, ValueError):
            pass
        finally:
            c.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--reply", type=int)
    ap.add_argument("--raw")
    ap.add_argument("--map", action="append", default=[])
    ap.add_argument("--port-map", action="append", default=[])
    args = ap.parse_args()
    proxy = Proxy(args)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % srv.getsockname()[1])
    os.rename(tmp, args.port_file)
    while True:
        c, _ = srv.accept()
        threading.Thread(target=proxy.handle, args=(c,), daemon=True).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
