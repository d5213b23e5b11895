#!/usr/bin/python3
"""Helpers for relay_bench.sh: time one-process-per-message clients, hold
many idle LMTP (RFC 2033) connections open, ask the control socket, and print
the final table.

  bench_helper.py procs -p PAR -n N -i MSGFILE [-o LATFILE] -- CMD ARG...
  bench_helper.py timed -n N -- CMD ARG...
  bench_helper.py idle -k K -s SUBMIT_SOCKET -r READYFILE
  bench_helper.py control -s CONTROL_SOCKET REQUEST [--wait-idle K]
  bench_helper.py report RESULTS RSSFILE

procs/timed print "key value" lines in mpload's format (count, failed,
seconds, msgs/s, median_us, p90_us, p99_us) and exit 1 if anything failed.
"""
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


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    fn = {"procs": cmd_procs, "timed": cmd_timed, "idle": cmd_idle, "control": cmd_control,
          "report": cmd_report}.get(cmd)
    if fn is None:
        sys.exit(__doc__)
    return fn(args)


if __name__ == "__main__":
    sys.exit(main())
