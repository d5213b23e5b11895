#!/bin/sh
# Long fuzzing runs: builds the libFuzzer harnesses with clang in a build
# directory of their own, runs each target (all, or the ones named) for a
# while, merges what is new into fuzz/corpus/<target>/ (minimised with
# -merge=1) and prints executions and coverage per target.  Crashing inputs
# are saved under fuzz/crashes/<target>/ and make the script fail; nothing
# is committed.
#
#   fuzz/run.sh [-t SECONDS] [-j JOBS] [-b BUILDDIR] [TARGET...]
#
#   -t  seconds per target (default 600)
#   -j  targets run at once (default 1)
#   -b  build directory (default build-fuzzrun in the source tree)
set -eu

src=$(cd "$(dirname "$0")/.." && pwd)
secs=600
jobs=1
build=$src/build-fuzzrun
all="fuzz_reply fuzz_caps fuzz_lmtp fuzz_addr fuzz_body fuzz_spool fuzz_proxy fuzz_rewrite
     fuzz_sendmail_hdr fuzz_config fuzz_control fuzz_bounce fuzz_json"

usage() {
    echo "usage: $0 [-t SECONDS] [-j JOBS] [-b BUILDDIR] [TARGET...]" >&2
    echo "targets: $(echo $all)" >&2
    exit 2
}

while getopts t:j:b:h opt; do
    case $opt in
    t) secs=$OPTARG ;;
    j) jobs=$OPTARG ;;
    b) build=$OPTARG ;;
    *) usage ;;
    esac
done
shift $((OPTIND - 1))
case $secs in '' | *[!0-9]*) usage ;; esac
case $jobs in '' | *[!0-9]* | 0) usage ;; esac
targets=${*:-$all}
for t in $targets; do
    case " $(echo $all) " in *" $t "*) ;; *) echo "$0: unknown target $t" >&2; usage ;; esac
done

# The longest input worth trying: a little over each parser's own limit, so
# the limit checks themselves are exercised without wasting time on bulk.
max_len() {
    case $1 in
    fuzz_reply | fuzz_caps) echo 8192 ;;
    fuzz_lmtp | fuzz_addr | fuzz_control) echo 2048 ;;
    fuzz_proxy | fuzz_rewrite) echo 2048 ;;
    fuzz_body | fuzz_sendmail_hdr | fuzz_bounce) echo 16384 ;;
    fuzz_spool | fuzz_config | fuzz_json) echo 16384 ;;
    esac
}

cmake -S "$src" -B "$build" -DCMAKE_C_COMPILER=clang -DMAILPOOL_FUZZ=ON \
    -DMAILPOOL_TESTS=OFF >/dev/null
# shellcheck disable=SC2086
cmake --build "$build" -j"$jobs" --target $targets >/dev/null

logs=$(mktemp -d)
# Known leaks in libraries we do not own (see the file); ours still fail.
LSAN_OPTIONS=suppressions=$src/fuzz/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}
export LSAN_OPTIONS
trap 'rm -rf "$logs"' EXIT

run_one() {
    t=$1
    corpus=$src/fuzz/corpus/$t
    crashes=$src/fuzz/crashes/$t
    work=$logs/$t.work
    mkdir -p "$corpus" "$crashes" "$work"
    rc=0
    "$build/fuzz/$t" -max_total_time="$secs" -max_len="$(max_len "$t")" -timeout=25 \
        -print_final_stats=1 -artifact_prefix="$crashes/" "$work" "$corpus" \
        >"$logs/$t.log" 2>&1 || rc=$?
    before=$(ls "$corpus" | wc -l)
    "$build/fuzz/$t" -merge=1 -max_len="$(max_len "$t")" "$corpus" "$work" \
        >"$logs/$t.merge" 2>&1 || { [ "$rc" -ne 0 ] || rc=1; }
    after=$(ls "$corpus" | wc -l)
    echo "$rc $before $after" >"$logs/$t.result"
    rmdir "$crashes" 2>/dev/null || true
}

running=0
for t in $targets; do
    echo "fuzzing $t for ${secs}s" >&2
    run_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait
        running=0
    fi
done
wait

failed=0
printf '%-18s %12s %7s %8s %13s  %s\n' target execs cov ft corpus result
for t in $targets; do
    read -r rc before after <"$logs/$t.result"
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log" | tail -n 1)
    stats=$(grep -E '^#[0-9]+.*cov: [0-9]+ ft: [0-9]+' "$logs/$t.log" | tail -n 1)
    cov=$(echo "$stats" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
    ft=$(echo "$stats" | sed -n 's/.*ft: \([0-9]*\).*/\1/p')
    result=ok
    if [ "$rc" -ne 0 ]; then
        result="FAILED (see fuzz/crashes/$t/)"
        failed=1
        grep -E '^(==[0-9]+==ERROR|SUMMARY|.*fuzz invariant broken|.*runtime error)' \
            "$logs/$t.log" | head -n 5 >&2 || true
    fi
    printf '%-18s %12s %7s %8s %6s->%-6s  %s\n' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" \
        "$before" "$after" "$result"
done
exit "$failed"
