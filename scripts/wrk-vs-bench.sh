#!/usr/bin/env bash
# Cross-check of `terminus bench`'s request throughput against wrk, a third-party
# client: both drive the same target in one run, alternating (wrk then bench, bench then
# wrk, ...), with the same shape: CONNECTIONS kept TLS connections, one thread on CPU 1,
# closed loop (one request in flight per connection), SIZE-byte requests and answers.
#
#   bash scripts/wrk-vs-bench.sh [TERMINUS_BINARY]
#
# The target: terminus (one worker pinned to CPU 0, a tcp listener) in front of
# `terminus backend --mode echo` (CPU 1). bench speaks no HTTP, so wrk's request is
# made to be its own answer: a SIZE-byte HTTP/1.1 response ("200 OK", Content-Length
# filling it out) that the echo backend returns unchanged, which wrk parses as a
# complete response; bench's rr sends SIZE bytes and waits for the same SIZE back.
# Same bytes on the wire, same listener, same backend, same loop.
#
# Environment: ROUNDS (3), SECONDS_PER_RUN (5), CONNECTIONS (8), SIZE (64, at least
# 40). Needs wrk, taskset, python3. Prints per round requests/s of each, the ratio
# bench / wrk, the server's and the client's CPU per request under each (wrk's from
# its rusage, so it includes its TLS handshakes; bench's is its workers' window), and
# the latencies.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }
case "${1:-}" in -h | --help) usage && exit 0 ;; esac
bin=$(realpath "${1:-target/release/terminus}")
[ -x "$bin" ] || { echo "wrk-vs-bench.sh: no terminus binary at $bin (cargo build --release)" >&2; exit 2; }
for t in wrk taskset python3; do
    command -v "$t" >/dev/null || { echo "wrk-vs-bench.sh: needs $t (apt-get install wrk util-linux python3)" >&2; exit 2; }
done
rounds=${ROUNDS:-3} secs=${SECONDS_PER_RUN:-5} conns=${CONNECTIONS:-8} size=${SIZE:-64}
for v in ROUNDS:$rounds SECONDS_PER_RUN:$secs CONNECTIONS:$conns SIZE:$size; do
    [[ ${v#*:} =~ ^[1-9][0-9]*$ ]] || { echo "wrk-vs-bench.sh: ${v%%:*} must be a positive integer" >&2; exit 2; }
done
((size >= 40)) || { echo "wrk-vs-bench.sh: SIZE must be at least 40 (an HTTP response head)" >&2; exit 2; }

lib_init wrk-vs-bench.sh /tmp/wrk-vs-bench.XXXXXX

read -r be port < <(free_ports 2)

"$bin" certs --out "$work" >/dev/null
taskset -c 1 "$bin" backend --listen "127.0.0.1:$be" --mode echo >"$work/backend.err" 2>&1 &
bpid=$!
pids+=($bpid)
{
    terminus_runtime
    terminus_listener echo "$port" "$be" 0
} >"$work/t.toml"
terminus_start "$bin" t

# wrk's request: a SIZE-byte HTTP response, so that its echo is an answer wrk accepts
# (see the note in the generated script).
python3 - "$size" >"$work/echo.lua" <<'EOF'
import sys
size = int(sys.argv[1])
head = "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"
n = size - len(head % 0)
n = size - len(head % n)  # the length's own digits
msg = (head % n) + "x" * n
assert len(msg) == size, len(msg)
lua = lambda t: '"%s"' % t.replace("\r", "\\r").replace("\n", "\\n")
# wrk checks the script by parsing the first request() of thread 1 as an HTTP request
# (and quits on one that is not): that first call returns a GET, which is never sent;
# every later call the echoable answer. (-t1: one thread, so one check.)
print("local get = " + lua("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"))
print("local msg = " + lua(msg))
print("local checked = false")
print("request = function() if checked then return msg end checked = true return get end")
EOF

run_wrk() { # ROUND
    local c0 c1
    c0=$(cpu_ns "$tpid")
    # wrk's own CPU: the subshell's cutime + cstime (fields 16, 17, ticks) once it has
    # waited for wrk.
    (
        taskset -c 1 wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$work/echo.lua" "https://127.0.0.1:$port/" >"$work/wrk.$1" 2>&1 ||
            { echo "wrk-vs-bench.sh: wrk failed: $(cat "$work/wrk.$1")" >&2; exit 1; }
        awk -v hz="$(getconf CLK_TCK)" '{printf "%.0f\n", ($16 + $17) * 1e9 / hz}' /proc/$BASHPID/stat >"$work/wrk.$1.client"
    )
    c1=$(cpu_ns "$tpid")
    echo $((c1 - c0)) >"$work/wrk.$1.cpu"
}
run_bench() { # ROUND
    taskset -c 1 "$bin" bench --target "127.0.0.1:$port" --workload rr --size "$size" --connections "$conns" \
        --workers 1 --duration "$secs" --tls --ca "$work/ca.pem" --server-name localhost \
        --target-pid "$tpid" --run-pid "$bpid" --json >"$work/bench.$1" 2>"$work/bench.$1.err" ||
        { echo "wrk-vs-bench.sh: bench failed: $(tail -3 "$work/bench.$1.err")" >&2; exit 1; }
}
echo "terminus (1 worker, CPU 0) -> echo backend; wrk and terminus bench on CPU 1, $conns connections, $size B, ${secs} s, $rounds rounds"
for r in $(seq "$rounds"); do
    if ((r % 2)); then run_wrk "$r"; run_bench "$r"; else run_bench "$r"; run_wrk "$r"; fi
done

python3 - "$work" "$rounds" <<'EOF'
import json, re, sys
work, rounds = sys.argv[1], int(sys.argv[2])

def us(v, unit):
    return float(v) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]

print("| round | wrk req/s | bench req/s | bench / wrk | server CPU µs/req under wrk / bench | client CPU µs/req wrk / bench | p50 µs wrk / bench | p99 µs wrk / bench | errors wrk / bench | foreign CPU (bench) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
ratios = []
for r in range(1, rounds + 1):
    w = open(f"{work}/wrk.{r}").read()
    b = json.load(open(f"{work}/bench.{r}"))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", w).group(1))
    total = int(re.search(r"(\d+) requests in", w).group(1))
    lat = {p: us(v, u) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", w, re.M)}
    werr = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", w))
    werr += int((re.search(r"Non-2xx or 3xx responses: (\d+)", w) or [0, 0])[1])
    cpu = int(open(f"{work}/wrk.{r}.cpu").read()) / 1e3 / total
    client = int(open(f"{work}/wrk.{r}.client").read()) / 1e3 / total
    ratio = b["ops_per_s"] / rps
    ratios.append(ratio)
    print(f"| {r} | {rps:,.0f} | {b['ops_per_s']:,.0f} | {ratio:.3f} | {cpu:.1f} / {b.get('target_cpu_us_per_op') or 0:.1f} | "
          f"{client:.1f} / {b.get('client_cpu_us_per_op') or 0:.1f} | "
          f"{lat.get('50', 0):.0f} / {b['latency_us']['p50']} | {lat.get('99', 0):.0f} / {b['latency_us']['p99']} | "
          f"{werr} / {b['errors']['total']} | {b.get('foreign_cpus', float('nan')):.2f} |")
ratios.sort()
print(f"\nbench / wrk requests/s: median {ratios[len(ratios) // 2]:.3f}, range {ratios[0]:.3f}-{ratios[-1]:.3f}")
EOF
