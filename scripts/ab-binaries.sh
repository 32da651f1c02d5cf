#!/usr/bin/env bash
# A/B two terminus builds in one run: is a change (a refactor, an optimisation) visible
# in server CPU per operation? Both run at once, one pinned worker each on CPU 0, with
# the same config (termination, mTLS, and a source backend for bulk); the load
# (`terminus bench`) and the backends run on CPU 1. The runs alternate A,B / B,A per
# round, so drift on a shared machine hits both; the table gives the median and the
# range over the rounds and the ratio B/A of the medians.
#
#   bash scripts/ab-binaries.sh OLD_BINARY NEW_BINARY
#
# Environment: ROUNDS (default 4), SECONDS_PER_RUN (4), WORKLOADS (default
# "full resumed mtls bulk rr"). Everything listens on free 127.0.0.1 ports; every
# process is killed and the temp dir removed on exit.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
case "${1:-}" in -h | --help) usage && exit 0 ;; esac
if [ $# -ne 2 ] || [ ! -x "$1" ] || [ ! -x "$2" ]; then
    echo "ab-binaries.sh: need two executable terminus binaries (see --help)" >&2
    exit 2
fi
A=$(realpath "$1")
B=$(realpath "$2")
rounds=${ROUNDS:-4}
secs=${SECONDS_PER_RUN:-4}
workloads=${WORKLOADS:-full resumed mtls bulk rr}
command -v taskset >/dev/null || { echo "ab-binaries.sh: needs taskset (util-linux)" >&2; exit 2; }

lib_init ab-binaries.sh

read -r be_echo be_src a_term a_mtls a_src b_term b_mtls b_src < <(free_ports 8)

"$A" certs --out "$work/pki" >/dev/null
taskset -c 1 "$A" backend --listen "127.0.0.1:$be_echo" --mode echo >"$work/be_echo.out" 2>&1 &
pids+=($!)
taskset -c 1 "$A" backend --listen "127.0.0.1:$be_src" --mode source >"$work/be_src.out" 2>&1 &
pids+=($!)

config() { # TERM MTLS SRC
    terminus_runtime
    terminus_listener term "$1" "$be_echo" 0 "$work/pki"
    terminus_listener mtls "$2" "$be_echo" 1 "$work/pki"
    terminus_listener src "$3" "$be_src" 0 "$work/pki"
}
start() { # NAME BINARY TERM MTLS SRC -> pid on stdout
    config "$3" "$4" "$5" >"$work/$1.toml"
    "$2" run --config "$work/$1.toml" >"$work/$1.out" 2>"$work/$1.err" &
    echo $!
}
pa=$(start a "$A" "$a_term" "$a_mtls" "$a_src")
pids+=("$pa")
pb=$(start b "$B" "$b_term" "$b_mtls" "$b_src")
pids+=("$pb")
wait_ready a "$pa"
wait_ready b "$pb"

measure() { # SIDE WORKLOAD -> "SIDE WORKLOAD VALUE" (µs/op, or ns/byte for bulk)
    local side=$1 w=$2 pid port args=()
    if [ "$side" = A ]; then pid=$pa; else pid=$pb; fi
    case "$side.$w" in
    A.mtls) port=$a_mtls ;; B.mtls) port=$b_mtls ;;
    A.bulk) port=$a_src ;; B.bulk) port=$b_src ;;
    A.*) port=$a_term ;; B.*) port=$b_term ;;
    esac
    case $w in
    full) args=(--workload handshake --connections 16) ;;
    resumed) args=(--workload handshake --resume --connections 16) ;;
    mtls) args=(--workload handshake --connections 16 --client-cert "$work/pki/client.pem" --client-key "$work/pki/client.key") ;;
    bulk) args=(--workload bulk --direction down --connections 4) ;;
    rr) args=(--workload rr --size 1024 --connections 8) ;;
    *) die "unknown workload $w" ;;
    esac
    taskset -c 1 "$A" bench --target "127.0.0.1:$port" --server-name localhost --ca "$work/pki/ca.pem" \
        --duration "$secs" --cpus 1 --target-pid "$pid" --json --quiet "${args[@]}" >"$work/r.json" ||
        die "bench $side $w failed"
    local key=target_cpu_us_per_op v
    [ "$w" != bulk ] || key=target_cpu_ns_per_byte
    v=$(bench_figure "$work/r.json" "$key") || exit 1
    echo "$side $w $v"
}

for round in $(seq "$rounds"); do
    for w in $workloads; do
        if ((round % 2)); then order="A B"; else order="B A"; fi
        for side in $order; do measure "$side" "$w"; done
    done
done | tee "$work/runs.txt" >&2

echo "A = $A"
echo "B = $B"
python3 - "$work/runs.txt" "$rounds" "$secs" <<'EOF'
import collections, statistics, sys
runs = collections.defaultdict(list)
order = []
for line in open(sys.argv[1]):
    side, w, v = line.split()
    runs[(w, side)].append(float(v))
    if w not in order:
        order.append(w)
print(f"\n{sys.argv[2]} rounds x {sys.argv[3]} s, server CPU per op (bulk: ns/byte, else µs/op)\n")
print("| workload | A median (range) | B median (range) | B/A |")
print("|---|---:|---:|---:|")
for w in order:
    a, b = runs[(w, "A")], runs[(w, "B")]
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"| {w} | {ma:.3g} ({min(a):.3g}–{max(a):.3g}) | {mb:.3g} ({min(b):.3g}–{max(b):.3g}) | {mb / ma:.3f} |")
EOF
