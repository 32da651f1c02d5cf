#!/usr/bin/env bash
# What a candidate client-auth policy costs a full mTLS handshake, A/B in one run: one
# terminus (one worker pinned to CPU 0) with two listeners that differ only by
# `[listeners.client_auth.candidate]`: A enforces require + CA + allow-list, B the same
# plus a candidate (require + CA + another allow-list). `terminus bench --workload
# handshake` with the test PKI's client certificate loads one listener at a time from
# CPU 1; server CPU per handshake comes from the process' schedstat (--target-pid), so
# the other listener's idle costs nothing. Runs alternate A,B / B,A per round. Two
# pairs: with the chain cache (default, `verify_cache_size = 4096`: a returning
# client) and without (`verify_cache_size = 0`: every handshake verifies in full).
#
#   bash scripts/candidate-ab.sh [TERMINUS_BINARY]   (default: target/release/terminus)
#
# Environment: ROUNDS (default 6), SECONDS_PER_RUN (3).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
case "${1:-}" in -h | --help) usage && exit 0 ;; esac
T=$(terminus_binary "${1:-}") || exit 2
rounds=${ROUNDS:-6}
secs=${SECONDS_PER_RUN:-3}
needs taskset python3

lib_init candidate-ab.sh

read -r be a b a0 b0 < <(free_ports 5)

"$T" certs --out "$work/pki" >/dev/null
taskset -c 1 "$T" backend --listen "127.0.0.1:$be" --mode echo >"$work/be.out" 2>&1 &
pids+=($!)

{
    terminus_runtime
    printf '[admin]\nlisten = "127.0.0.1:0"\n\n'
    for l in "a $a 4096 0" "b $b 4096 1" "a0 $a0 0 0" "b0 $b0 0 1"; do
        set -- $l
        terminus_listener "$1" "$2" "$be" 0 "$work/pki"
        printf '[listeners.client_auth]\nmode = "require"\nca = ["%s/pki/ca.pem"]\nallow = ["spiffe://example.org/client"]\nverify_cache_size = %s\n' "$work" "$3"
        if [ "$4" = 1 ]; then
            printf '[listeners.client_auth.candidate]\nmode = "require"\nca = ["%s/pki/ca.pem"]\nallow = ["spiffe://example.org/ns/prod/*", "spiffe://example.org/client"]\nverify_cache_size = %s\n' "$work" "$3"
        fi
        echo
    done
} >"$work/t.toml"
terminus_start "$T" t

measure() { # SIDE PORT -> "SIDE VALUE" (server µs per handshake)
    taskset -c 1 "$T" bench --target "127.0.0.1:$2" --server-name localhost --ca "$work/pki/ca.pem" \
        --workload handshake --connections 16 --client-cert "$work/pki/client.pem" \
        --client-key "$work/pki/client.key" --duration "$secs" --cpus 1 --target-pid "$tpid" \
        --json --quiet >"$work/r.json" || die "bench $1 failed"
    local v
    v=$(bench_figure "$work/r.json" target_cpu_us_per_op clean) || exit 1
    echo "$1 $v"
}

for round in $(seq "$rounds"); do
    if ((round % 2)); then order="a b a0 b0"; else order="b a b0 a0"; fi
    for side in $order; do
        case $side in a) port=$a ;; b) port=$b ;; a0) port=$a0 ;; b0) port=$b0 ;; esac
        measure "$side" "$port"
    done
done | tee "$work/runs.txt" >&2

# The candidate's verdicts were counted (the B listeners did evaluate it).
admin=$(sed -n 's/^admin addr=//p' "$work/t.out")
curl -s "http://$admin/metrics" | grep '^terminus_candidate_verdicts_total' >&2 || true

python3 - "$work/runs.txt" "$rounds" "$secs" <<'EOF'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    side, v = line.split()
    runs[side].append(float(v))
print(f"\n{sys.argv[2]} rounds x {sys.argv[3]} s, server CPU per full mTLS handshake (µs)\n")
print("| chain cache | A: without candidate, median (range) | B: with candidate, median (range) | B/A |")
print("|---|---:|---:|---:|")
for name, a, b in [("on (4096)", "a", "b"), ("off (0)", "a0", "b0")]:
    ra, rb = runs[a], runs[b]
    ma, mb = statistics.median(ra), statistics.median(rb)
    print(f"| {name} | {ma:.1f} ({min(ra):.1f}–{max(ra):.1f}) | {mb:.1f} ({min(rb):.1f}–{max(rb):.1f}) | {mb / ma:.3f} |")
EOF
