#!/usr/bin/env bash
# Runs every cargo-fuzz target (or the ones named) for SECONDS each, one at a time, and prints
# a table of executions and crashes per target. Exits non-zero if any target crashed, hung or
# ran out of memory; the input that did it is in fuzz/artifacts/TARGET/.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     (default 60 s each, all targets)
#   FUZZ_RUNS=10000000 scripts/fuzz.sh 3600   (stop each target at N executions, or SECONDS)
#   FUZZ_ARGS=-max_len=256 scripts/fuzz.sh    (more libFuzzer flags for every target)
#
# Needs the nightly toolchain; installs cargo-fuzz if it is missing. One libFuzzer worker
# only: the machines this project is built on have 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs=${1:-60}
shift || true
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

# One build for all targets, so the timed runs below only fuzz.
cargo +nightly fuzz build

logs=target/fuzz-logs
mkdir -p "$logs"
runs=()
[ -n "${FUZZ_RUNS:-}" ] && runs=("-runs=$FUZZ_RUNS")
read -ra extra <<<"${FUZZ_ARGS:-}"
failed=0
rows=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    before=$(find "artifacts/$t" -type f | wc -l)
    start=$SECONDS
    status=ok
    # -timeout: an input that takes 10 s is a hang, and a hang in a device is a bug.
    cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -timeout=10 \
        -print_final_stats=1 "${runs[@]}" "${extra[@]}" >"$logs/$t.log" 2>&1 || status=FAILED
    crashes=$(($(find "artifacts/$t" -type f | wc -l) - before))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log" | tail -1)
    # A crash skips the final stats: fall back to the last progress line ("#12345 ...").
    [ -n "$execs" ] || execs=$(sed -n 's/^#\([0-9]*\).*/\1/p' "$logs/$t.log" | tail -1)
    if [ "$status" != ok ] || [ "$crashes" -gt 0 ]; then
        failed=1
        [ "$crashes" -gt 0 ] || crashes="?"
        echo "fuzz.sh: $t failed, see fuzz/$logs/$t.log and fuzz/artifacts/$t/" >&2
    fi
    rows+=("$(printf '%-22s %14s %8s %6s' "$t" "${execs:-0}" "$crashes" "$((SECONDS - start))")")
done

printf '%-22s %14s %8s %6s\n' target executions crashes secs
printf '%s\n' "${rows[@]}"
exit "$failed"
