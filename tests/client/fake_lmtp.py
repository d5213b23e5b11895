#!/usr/bin/python3
"""A scripted fake LMTP server on a Unix socket, for the client tests.

Usage: fake_lmtp.py SOCKET SCRIPT.json LOGDIR

The script is a JSON object giving the reply to each command.  A reply is a
string ("250 ok", lines separated by "\\n" for a multiline reply), null for
"never answer", "HANG" (stop answering but keep reading) or "CLOSE" (hang up);
a last line "CLOSE" hangs up right after sending the lines before it.
Keys: greeting, lhlo, mail, rcpt, data, dot, rset, noop, quit.  For mail,
rcpt, data and dot the value may be a list: each command takes the next
entry and the last one repeats.  "dot" gives one reply per accepted
recipient after the data, in order.

It records into LOGDIR: commands.log (each command line, one per line, and
"CONNECT" when a client connects), chunks.log (each read of command bytes,
as a JSON string, per line), data-N.bin (the raw bytes of the N-th message
after 354, terminator included).  LOGDIR/ready appears once it listens.
Connections are served one after the other; it runs until killed.
"""
import json
import os
import socket
import sys

DEFAULTS = {
    "greeting": "220 fake.test LMTP ready",
    "lhlo": "250-fake.test\n250-PIPELINING\n250-ENHANCEDSTATUSCODES\n250-8BITMIME\n"
            "250-SMTPUTF8\n250-SIZE 10000000\n250-XRELAY\n250 XMODE",
    "mail": "250 2.1.0 Ok",
    "rcpt": "250 2.1.5 Ok",
    "data": "354 End data with <CR><LF>.<CR><LF>",
    "dot": "250 2.0.0 Ok: delivered",
    "rset": "250 2.0.0 Ok",
    "noop": "250 2.0.0 Ok",
    "quit": "221 2.0.0 Bye",
}


class Closed(Exception):
    pass


class Session:
    def __init__(self, conn, script, logdir, counters):
        self.conn = conn
        self.script = script
        self.logdir = logdir
        self.counters = counters
        self.buf = b""
        self.mail_ok = False
        self.accepted = 0
        self.hanging = False

    def take(self, key):
        value = self.script.get(key, DEFAULTS[key])
        if isinstance(value, list):
            n = self.counters.get(key, 0)
            self.counters[key] = n + 1
            value = value[min(n, len(value) - 1)]
        return value

    def log(self, name, text):
        with open(os.path.join(self.logdir, name), "a", encoding="latin-1") as f:
            f.write(text + "\n")

    def reply(self, value):
        if value is None or value == "HANG":
            self.hanging = True
            return
        if value == "CLOSE":
            raise Closed()
        lines = value.split("\n")
        close = lines[-1] == "CLOSE"
        if close:
            lines.pop()
        self.conn.sendall(b"".join(line.encode("latin-1") + b"\r\n" for line in lines))
        if close:
            raise Closed()

    def recv(self):
        chunk = self.conn.recv(1 << 20)
        if not chunk:
            raise Closed()
        return chunk

    def read_line(self):
        while b"\n" not in self.buf:
            chunk = self.recv()
            self.log("chunks.log", json.dumps(chunk.decode("latin-1")))
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r").decode("latin-1")

    def read_data(self):
        while True:
            if self.buf.startswith(b".\r\n"):
                end = 3
                break
            pos = self.buf.find(b"\r\n.\r\n")
            if pos >= 0:
                end = pos + 5
                break
            self.buf += self.recv()
        data, self.buf = self.buf[:end], self.buf[end:]
        n = self.counters.get("messages", 0) + 1
        self.counters["messages"] = n
        with open(os.path.join(self.logdir, "data-%d.bin" % n), "wb") as f:
            f.write(data)

    def run(self):
        self.log("commands.log", "CONNECT")
        self.reply(self.take("greeting"))
        while True:
            line = self.read_line()
            self.log("commands.log", line)
            if self.hanging:
                continue
            verb = line.split(" ", 1)[0].upper()
            if verb == "LHLO":
                self.reply(self.take("lhlo"))
            elif verb == "MAIL":
                r = self.take("mail")
                self.mail_ok = r is not None and r[:1] == "2"
                self.accepted = 0
                self.reply(r)
            elif verb == "RCPT":
                if not self.mail_ok:
                    self.reply("503 5.5.1 Error: need MAIL command")
                    continue
                r = self.take("rcpt")
                if r is not None and r[:1] == "2":
                    self.accepted += 1
                self.reply(r)
            elif verb == "DATA":
                if not self.mail_ok or self.accepted == 0:
                    self.reply("503 5.5.1 Error: no valid recipients")
                    continue
                r = self.take("data")
                self.reply(r)
                if r is None or not r.startswith("354"):
                    continue
                self.read_data()
                for _ in range(self.accepted):
                    self.reply(self.take("dot"))
                    if self.hanging:
                        break
                self.mail_ok = False
            elif verb == "RSET":
                self.mail_ok = False
                self.reply(self.take("rset"))
            elif verb == "NOOP":
                self.reply(self.take("noop"))
            elif verb == "QUIT":
                self.reply(self.take("quit"))
                raise Closed()
            else:
                self.reply("500 5.5.2 Error: command not recognized")


def main():
    path, script_file, logdir = sys.argv[1:4]
    with open(script_file, encoding="utf-8") as f:
        script = json.load(f)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(16)
    open(os.path.join(logdir, "ready"), "w").close()
    counters = {}
    while True:
        conn, _ = srv.accept()
        try:
            Session(conn, script, logdir, counters).run()
        except (Closed, ConnectionError):
            pass
        finally:
            conn.close()


if __name__ == "__main__":
    main()
