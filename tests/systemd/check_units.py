#!/usr/bin/python3
"""Static checks of the unit files in systemd/.

    check_units.py verify UNITDIR BINARY   systemd-analyze verify on every unit,
                                           with ExecStart= pointed at BINARY
    check_units.py security UNITDIR MAX    the offline exposure score of
                                           mailpoold.service is at most MAX
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile


def verify(unitdir, binary):
    units = sorted(glob.glob(os.path.join(unitdir, "*.service")) +
                   glob.glob(os.path.join(unitdir, "*.socket")))
    if not any(u.endswith("mailpoold.socket") for u in units) or \
            not any(u.endswith("mailpoold.service") for u in units):
        sys.exit("missing units in %s: %r" % (unitdir, units))
    # verify wants ExecStart= to exist; the installed path does not exist here.
    tmp = tempfile.mkdtemp(prefix="mpunits-")
    try:
        copies = []
        for u in units:
            with open(u) as f:
                text = f.read()
            text = re.sub(r"^(ExecStart=)/usr/sbin/mailpoold\b", r"\g<1>" + binary, text,
                          flags=re.M)
            dst = os.path.join(tmp, os.path.basename(u))
            with open(dst, "w") as f:
                f.write(text)
            copies.append(dst)
        # --man=no: the manual pages are not installed in a build tree.
        r = subprocess.run(["systemd-analyze", "verify", "--man=no"] + copies,
                           capture_output=True, text=True, cwd=tmp)
        out = (r.stdout + r.stderr).strip()
        print(out)
        if r.returncode != 0 or out:
            sys.exit("systemd-analyze verify failed (status %d)" % r.returncode)
        print("verified: " + " ".join(os.path.basename(u) for u in units))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def security(unitdir, limit):
    unit = os.path.join(unitdir, "mailpoold.service")
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", unit],
                       capture_output=True, text=True)
    out = r.stdout + r.stderr
    m = re.search(r"Overall exposure level for mailpoold\.service: (\d+\.\d+)", out)
    if not m:
        print(out)
        sys.exit("no exposure level in the output (status %d)" % r.returncode)
    score = float(m.group(1))
    print("exposure %.1f (limit %.1f)" % (score, limit))
    if score > limit:
        print(out)
        sys.exit("mailpoold.service is too exposed: %.1f > %.1f" % (score, limit))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "verify":
        verify(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "security":
        security(sys.argv[2], float(sys.argv[3]))
    else:
        sys.exit(__doc__)
