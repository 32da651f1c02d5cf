#!/usr/bin/env bash
# What an `http` listener costs over a `tcp` one: server CPU per request on a kept
# connection, both listeners in one terminus (one worker pinned to CPU 0), the same
# nginx backend and the same `wrk` load (both on CPU 1), alternating rounds.
#
#   bash scripts/http-vs-tcp.sh [TERMINUS_BINARY]
#
# Environment: ROUNDS (default 5), SECONDS_PER_RUN (4), CONNECTIONS (8). Needs wrk,
# nginx and taskset (apt-get install wrk nginx-light util-linux). CPU is the terminus
# process's utime+stime from /proc around each wrk run; requests are wrk's count.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }
case "${1:-}" in -h | --help) usage && exit 0 ;; esac
bin=$(realpath "${1:-target/release/terminus}")
[ -x "$bin" ] || { echo "http-vs-tcp.sh: no terminus binary at $bin (cargo build --release)" >&2; exit 2; }
for t in wrk nginx taskset python3; do
    command -v "$t" >/dev/null || { echo "http-vs-tcp.sh: needs $t" >&2; exit 2; }
done
lib_init http-vs-tcp.sh

read -r be tcp http < <(free_ports 3)

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
{
    terminus_runtime
    terminus_listener tcp "$tcp" "$be" 0 pki
    terminus_listener http "$http" "$be" 0 pki
    printf 'protocol = "http"\n'
} >"$work/t.toml"
"$bin" run --config "$work/t.toml" >"$work/t.out" 2>"$work/t.err" &
pid=$!
pids+=("$pid")
wait_ready t "$pid"

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
res = {"tcp": [], "http": []}
for r in range(rounds):
    order = ["tcp", "http"] if r % 2 == 0 else ["http", "tcp"]
    for m in order:
        us, rps = run(tcp if m == "tcp" else http)
        res[m].append(us)
        print(f"round {r + 1} {m}: {us:.2f} µs/request, {rps:.0f} requests/s", file=sys.stderr)
t, h = statistics.median(res["tcp"]), statistics.median(res["http"])
print(f"\n{rounds} rounds x {secs} s, {conns} kept connections (wrk), server CPU per request\n")
print("| listener | median µs/request (range) |")
print("|---|---:|")
for m in ("tcp", "http"):
    v = res[m]
    print(f"| {m} | {statistics.median(v):.2f} ({min(v):.2f}–{max(v):.2f}) |")
print(f"\nhttp / tcp: {h / t:.3f}")
EOF
