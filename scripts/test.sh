#!/bin/sh
# Run the whole test suite: install what it needs, build, run every CTest
# test; then build again with AddressSanitizer + UndefinedBehaviorSanitizer
# and run the suite once more.
#   scripts/test.sh            both builds
#   scripts/test.sh --quick    the normal build only
set -eu
cd "$(dirname "$0")/.."

scripts/deps.sh --test

jobs=$(nproc 2>/dev/null || echo 2)
run_suite() {
    dir=$1
    shift
    cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
    cmake --build "$dir" -j "$jobs"
    (cd "$dir" && ctest --output-on-failure -j "$jobs" --timeout 300)
}

echo "== format check (clang-format, .clang-format)"
bad=""
for f in $(git ls-files '*.c' '*.h' 2>/dev/null || find daemon client common tests fuzz bench -name '*.[ch]'); do
    clang-format --dry-run -Werror "$f" >/dev/null 2>&1 || bad="$bad $f"
done
if [ -n "$bad" ]; then
    echo "not formatted with clang-format:$bad" >&2
    exit 1
fi

# clang-tidy and cppcheck; any finding fails the run (see scripts/static.sh).
scripts/static.sh

echo "== build and test (build/)"
run_suite build
if [ "${1:-}" != "--quick" ]; then
    echo "== build and test with ASan+UBSan (build-asan/)"
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    run_suite build-asan -DMAILPOOL_SANITIZE=ON
fi
