#!/usr/bin/env bash
# Run every cargo-fuzz target (fuzz/fuzz_targets/) for SECONDS each (default 30),
# or only the TARGETs named; exits non-zero if any target crashed or broke an
# invariant (the input is then in fuzz/artifacts/TARGET/, the log next to it).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Builds
# optimized, without a sanitizer (terminus has no unsafe outside its I/O drivers,
# which no target reaches) and without debug assertions: with them, rustls' own
# `debug_assert!(!self.sent_fatal_alert)` fires on the first bad record a Conn
# receives (proxy/conn/session.rs calls process_tls_records again after an error to
# collect the alert; harmless in release builds, where the second alert is never
# sent) — open, see the fuzzing notes in BENCHMARKING.md. Extra libFuzzer options:
# FUZZ_ARGS. Each target starts from its committed seeds
# (fuzz/seeds/TARGET/) and grows a working corpus in fuzz/corpus/TARGET/ (not
# committed). A crash found becomes a file in tests/fuzz-regressions/TARGET/ once
# fixed (tests/other/fuzz_regressions.rs replays them on stable).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
shift || true
flags=(-O --sanitizer none)
if (($#)); then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
start=$(date +%s)
cargo +nightly fuzz build "${flags[@]}"
echo "fuzz: built in $(($(date +%s) - start)) s"
failed=()
mkdir -p fuzz/artifacts
printf '%-14s %8s %10s %8s %8s %s\n' target seconds execs exec/s cov result
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    log="fuzz/artifacts/$t.log"
    rc=0
    cargo +nightly fuzz run "${flags[@]}" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$secs" -timeout=60 -rss_limit_mb=2048 -print_final_stats=1 ${FUZZ_ARGS:-} \
        >"$log" 2>&1 || rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || true)
    result=ok
    if ((rc != 0)); then
        result="FAILED (exit $rc, see $log)"
        failed+=("$t")
        grep -m1 -E 'panicked at|ERROR: libFuzzer|SUMMARY' "$log" || true
    fi
    printf '%-14s %8s %10s %8s %8s %s\n' "$t" "$secs" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$result"
done
echo "fuzz: total $(($(date +%s) - start)) s"
if ((${#failed[@]})); then
    echo "fuzz: failed: ${failed[*]}" >&2
    exit 1
fi
