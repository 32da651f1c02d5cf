#!/usr/bin/env bash
# What per-request rules and a request rate cost on an `http` listener: server CPU
# per request on a kept connection, an http listener without rules ("plain") against
# one with 20 rules (every one evaluated: the request matches none, the default
# allows it) and requests_per_second_per_caller (never reached), both in one terminus
# (one worker pinned to CPU 0), the same nginx backend and `wrk` load (both on
# CPU 1), alternating rounds.
#
#   bash scripts/http-rules-cost.sh [TERMINUS_BINARY]
#
# Environment: ROUNDS (default 5), SECONDS_PER_RUN (4), CONNECTIONS (8). Needs wrk,
# nginx and taskset (apt-get install wrk nginx-light util-linux). CPU is the terminus
# process's utime+stime from /proc around each wrk run; requests are wrk's count.
set -euo pipefail

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }
case "${1:-}" in -h | --help) usage && exit 0 ;; esac
bin=$(realpath "${1:-target/release/terminus}")
[ -x "$bin" ] || { echo "http-rules-cost.sh: no terminus binary at $bin (cargo build --release)" >&2; exit 2; }
for t in wrk nginx taskset python3; do
    command -v "$t" >/dev/null || { echo "http-rules-cost.sh: needs $t" >&2; exit 2; }
done
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

read -r be tcp http < <(python3 -c '
import socket
s = [socket.socket() for _ in range(3)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))')

cat >"$work/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx.err;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$be;
        location / { return 200 "ok\n"; }
    }
}
EOF
taskset -c 1 nginx -c "$work/nginx.conf" -p "$work" 2>"$work/nginx.start" &
pids+=($!)

"$bin" certs --out "$work/pki" >/dev/null
cat >"$work/t.toml" <<EOF
[runtime]
workers = 1
cpus = [0]

[log]
access = "off"

[[listeners]]
name = "plain"
listen = "127.0.0.1:$tcp"
cert = "pki/server.pem"
key = "pki/server.key"
upstreams = ["127.0.0.1:$be"]
protocol = "http"

[[listeners]]
name = "rules"
listen = "127.0.0.1:$http"
cert = "pki/server.pem"
key = "pki/server.key"
upstreams = ["127.0.0.1:$be"]
protocol = "http"
requests_per_second_per_caller = 100000000
[listeners.http]
default_action = "allow"
EOF
for i in $(seq 1 19); do
    cat >>"$work/t.toml" <<EOF
[[listeners.http.rules]]
name = "svc-$i"
identities = ["spiffe://example.org/ns/prod/sa/svc-$i"]
methods = ["GET", "POST"]
paths = ["/svc-$i/*"]
action = "allow"
EOF
done
cat >>"$work/t.toml" <<EOF
[[listeners.http.rules]]
name = "no-admin"
identities = ["any"]
paths = ["/admin/*"]
action = "deny"
EOF
"$bin" run --config "$work/t.toml" >"$work/t.out" 2>"$work/t.err" &
pid=$!
pids+=("$pid")
for _ in $(seq 100); do grep -q '^ready' "$work/t.out" 2>/dev/null && break; sleep 0.1; done
grep -q '^ready' "$work/t.out" || { echo "terminus not ready: $(tail -3 "$work/t.err")" >&2; exit 1; }

python3 - "$pid" "$tcp" "$http" "${ROUNDS:-5}" "${SECONDS_PER_RUN:-4}" "${CONNECTIONS:-8}" <<'EOF'
import os, re, statistics, subprocess, sys
pid, tcp, http, rounds, secs, conns = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6]
tick = os.sysconf("SC_CLK_TCK")
def cpu():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick
def run(port):
    before = cpu()
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{secs}s",
                          f"https://127.0.0.1:{port}/"], capture_output=True, text=True, check=True).stdout
    used = cpu() - before
    n = int(re.search(r"(\d+) requests in", out).group(1))
    if "Non-2xx" in out or "Socket errors" in out:
        sys.exit(f"wrk saw errors on port {port}:\n{out}")
    return used / n * 1e6, n / float(secs)
res = {"plain": [], "rules": []}
for r in range(rounds):
    order = ["plain", "rules"] if r % 2 == 0 else ["rules", "plain"]
    for m in order:
        us, rps = run(tcp if m == "plain" else http)
        res[m].append(us)
        print(f"round {r + 1} {m}: {us:.2f} µs/request, {rps:.0f} requests/s", file=sys.stderr)
t, h = statistics.median(res["plain"]), statistics.median(res["rules"])
print(f"\n{rounds} rounds x {secs} s, {conns} kept connections (wrk), server CPU per request\n")
print("| listener | median µs/request (range) |")
print("|---|---:|")
for m in ("plain", "rules"):
    v = res[m]
    print(f"| {m} | {statistics.median(v):.2f} ({min(v):.2f}–{max(v):.2f}) |")
print(f"\nrules / plain: {h / t:.3f}")
EOF
