#!/usr/bin/env bash
# Runs every cargo-fuzz target of idemlog for N seconds each (default 60)
# and prints execs and crashes per target. Exits non-zero if any target
# crashed (its reproducer is left in fuzz/artifacts/<target>/).
#
#   fuzz/run-all.sh [seconds]
#
# The committed seed corpus (fuzz/corpus/<target>/) is read but never
# written: new inputs go to a temporary directory, so the corpus stays small.
set -uo pipefail

seconds="${1:-60}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: installing it (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked || { echo "could not install cargo-fuzz"; exit 2; }
fi

# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain
# accept them. The sanitizer is off: the crate has no unsafe code.
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz build --sanitizer none; then
    echo "fuzz targets failed to build"
    exit 2
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=0
total_execs=0
summary=()
for target in $(cargo fuzz list); do
    mkdir -p "$work/$target" "corpus/$target"
    log="$work/$target.log"
    cargo fuzz run "$target" --sanitizer none "$work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1
    status=$?
    execs="$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' | tail -1)"
    execs="${execs:-0}"
    total_execs=$((total_execs + execs))
    if [ "$status" -ne 0 ]; then
        failed=$((failed + 1))
        summary+=("$target: $execs execs, CRASH (exit $status)")
        echo "---- $target crashed; last lines of its log:"
        tail -40 "$log"
        ls "artifacts/$target" 2>/dev/null | sed 's/^/    reproducer: fuzz\/artifacts\/'"$target"'\//'
    else
        summary+=("$target: $execs execs, 0 crashes")
    fi
done

echo "==== fuzzing summary (${seconds}s per target)"
for line in "${summary[@]}"; do echo "$line"; done
echo "total: $total_execs execs, $failed targets crashed"
[ "$failed" -eq 0 ]
