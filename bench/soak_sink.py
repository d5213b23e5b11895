#!/usr/bin/python3
"""A fault-injecting SMTP sink for bench/soak.sh (RFC 5321 server side, just
enough of it for a relay client).  Every message whose final dot arrives is
counted by its X-Soak-Id header, appended to the ids file, before any fault
decides whether the client hears the 250: a message dropped after the dot is
delivered, and a retry of it is a duplicate, not a loss.

  soak_sink.py -p PORT -o IDS [--p421 R] [--pdrop-data R] [--pdrop-dot R]
               [--pslow R] [--slow-ms MS] [--seed S]

Faults per message, each with its own rate: 421 to MAIL FROM and close; close
in the middle of DATA; close after the dot without a reply; a delayed reply
to the dot.  SIGTERM ends it and prints the fault counts to stderr.
"""
import argparse
import asyncio
import random
import signal
import sys

faults = {"421": 0, "drop_data": 0, "drop_dot": 0, "slow": 0, "delivered": 0, "sessions": 0}


async def session(reader, writer, opts, ids):
    faults["sessions"] += 1

    async def say(line):
        writer.write(line.encode() + b"\r\n")
        await writer.drain()

    try:
        await say("220 soak-sink ESMTP")
        while True:
            line = await reader.readline()
            if not line:
                return
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                await say("250-soak-sink\r\n250-8BITMIME\r\n250 PIPELINING")
            elif verb == b"MAIL":
                if random.random() < opts.p421:
                    faults["421"] += 1
                    await say("421 4.3.0 soak fault: closing")
                    return
                await say("250 2.1.0 ok")
            elif verb == b"RCPT":
                await say("250 2.1.5 ok")
            elif verb == b"DATA":
                await say("354 go ahead")
                drop_mid = random.random() < opts.pdrop_data
                soak_id = None
                n = 0
                while True:
                    d = await reader.readline()
                    if not d:
                        return
                    if d in (b".\r\n", b".\n"):
                        break
                    n += 1
                    if soak_id is None and d[:10].lower() == b"x-soak-id:":
                        soak_id = d[10:].strip().decode()
                    if drop_mid and n == 3:
                        faults["drop_data"] += 1
                        return
                faults["delivered"] += 1
                ids.write("%s\n" % (soak_id or "-"))
                ids.flush()
                if random.random() < opts.pdrop_dot:
                    faults["drop_dot"] += 1
                    return
                if random.random() < opts.pslow:
                    faults["slow"] += 1
                    await asyncio.sleep(opts.slow_ms / 1000.0)
                await say("250 2.0.0 queued")
            elif verb == b"RSET" or verb == b"NOOP":
                await say("250 2.0.0 ok")
            elif verb == b"QUIT":
                await say("221 2.0.0 bye")
                return
            else:
                await say("502 5.5.1 not here")
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def run(opts):
    ids = open(opts.o, "a")
    server = await asyncio.start_server(
        lambda r, w: session(r, w, opts, ids), "127.0.0.1", opts.p, limit=1 << 20)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with server:
        await stop.wait()
    ids.close()
    sys.stderr.write(" ".join("%s=%d" % kv for kv in faults.items()) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-p", type=int, required=True)
    ap.add_argument("-o", required=True)
    ap.add_argument("--p421", type=float, default=0.01)
    ap.add_argument("--pdrop-data", type=float, default=0.005)
    ap.add_argument("--pdrop-dot", type=float, default=0.005)
    ap.add_argument("--pslow", type=float, default=0.01)
    ap.add_argument("--slow-ms", type=float, default=200)
    ap.add_argument("--seed", type=int, default=None)
    opts = ap.parse_args()
    random.seed(opts.seed)
    asyncio.run(run(opts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
