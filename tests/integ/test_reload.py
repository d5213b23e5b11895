#!/usr/bin/python3
"""Live reload: SIGHUP and the control socket's reload command.

A bad new configuration is refused and the old one keeps running; an
unchanged relay keeps its warm session; a changed relay finishes its
transaction and then QUITs; removed and added relays; and a stream of
messages during repeated reloads loses and duplicates nothing.
"""

import json
import os
import signal
import socket
import threading
import time

from mpharness import (MSG, SENDER, TestFailure, check, delivered_ok, main, send_one,
                       wait_for)


def transcript(up):
    return "\n".join(up.log_lines())


def connections(up):
    return [e[0] for e in up.events() if e[1] == "*" and e[2].startswith("connect ")]


def commands(up, conn):
    return [e[2] for e in up.events(conn) if e[1] == "C"]


def control(d, line):
    """One control request; the parsed JSON answer."""
    path = os.path.join(d.dir, "control.sock")
    # It is created just after the submission socket the harness waits for.
    wait_for(lambda: os.path.exists(path), 10, lambda: "no control socket:\n" + d.log())
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sk:
        sk.settimeout(20)
        sk.connect(path)
        sk.sendall((line + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sk.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)


def write_config(s, d, *relays, **kw):
    """Replace the daemon's config file (same placeholders as at start)."""
    text = s.config(*relays, **kw)
    tmp = d.conf + ".new"
    with open(tmp, "w") as f:
        f.write(text.replace("@SOCKET@", d.socket)
                .replace("@CONTROL@", os.path.join(d.dir, "control.sock"))
                .replace("@SPOOL@", os.path.join(d.dir, "spool")))
    os.rename(tmp, d.conf)


def write_raw(d, text):
    with open(d.conf, "w") as f:
        f.write(text)


def reload_ok(d):
    a = control(d, "reload")
    check(a.get("ok") is True, "reload refused: %r\n%s" % (a, d.log()))
    return a


def sighup(d, before):
    """SIGHUP, then wait for the daemon's log to show one more reload outcome."""
    os.kill(d.pid, signal.SIGHUP)
    wait_for(lambda: d.log().count("reload") > before, 10, lambda: "no reload logged:\n" + d.log())


def case_reload_bad_syntax(s):
    up = s.fakesmtp("")
    d = s.daemon(s.relay(up.port))
    delivered_ok(send_one(d))
    good = open(d.conf).read()
    write_raw(d, good + "\nrelays = { broken = { hosts = [ \"x\" ] \n")
    a = control(d, "reload")
    check(a.get("ok") is False, "a syntax error was accepted: %r" % a)
    err = a.get("error", "")
    check("mailpool.conf:" in err and "syntax error" in err,
          "error does not name file:line: %r" % err)
    before = d.log().count("reload refused")
    os.kill(d.pid, signal.SIGHUP)
    wait_for(lambda: d.log().count("reload refused") > before, 10,
             lambda: "SIGHUP with a bad file not refused:\n" + d.log())
    delivered_ok(send_one(d))
    check(connections(up) == [1], "the running relay was disturbed: %r" % connections(up))


def case_reload_bad_value(s):
    up = s.fakesmtp("")
    d = s.daemon(s.relay(up.port))
    write_config(s, d, s.relay(up.port, options=("extended", "no_such_option")))
    a = control(d, "reload")
    check(a.get("ok") is False, "an invalid value was accepted: %r" % a)
    err = a.get("error", "")
    check("mailpool.conf:" in err and "no_such_option" in err,
          "error does not name file:line and the value: %r" % err)
    d.wait_log("reload refused")
    delivered_ok(send_one(d))


def case_reload_keeps_session(s):
    up = s.fakesmtp("")
    relay = s.relay(up.port, pool={"max_connections": 1})
    d = s.daemon(relay)
    delivered_ok(send_one(d))
    for i in range(3):
        if i == 1:
            sighup(d, d.log().count("reload: config="))
        else:
            a = reload_ok(d)
            check(a.get("relays_kept") == 1 and a.get("relays_changed") == 0,
                  "unchanged relay not kept: %r" % a)
        delivered_ok(send_one(d))
    check(connections(up) == [1], "the warm session was not kept: %r\n%s"
          % (connections(up), transcript(up)))
    check(len(up.messages()) == 4, "messages: %r" % up.messages())


def case_reload_changed_drains(s):
    # The first message's final dot is answered late, so the reload lands mid-transaction.
    up = s.fakesmtp("on dot #1 delay 1500")
    d = s.daemon(s.relay(up.port, timeout=10, pool={"max_connections": 1}))
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("r", send_one(d)), daemon=True)
    t.start()
    wait_for(lambda: any(c == "." or c.startswith("DATA") for c in commands(up, 1)), 10,
             lambda: "the message never reached DATA:\n" + transcript(up))
    write_config(s, d, s.relay(up.port, timeout=11, pool={"max_connections": 1}))
    a = reload_ok(d)
    check(a.get("relays_changed") == 1 and a.get("relays_kept") == 0, "answer: %r" % a)
    t.join(30)
    check("r" in box, "the in-flight message got no answer")
    delivered_ok(box["r"])
    wait_for(lambda: "QUIT" in commands(up, 1), 10,
             lambda: "the old session did not QUIT:\n" + transcript(up))
    cmds = commands(up, 1)
    check(cmds.index("QUIT") > cmds.index("DATA"), "QUIT before the transaction ended: %r" % cmds)
    delivered_ok(send_one(d))
    check(connections(up) == [1, 2], "the next message did not use a new session: %r"
          % connections(up))
    check(len(up.messages()) == 2, "messages: %r" % up.messages())


def case_reload_removed_relay(s):
    up = s.fakesmtp("")
    other = s.fakesmtp("")
    d = s.daemon(s.relay(up.port), s.relay(other.port, name="other"))
    delivered_ok(send_one(d, mail_params="XRELAY=other"))
    write_config(s, d, s.relay(up.port))
    a = reload_ok(d)
    check(a.get("relays_removed") == 1 and a.get("relays_kept") == 1, "answer: %r" % a)
    wait_for(lambda: "QUIT" in commands(other, 1), 10,
             lambda: "the removed relay's idle session did not QUIT:\n" + transcript(other))
    r = send_one(d, mail_params="XRELAY=other")
    check(r.mail.code == 550, "XRELAY to a removed relay: %r" % r)
    delivered_ok(send_one(d))
    check(connections(up) == [1], "the kept relay lost its session: %r" % connections(up))


def case_reload_added_relay(s):
    up = s.fakesmtp("")
    extra = s.fakesmtp("")
    d = s.daemon(s.relay(up.port))
    r = send_one(d, mail_params="XRELAY=extra")
    check(r.mail.code == 550, "unknown relay accepted: %r" % r)
    write_config(s, d, s.relay(up.port), s.relay(extra.port, name="extra"))
    a = reload_ok(d)
    check(a.get("relays_added") == 1 and a.get("relays_kept") == 1, "answer: %r" % a)
    delivered_ok(send_one(d, mail_params="XRELAY=extra"))
    check(len(extra.messages()) == 1, "not delivered through the added relay")


def stream(s, mode):
    """300 messages from 4 threads while the config flips 10 times."""
    up = s.fakesmtp("")

    def relay(t):
        return s.relay(up.port, timeout=t, mode=mode, pool={"max_connections": 3})

    d = s.daemon(relay(10))
    total, nthreads = 300, 4
    errors = []
    retries = [0]
    lock = threading.Lock()

    def client(k):
        try:
            for i in range(k, total, nthreads):
                marker = "reload-%d-%04d" % (os.getpid(), i)
                body = MSG.replace(b"Hello.", ("Hello %s." % marker).encode())
                for attempt in range(20):
                    r = send_one(d, body=body)
                    codes = [x.code for x in r.results] or [r.mail.code]
                    if codes == [250]:
                        break
                    check(all(c // 100 == 4 for c in codes), "message %d: %r" % (i, r))
                    with lock:
                        retries[0] += 1
                    time.sleep(0.05)
                else:
                    raise TestFailure("message %d never accepted" % i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(nthreads)]
    for t in threads:
        t.start()
    for n in range(10):
        time.sleep(0.15)
        write_config(s, d, relay(11 if n % 2 == 0 else 10))
        if n % 3 == 2:
            sighup(d, d.log().count("reload: config="))
        else:
            a = reload_ok(d)
            check(a.get("relays_changed") == 1, "the relay did not change: %r" % a)
    for t in threads:
        t.join(120)
        check(not t.is_alive(), "a client thread is stuck")
    if errors:
        raise errors[0]
    wait_for(lambda: len(up.messages()) >= total, 60,
             lambda: "only %d of %d messages arrived" % (len(up.messages()), total))
    time.sleep(0.5)
    seen = {}
    for m in up.messages():
        text = m.eml.decode("utf-8", "replace")
        start = text.find("reload-")
        check(start >= 0, "message without a marker: %r" % m)
        key = text[start:text.find(".", start)]
        seen[key] = seen.get(key, 0) + 1
    dups = [k for k, v in seen.items() if v > 1]
    check(not dups, "delivered more than once: %r" % dups[:10])
    check(len(seen) == total, "%d distinct messages arrived, expected %d" % (len(seen), total))
    check(d.log().count("reload: config=") == 10, "not every reload was applied:\n" + d.log())
    sys_note = "retried %d times" % retries[0]
    print(sys_note)


def case_reload_stream_relay(s):
    stream(s, "relay")


def case_reload_stream_queue(s):
    stream(s, "queue")


CASES = {
    "reload_bad_syntax": case_reload_bad_syntax,
    "reload_bad_value": case_reload_bad_value,
    "reload_keeps_session": case_reload_keeps_session,
    "reload_changed_drains": case_reload_changed_drains,
    "reload_removed_relay": case_reload_removed_relay,
    "reload_added_relay": case_reload_added_relay,
    "reload_stream_relay": case_reload_stream_relay,
    "reload_stream_queue": case_reload_stream_queue,
}

if __name__ == "__main__":
    main(CASES)
