#!/usr/bin/python3
"""A small threaded HTTP CONNECT proxy for tests.  Logs the request line
of every connection to --log ("CONNECT host:port HTTP/1.1").

  connect_proxy.py --port-file F --log L [--status N] [--raw TEXT]
                   [--map HOST=ADDR ...] [--auth USER:PASSWORD]

--status N answers every CONNECT with "HTTP/1.1 N ..." and closes (e.g. 403);
--raw TEXT sends TEXT (with \\r \\n escapes) as the whole reply (malformed);
--map makes the proxy connect to ADDR when asked for HOST;
--auth demands "Proxy-Authorization: Basic" with these credentials (407
otherwise) and logs "auth ok", "auth missing" or "auth bad".
"""

import argparse
import base64
import os
import socket
import sys
import threading


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

    def log(self, line):
        with self.lock, open(self.args.log, "a") as f:
            f.write(line + "\n")

    def handle(self, c):
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = c.recv(1)  # byte by byte: never read past the head
                if not chunk or len(head) > 8192:
                    return
                head += chunk
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            self.log(line)
            parts = line.split()
            if len(parts) != 3 or parts[0] != "CONNECT":
                c.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                return
            if self.args.raw is not None:
                c.sendall(self.args.raw.encode().decode("unicode_escape").encode("latin-1"))
                return
            if self.args.auth is not None:
                want = "Basic " + base64.b64encode(self.args.auth.encode()).decode()
                got = None
                for field in head.split(b"\r\n")[1:]:
                    name, _, value = field.decode("latin-1").partition(":")
                    if name.strip().lower() == "proxy-authorization":
                        got = value.strip()
                self.log("auth " + ("missing" if got is None else "ok" if got == want else "bad"))
                if got != want:
                    c.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                              b"Proxy-Authenticate: Basic realm=\"test\"\r\n\r\n")
                    return
            if self.args.status is not None:
                c.sendall(b"HTTP/1.1 %d Forbidden\r\nContent-Length: 0\r\n\r\n" % self.args.status)
                return
            host, port = parts[1].rsplit(":", 1)
            host = host.strip("[]")
            try:
                up = socket.create_connection((self.maps.get(host, host), int(port)), timeout=10)
                up.settimeout(None)
            except OSError:
                c.sendall(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
                return
            c.sendall(b"HTTP/1.1 200 Connection established\r\nVia: test\r\n\r\n")
            t = threading.Thread(target=pump, args=(up, c), daemon=True)
            t.start()
            pump(c, up)
            t.join()
            up.close()
        except (OSError, ValueError):
            pass
        finally:
            c.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--status", type=int)
    ap.add_argument("--raw")
    ap.add_argument("--map", action="append", default=[])
    ap.add_argument("--auth")
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
