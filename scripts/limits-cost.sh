#!/usr/bin/env bash
# What the per-caller connection and handshake limits cost a full mTLS handshake, A/B
# in one run: one terminus (one worker pinned to CPU 0) with two mTLS listeners that
# differ only by `max_connections_per_caller` and `handshakes_per_second_per_source`
# (set far above the load, so both are charged on every connection and never refuse).
# `terminus bench --workload handshake` with the test PKI's client certificate loads
# one listener at a time from CPU 1; server CPU per handshake comes from the process'
# schedstat (--target-pid). Runs alternate A,B / B,A per round.
#
#   bash scripts/limits-cost.sh [TERMINUS_BINARY]   (default: target/release/terminus)
#
# Environment: ROUNDS (default 6), SECONDS_PER_RUN (3), CONNECTIONS (16).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }
case "${1:-}" in -h | --help) usage && exit 0 ;; esac
T=$(realpath "${1:-target/release/terminus}")
lib_init limits-cost.sh
[ -x "$T" ] || die "$T is not executable (see --help)"
command -v taskset >/dev/null || die "needs taskset (util-linux)"
rounds=${ROUNDS:-6}
secs=${SECONDS_PER_RUN:-3}
conns=${CONNECTIONS:-16}

read -r be a b < <(free_ports 3)
"$T" certs --out "$work/pki" >/dev/null
taskset -c 1 "$T" backend --listen "127.0.0.1:$be" --mode echo >"$work/be.out" 2>&1 &
pids+=($!)
limits='max_connections_per_caller = 1000000\nhandshakes_per_second_per_source = 1000000\n'
{
    terminus_runtime
    terminus_listener a "$a" "$be" 1 "$work/pki"
    terminus_listener b "$b" "$be" 1 "$work/pki" | sed "/^upstreams = /a $limits"
} >"$work/t.toml"
terminus_start "$T" t

for round in $(seq "$rounds"); do
    if ((round % 2)); then order="a b"; else order="b a"; fi
    for side in $order; do
        if [ "$side" = a ]; then port=$a; else port=$b; fi
        taskset -c 1 "$T" bench --target "127.0.0.1:$port" --server-name localhost \
            --ca "$work/pki/ca.pem" --workload handshake --connections "$conns" \
            --client-cert "$work/pki/client.pem" --client-key "$work/pki/client.key" \
            --duration "$secs" --cpus 1 --target-pid "$tpid" --json --quiet >"$work/r.json" ||
            die "bench $side failed"
        v=$(bench_figure "$work/r.json" target_cpu_us_per_op clean) || die "bench $side: no figure"
        echo "$side $v"
    done
done | tee "$work/runs.txt" >&2

python3 - "$work/runs.txt" "$rounds" "$secs" "$conns" <<'EOF'
import statistics, sys
runs = {"a": [], "b": []}
for line in open(sys.argv[1]):
    side, v = line.split()
    runs[side].append(float(v))
pairs = sorted(b / a for a, b in zip(runs["a"], runs["b"]))
a, b = statistics.median(runs["a"]), statistics.median(runs["b"])
print(f"\n{sys.argv[2]} rounds x {sys.argv[3]} s, {sys.argv[4]} connections, server CPU per full mTLS handshake (µs)\n")
print("| A: no limits, median (range) | B: both limits, median (range) | B/A | B/A per round, median |")
print("|---:|---:|---:|---:|")
print(f"| {a:.1f} ({min(runs['a']):.1f}–{max(runs['a']):.1f}) | {b:.1f} ({min(runs['b']):.1f}–{max(runs['b']):.1f}) | {b / a:.3f} | {statistics.median(pairs):.3f} |")
EOF
