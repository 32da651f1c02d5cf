#!/usr/bin/env bash
# Cost of metrics (admin endpoint on, scraped every second) and access logging (to a
# file) on handshakes and bulk throughput: the same terminus binary, one worker
# pinned to CPU 0, `terminus bench` pinned to CPU 1, "off" and "on" configs
# alternated ROUNDS times in one run. Reports server CPU per operation (perf-free:
# /proc/PID/task/*/schedstat via --target-pid) and throughput.
#   bash scripts/operate-overhead.sh            # SECONDS_PER_RUN=4 ROUNDS=2
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECONDS_PER_RUN:-4}
ROUNDS=${ROUNDS:-2}
BIN=${TERMINUS:-target/release/terminus}
[ -x "$BIN" ] || cargo build --release
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT INT TERM
"$BIN" certs --out "$tmp" >/dev/null
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ECHO=$(free_port); SRC=$(free_port)
taskset -c 1 "$BIN" backend --listen 127.0.0.1:$ECHO --mode echo >/dev/null & pids+=($!)
taskset -c 1 "$BIN" backend --listen 127.0.0.1:$SRC --mode source >/dev/null & pids+=($!)

config() { # $1 = off|on, $2 = port for echo listener, $3 = port for source listener
    local admin="" log="off"
    if [ "$1" = on ]; then admin=$'[admin]\nlisten = "127.0.0.1:0"\n'; log="$tmp/access-$2.log"; fi
    cat > "$tmp/$1.toml" <<TOML
[runtime]
workers = 1
cpus = [0]
$admin
[log]
access = "$log"

[[listeners]]
name = "echo"
listen = "127.0.0.1:$2"
cert = "server.pem"
key = "server.key"
upstreams = ["127.0.0.1:$ECHO"]

[[listeners]]
name = "down"
listen = "127.0.0.1:$3"
cert = "server.pem"
key = "server.key"
upstreams = ["127.0.0.1:$SRC"]
TOML
}

bench() { # $1 pid, rest: bench args
    local pid=$1; shift
    taskset -c 1 "$BIN" bench --ca "$tmp/ca.pem" --server-name localhost --duration "$SECS" \
        --cpus 1 --target-pid "$pid" --json --quiet "$@"
}

printf '%-5s %-4s %12s %14s %10s %12s\n' round mode "handshake/s" "µs CPU/hs" "Gbit/s" "ns CPU/byte"
for r in $(seq 1 "$ROUNDS"); do
    for mode in off on; do
        P1=$(free_port); P2=$(free_port)
        config "$mode" "$P1" "$P2"
        "$BIN" run --config "$tmp/$mode.toml" > "$tmp/$mode.out" 2>"$tmp/$mode.err" & pid=$!; pids+=($pid)
        for _ in $(seq 50); do grep -q '^ready' "$tmp/$mode.out" 2>/dev/null && break; sleep 0.1; done
        scraper=""
        if [ "$mode" = on ]; then
            admin=$(sed -n 's/^admin addr=//p' "$tmp/$mode.out")
            (while sleep 1; do curl -s "http://$admin/metrics" >/dev/null || true; done) & scraper=$!
        fi
        hs=$(bench "$pid" --target 127.0.0.1:$P1 --workload handshake --connections 32)
        bulk=$(bench "$pid" --target 127.0.0.1:$P2 --workload bulk --direction down --connections 4)
        [ -n "$scraper" ] && kill "$scraper" 2>/dev/null
        kill "$pid"; wait "$pid" 2>/dev/null || true
        python3 - "$r" "$mode" "$hs" "$bulk" <<'PY'
import json, sys
r, mode, hs, bulk = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
nsb = bulk.get("target_cpu_ns_per_byte")
print(f"{r:<5} {mode:<4} {hs['ops_per_s']:12.0f} {hs.get('target_cpu_us_per_op', 0):14.1f} "
      f"{bulk['gbit_per_s']:10.2f} {nsb if nsb is not None else float('nan'):12.3f}")
PY
    done
done
