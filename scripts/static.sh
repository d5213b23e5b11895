#!/bin/sh
# Static analysis: clang-tidy (checks in .clang-tidy) and cppcheck over the
# daemon, the client tools and library, and the shared headers.  Any finding
# makes this exit non-zero.  Run by scripts/test.sh before the builds; kept
# out of CTest so that an ordinary ctest run does not need the tools.
#   scripts/static.sh                  both analysers
#   scripts/static.sh tidy|cppcheck    one of them
# False positives are silenced where they occur (NOLINTNEXTLINE(check) or
# cppcheck-suppress id, each with a reason) or, for a whole class, in
# .clang-tidy and scripts/cppcheck.supp.
set -eu
cd "$(dirname "$0")/.."

what=${1:-all}
jobs=$(nproc 2>/dev/null || echo 2)
dir=build-static
status=0

run_tidy() {
    tidy=$(command -v clang-tidy || command -v clang-tidy-14 || true)
    if [ -z "$tidy" ]; then
        echo "clang-tidy not found (scripts/deps.sh --test installs it)" >&2
        return 1
    fi
    cmake -S . -B "$dir" -DCMAKE_EXPORT_COMPILE_COMMANDS=ON >/dev/null
    # Each source once, even when it is compiled into several targets.
    files=$(/usr/bin/python3 -c '
import json, os, sys
top = os.getcwd() + "/"
seen = set()
for e in json.load(open(sys.argv[1])):
    f = os.path.normpath(os.path.join(e["directory"], e["file"]))
    rel = f[len(top):] if f.startswith(top) else f
    if rel.split("/")[0] in ("daemon", "client", "common") and rel not in seen:
        seen.add(rel)
        print(rel)
' "$dir/compile_commands.json")
    echo "== clang-tidy ($(echo "$files" | wc -l) files)"
    # The compile flags are GCC's: clang must not choke on GCC-only -W options.
    # shellcheck disable=SC2086
    echo "$files" | xargs -P "$jobs" -n 2 "$tidy" -p "$dir" --quiet \
        --extra-arg=-Wno-unknown-warning-option 2>/dev/null
}

run_cppcheck() {
    if ! command -v cppcheck >/dev/null 2>&1; then
        echo "cppcheck not found (scripts/deps.sh --test installs it)" >&2
        return 1
    fi
    # cppcheck does not read system headers; without sys/queue.h it takes
    # the TAILQ_* macros for syntax errors.
    queue_h=$(echo '#include <sys/queue.h>' | cc -E -x c - |
        sed -n 's/^# [0-9]* "\(.*sys\/queue\.h\)".*/\1/p' | head -n 1)
    echo "== cppcheck"
    cppcheck --quiet --std=c11 -j "$jobs" --error-exitcode=1 --inline-suppr \
        --enable=warning,performance,portability \
        --suppressions-list=scripts/cppcheck.supp \
        -D_GNU_SOURCE -Idaemon -Icommon -Iclient ${queue_h:+--include="$queue_h"} \
        daemon client common
}

case "$what" in
all)
    run_tidy || status=1
    run_cppcheck || status=1
    ;;
tidy) run_tidy || status=1 ;;
cppcheck) run_cppcheck || status=1 ;;
*)
    echo "usage: $0 [all|tidy|cppcheck]" >&2
    exit 2
    ;;
esac
[ "$status" -eq 0 ] || echo "static analysis found problems (see above)" >&2
exit "$status"
