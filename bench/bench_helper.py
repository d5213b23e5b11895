#!/usr/bin/python3
"""Helpers for relay_bench.sh and queue_bench.sh: time one-process-per-message
clients, hold many idle LMTP (RFC 2033) connections open, ask the control
socket, count what an smtp-sink received, and print the final tables.

  bench_helper.py procs -p PAR -n N -i MSGFILE [-o LATFILE] -- CMD ARG...
  bench_helper.py timed -n N -- CMD ARG...
  bench_helper.py idle -k K -s SUBMIT_SOCKET -r READYFILE
  bench_helper.py control -s CONTROL_SOCKET REQUEST [--wait-idle K]
  bench_helper.py report RESULTS RSSFILE
  bench_helper.py sink -s COUNT_SOCKET -- SMTP_SINK_COMMAND...
  bench_helper.py e2e -S COUNT_SOCKET -n N [-C CONTROL_SOCKET] [-t SECS] -- CMD ARG...
  bench_helper.py queue-report RESULTS

procs/timed print "key value" lines in mpload's format (count, failed,
seconds, msgs/s, median_us, p90_us, p99_us) and exit 1 if anything failed.
e2e runs a submitting command, echoes its lines and adds e2e_seconds and
e2e_msgs/s: the time from its start until the sink has N more messages.
"""
import bisect
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time


def percentile(sorted_vals, pct):
    """Nearest rank, the same rule as mpload."""
    rank = (len(sorted_vals) * pct + 99) // 100
    return sorted_vals[max(rank, 1) - 1]


def print_stats(count, failed, secs, lat_us):
    print("count %d" % count)
    print("failed %d" % failed)
    print("seconds %.3f" % secs)
    print("msgs/s %.1f" % ((count - failed) / secs if secs > 0 else 0.0))
    if lat_us:
        s = sorted(lat_us)
        print("median_us %d" % percentile(s, 50))
        print("p90_us %d" % percentile(s, 90))
        print("p99_us %d" % percentile(s, 99))


def split_cmd(args):
    if "--" not in args:
        sys.exit("missing -- before the command")
    i = args.index("--")
    opts, cmd = args[:i], args[i + 1:]
    parsed = {}
    for j in range(0, len(opts), 2):
        parsed[opts[j]] = opts[j + 1]
    return parsed, cmd


def cmd_procs(args):
    """PAR workers, each running its share of N processes back to back, every
    process fed the message on stdin; each process's wall time is a latency."""
    opts, cmd = split_cmd(args)
    par, n = int(opts["-p"]), int(opts["-n"])
    msg = open(opts["-i"], "rb").read()
    lat = [[] for _ in range(par)]
    failures = []

    def worker(w):
        share = n // par + (1 if w < n % par else 0)
        for _ in range(share):
            t0 = time.monotonic_ns()
            r = subprocess.run(cmd, input=msg, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
            lat[w].append((time.monotonic_ns() - t0) // 1000)
            if r.returncode != 0:
                failures.append("exit %d: %s" % (r.returncode,
                                                 r.stderr.decode(errors="replace").strip()))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(par)]
    t0 = time.monotonic_ns()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = (time.monotonic_ns() - t0) / 1e9
    all_lat = [x for w in lat for x in w]
    if "-o" in opts:
        with open(opts["-o"], "w") as f:
            f.writelines("%d\n" % x for x in all_lat)
    if failures:
        sys.stderr.write("%d failed, first: %s\n" % (len(failures), failures[0]))
    print_stats(len(all_lat), len(failures), secs, all_lat)
    return 1 if failures else 0


def cmd_timed(args):
    """One process that sends N messages itself (smtp-source): only the
    total time is known."""
    opts, cmd = split_cmd(args)
    n = int(opts["-n"])
    t0 = time.monotonic_ns()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    secs = (time.monotonic_ns() - t0) / 1e9
    if r.returncode != 0:
        sys.stderr.write("exit %d: %s\n" % (r.returncode, r.stderr.decode(errors="replace")))
    print_stats(n, 0 if r.returncode == 0 else n, secs, [])
    return 0 if r.returncode == 0 else 1


def read_reply(f):
    """One complete (possibly multiline) reply; its code, or 0 on EOF."""
    while True:
        line = f.readline()
        if not line:
            return 0
        if len(line) < 4 or line[3:4] != b"-":
            return int(line[:3]) if line[:3].isdigit() else 0


def cmd_idle(args):
    """Open K submission connections, each past the greeting and LHLO, then
    keep them open (doing nothing) until SIGTERM."""
    opts = dict(zip(args[0::2], args[1::2]))
    k, path, ready = int(opts["-k"]), opts["-s"], opts["-r"]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < k + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, k + 64), hard))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    conns = []
    for i in range(k):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(path)
        f = s.makefile("rb")
        if read_reply(f) != 220:
            sys.exit("connection %d: no 220 greeting" % i)
        s.sendall(b"LHLO bench.mailpool.test\r\n")
        if read_reply(f) != 250:
            sys.exit("connection %d: LHLO not answered 250" % i)
        conns.append((s, f))
    with open(ready, "w") as r:
        r.write("%d\n" % len(conns))
    while not stop.wait(0.2):
        pass
    for s, f in conns:
        f.close()
        s.close()
    return 0


def control(path, request):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(request.encode() + b"\n")
        f = s.makefile("rb")
        return json.loads(f.readline())


def cmd_control(args):
    """Print one control answer; with --wait-idle K, first wait (up to 20 s)
    until every relay has K idle sessions."""
    path, request = args[1], args[2]
    want = int(args[4]) if len(args) > 4 and args[3] == "--wait-idle" else None
    deadline = time.monotonic() + 20
    while True:
        ans = control(path, request)
        if want is None or all(r["idle"] >= want for r in ans.get("relays", [])):
            break
        if time.monotonic() > deadline:
            sys.stderr.write("pool did not reach %d idle sessions: %s\n" % (want, ans))
            return 1
        time.sleep(0.1)
    print(json.dumps(ans))
    return 0


def fmt_ms(us):
    return "%.3f" % (us / 1000.0) if us is not None else "-"


def cmd_report(args):
    """RESULTS: one line per case, "role|label|key value;key value;...".
    RSSFILE: "role|label|VmRSS kB|VmHWM kB" per line.  Roles name the cases
    the ratios and targets use: mp1/mpN mailpool, ms1/msN msmtp, ssN
    smtp-source; "idle" and "clients" the memory figures."""
    rows, res = [], {}
    for line in open(args[0]):
        role, label, kv = line.rstrip("\n").split("|", 2)
        d = {"label": label}
        for item in kv.split(";"):
            if item:
                k, v = item.split(" ", 1)
                d[k] = float(v)
        rows.append(role)
        res[role] = d

    def get(role, key):
        return res.get(role, {}).get(key)

    print()
    print("%-40s %8s %8s %10s %10s %10s" % ("case", "messages", "seconds", "msgs/s",
                                            "median ms", "p99 ms"))
    print("-" * 91)
    for role in rows:
        d = res[role]
        print("%-40s %8d %8.3f %10.1f %10s %10s" % (
            d["label"], d["count"], d["seconds"], d["msgs/s"], fmt_ms(d.get("median_us")),
            fmt_ms(d.get("p99_us"))))
    print()
    print("Client, mailpoold, stunnel and smtp-sink all share this machine's %d CPU(s):"
          % os.cpu_count())
    print("an 8-way figure partly measures the sink and stunnel, not only the client.")
    print("smtp-source reports no per-message latency (one process, -d: reused sessions).")

    def ratio(a, b):
        return a / b if a is not None and b else None

    mp1, mp8, ms1, ms8, ss8 = "mp1", "mpN", "ms1", "msN", "ssN"
    r_msmtp = ratio(get(mp8, "msgs/s"), get(ms8, "msgs/s"))
    r_source = ratio(get(mp8, "msgs/s"), get(ss8, "msgs/s"))
    r_median = ratio(get(ms1, "median_us"), get(mp1, "median_us"))
    print()
    print("ratios")
    if r_msmtp is not None:
        print("  mailpool-8 / msmtp-8 throughput:           %8.1fx" % r_msmtp)
    if r_source is not None:
        print("  mailpool-8 / smtp-source-d-8 throughput:   %8.1f%%" % (100 * r_source))
    if r_median is not None:
        print("  msmtp sequential median / mailpool-1 median: %6.1fx (%s ms vs %s ms)" % (
            r_median, fmt_ms(get(ms1, "median_us")), fmt_ms(get(mp1, "median_us"))))
    r_plain = ratio(get("mpPN", "msgs/s"), get(ss8, "msgs/s"))
    r_tls = ratio(get(mp8, "msgs/s"), get("stN", "msgs/s"))
    if r_plain is not None:
        print("  like for like, plaintext: mailpool-8 / smtp-source-d-8: %6.1f%%"
              % (100 * r_plain))
    if r_tls is not None:
        print("  like for like, TLS: mailpool-8 / smtp-source-d-8 via TLS: %6.1f%%"
              % (100 * r_tls))

    rss = {}
    print()
    print("mailpoold memory                        VmRSS      VmHWM")
    for line in open(args[1]):
        role, label, r, h = line.rstrip("\n").split("|")
        rss[role] = (int(r), int(h), label)
        print("  %-34s %7.1f MiB %7.1f MiB" % (label, int(r) / 1024, int(h) / 1024))

    def target(name, value, ok, shown):
        verdict = "n/a " if value is None else ("PASS" if ok(value) else "MISS")
        print("  %-52s %-16s %s" % (name, shown(value) if value is not None else "-", verdict))

    idle = rss.get("idle")
    clients = rss.get("clients")
    print()
    print("SPEC section 7 targets (this run)")
    target("relay median < 1 ms (1 client)", get(mp1, "median_us"), lambda v: v < 1000,
           lambda v: fmt_ms(v) + " ms")
    target("relay p99 < 5 ms (1 client)", get(mp1, "p99_us"), lambda v: v < 5000,
           lambda v: fmt_ms(v) + " ms")
    target("relay median < 1 ms (8 clients)", get(mp8, "median_us"), lambda v: v < 1000,
           lambda v: fmt_ms(v) + " ms")
    target("relay p99 < 5 ms (8 clients)", get(mp8, "p99_us"), lambda v: v < 5000,
           lambda v: fmt_ms(v) + " ms")
    target("8-client throughput >= 50x msmtp-8", r_msmtp, lambda v: v >= 50,
           lambda v: "%.1fx" % v)
    target("8-client throughput >= 50% of smtp-source -d 8", r_source, lambda v: v >= 0.5,
           lambda v: "%.1f%%" % (100 * v))
    target("  same, both plaintext (mailpool relay 'plain')", r_plain, lambda v: v >= 0.5,
           lambda v: "%.1f%%" % (100 * v))
    target("relay median < 1 ms (8 clients, plaintext)", get("mpPN", "median_us"),
           lambda v: v < 1000, lambda v: fmt_ms(v) + " ms")
    target("RSS idle < 10 MiB", idle[0] if idle else None, lambda v: v < 10 * 1024,
           lambda v: "%.1f MiB" % (v / 1024))
    target("RSS %s < 64 MiB" % (clients[2] if clients else "with clients"),
           clients[0] if clients else None,
           lambda v: v < 64 * 1024, lambda v: "%.1f MiB" % (v / 1024))
    print("  (the 64 MiB target assumes 32 upstream TLS sessions; this run holds 8)")
    return 0


def cmd_sink(args):
    """Run smtp-sink with -c (it prints "sess=S quit=Q mesg=M" and a CR each
    time a message's final dot arrives), note when each count was first seen,
    and answer on a Unix socket:
      "count"             -> "M"
      "wait K TIMEOUT_S"  -> "M T" once M >= K (T: CLOCK_MONOTONIC ns when the
                             count first reached K), or "timeout M".
    SIGTERM stops the sink too."""
    opts, cmd = split_cmd(args)
    path = opts["-s"]
    if "-c" not in cmd:
        sys.exit("sink: the smtp-sink command needs -c")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    counts, stamps = [0], [time.monotonic_ns()]
    cond = threading.Condition()
    done = threading.Event()

    def reader():
        pending = b""
        while True:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            now = time.monotonic_ns()
            pending += chunk
            *lines, pending = pending.replace(b"\n", b"\r").split(b"\r")
            newest = None
            for line in lines:
                fields = [f for f in line.split() if f.startswith(b"mesg=")]
                if fields:
                    newest = int(fields[-1][5:])
                elif line.strip():
                    sys.stderr.write("smtp-sink: %s\n" % line.decode(errors="replace"))
            if newest is not None and newest > counts[-1]:
                with cond:
                    counts.append(newest)
                    stamps.append(now)
                    cond.notify_all()
        done.set()
        with cond:
            cond.notify_all()

    def answer(conn):
        with conn:
            f = conn.makefile("rwb")
            for req in f:
                words = req.split()
                if words[:1] == [b"count"]:
                    with cond:
                        f.write(b"%d\n" % counts[-1])
                elif words[:1] == [b"wait"] and len(words) == 3:
                    want, deadline = int(words[1]), time.monotonic() + float(words[2])
                    with cond:
                        while counts[-1] < want and not done.is_set():
                            left = deadline - time.monotonic()
                            if left <= 0:
                                break
                            cond.wait(left)
                        if counts[-1] >= want:
                            i = bisect.bisect_left(counts, want)
                            f.write(b"%d %d\n" % (counts[-1], stamps[i]))
                        else:
                            f.write(b"timeout %d\n" % counts[-1])
                else:
                    f.write(b"error\n")
                f.flush()

    threading.Thread(target=reader, daemon=True).start()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(16)
    srv.settimeout(0.2)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.is_set() and not done.is_set():
        try:
            conn, _ = srv.accept()
        except socket.timeout:
            continue
        threading.Thread(target=answer, args=(conn,), daemon=True).start()
    srv.close()
    proc.terminate()
    proc.wait()
    return 0 if stop.is_set() else 1


def sink_ask(path, request, timeout):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout + 10)
        s.connect(path)
        s.sendall(request.encode() + b"\n")
        return s.makefile("rb").readline().decode().split()


def cmd_e2e(args):
    """Run a submitting command (mpload, or procs around sendmail) and wait
    until the sink has N more messages than before it started."""
    opts, cmd = split_cmd(args)
    path, n = opts["-S"], int(opts["-n"])
    timeout = float(opts.get("-t", "600"))
    base = int(sink_ask(path, "count", 10)[0])
    t0 = time.monotonic_ns()
    r = subprocess.run(cmd, stdout=subprocess.PIPE)
    sys.stdout.write(r.stdout.decode())
    if r.returncode != 0:
        sys.stderr.write("e2e: submitting command exited %d\n" % r.returncode)
        return 1
    ans = sink_ask(path, "wait %d %g" % (base + n, timeout), timeout)
    if not ans or ans[0] in ("timeout", "error"):
        sys.stderr.write("e2e: the sink got %s of %d messages within %g s\n"
                         % (int(ans[1]) - base if len(ans) > 1 else "?", n, timeout))
        return 1
    secs = (int(ans[1]) - t0) / 1e9
    print("e2e_seconds %.3f" % secs)
    print("e2e_msgs/s %.1f" % (n / secs))
    if int(ans[0]) > base + n:
        sys.stderr.write("e2e: the sink got %d messages, %d more than sent\n"
                         % (int(ans[0]) - base, int(ans[0]) - base - n))
    if "-C" in opts:
        # Untimed: the next case starts with an empty queue.
        deadline = time.monotonic() + 60
        while control(opts["-C"], "status").get("queued", 0) != 0:
            if time.monotonic() > deadline:
                sys.stderr.write("e2e: mailpoold's queue did not drain\n")
                return 1
            time.sleep(0.05)
    return 0


def cmd_queue_report(args):
    """RESULTS as for report, roles mq1/mqN (mailpool queue mode) and
    pf1/pfN (Postfix null client)."""
    rows, res = [], {}
    for line in open(args[0]):
        role, label, kv = line.rstrip("\n").split("|", 2)
        d = {"label": label}
        for item in kv.split(";"):
            if item:
                k, v = item.split(" ", 1)
                d[k] = float(v)
        rows.append(role)
        res[role] = d

    def get(role, key):
        return res.get(role, {}).get(key)

    print()
    print("%-36s %6s %9s %10s %9s %9s %9s %10s" % (
        "case", "msgs", "submit s", "submit/s", "median ms", "p99 ms", "e2e s", "e2e msgs/s"))
    print("-" * 104)
    for role in rows:
        d = res[role]
        print("%-36s %6d %9.3f %10.1f %9s %9s %9.3f %10.1f" % (
            d["label"], d["count"], d["seconds"], d["msgs/s"], fmt_ms(d.get("median_us")),
            fmt_ms(d.get("p99_us")), d["e2e_seconds"], d["e2e_msgs/s"]))
    print()
    print("submit: until the last submitter got its answer -- for mailpool the 250 that")
    print("  follows fsync (time-to-durable), for Postfix sendmail's exit (after postdrop")
    print("  wrote the maildrop file).  median/p99: per message, that hand-off.")
    print("e2e: from the start of the submissions until smtp-sink had received all of them.")
    print("Submitters, mailpoold or Postfix, and smtp-sink share this machine's %d CPU(s);"
          % os.cpu_count())
    print("the 8-way figures partly measure the sink and the submitters themselves.")

    def ratio(a, b):
        return a / b if a is not None and b else None

    r_e2e = ratio(get("mqN", "e2e_msgs/s"), get("pfN", "e2e_msgs/s"))
    r_e2e1 = ratio(get("mq1", "e2e_msgs/s"), get("pf1", "e2e_msgs/s"))
    durable = get("mqN", "msgs/s")
    r_dur = ratio(durable, 1000.0)
    r_sub = ratio(get("mqN", "msgs/s"), get("pfN", "msgs/s"))
    print()
    print("ratios")
    if r_e2e is not None:
        print("  end to end, mailpool queue 8 / Postfix 8:          %8.1fx" % r_e2e)
    if r_e2e1 is not None:
        print("  end to end, mailpool queue 1 / Postfix sequential: %8.1fx" % r_e2e1)
    if r_sub is not None:
        print("  hand-off rate, mailpool queue 8 / Postfix 8:       %8.1fx" % r_sub)
    if r_dur is not None:
        print("  durable msgs/s with 8 senders / 1,000 target:      %8.2fx" % r_dur)

    def target(name, value, ok, shown, info=False):
        verdict = "n/a " if value is None else ("PASS" if ok(value) else "MISS")
        if info and value is not None:
            verdict = "(info)"
        print("  %-56s %-14s %s" % (name, shown(value) if value is not None else "-", verdict))

    print()
    print("SPEC section 7 targets (this run)")
    target(">= 1,000 durable msgs/s with group commit (8 senders)", durable,
           lambda v: v >= 1000, lambda v: "%.0f/s" % v)
    target("  1 sender (no group to share: one fsync pair each)", get("mq1", "msgs/s"),
           lambda v: v >= 1000, lambda v: "%.0f/s" % v, info=True)
    target("faster end to end than Postfix null client (8 and 8)", r_e2e,
           lambda v: v > 1.0, lambda v: "%.1fx" % v)
    target("  same, 1 sender vs sequential sendmail", r_e2e1,
           lambda v: v > 1.0, lambda v: "%.1fx" % v)
    return 0


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    fn = {"procs": cmd_procs, "timed": cmd_timed, "idle": cmd_idle, "control": cmd_control,
          "report": cmd_report, "sink": cmd_sink, "e2e": cmd_e2e,
          "queue-report": cmd_queue_report}.get(cmd)
    if fn is None:
        sys.exit(__doc__)
    return fn(args)


if __name__ == "__main__":
    sys.exit(main())
