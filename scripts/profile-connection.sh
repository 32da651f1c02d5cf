#!/usr/bin/env bash
# Where one connection's CPU goes: handshakes at low concurrency against one pinned
# terminus worker, with the syscalls, context switches, loop turns and io_uring
# completions per connection, and optionally a perf profile grouped into crypto,
# kernel TCP, scheduler, io_uring, rustls, allocator and terminus (BENCHMARKING.md,
# "Where one connection's CPU goes"). terminus runs on CPU 0; its echo backend and
# the load (`terminus bench`) on CPU 1. Everything on 127.0.0.1, bounded, cleaned up.
#
#   bash scripts/profile-connection.sh [full|resumed|mtls] [CONNECTIONS] [SECONDS]
#
# Environment: TERMINUS (binary; default: cargo build --release), PROFILE=1 to also
# record and group a perf profile (needs perf, from linux-perf).
set -euo pipefail
cd "$(dirname "$0")/.."
wl=${1:-full}
conns=${2:-4}
secs=${3:-5}
case "$wl" in full | resumed | mtls) ;; *) echo "profile-connection.sh: workload full|resumed|mtls" >&2; exit 2 ;; esac
command -v perf >/dev/null || { echo "profile-connection.sh: needs perf (apt-get install linux-perf)" >&2; exit 2; }
if [ -z "${TERMINUS:-}" ]; then cargo build --release -q; TERMINUS=./target/release/terminus; fi
bin=$(realpath "$TERMINUS")
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$bin" certs --out "$work" >/dev/null
read -r be tp ap < <(python3 -c '
import socket
ss=[socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1",0))
print(*[s.getsockname()[1] for s in ss])')
taskset -c 1 "$bin" backend --listen "127.0.0.1:$be" --mode echo >/dev/null 2>&1 &
bpid=$!; pids+=($bpid)
cat >"$work/t.toml" <<T
[runtime]
workers = 1
cpus = [0]
[log]
access = "off"
[admin]
listen = "127.0.0.1:$ap"
[[listeners]]
name = "edge"
listen = "127.0.0.1:$tp"
cert = "server.pem"
key = "server.key"
upstreams = ["127.0.0.1:$be"]
T
[ "$wl" = mtls ] && printf '[listeners.client_auth]\nmode = "require"\nca = ["ca.pem"]\n' >>"$work/t.toml"
"$bin" run --config "$work/t.toml" >"$work/t.out" 2>&1 &
tpid=$!; pids+=($tpid)
for _ in $(seq 100); do grep -q ready "$work/t.out" && break; sleep 0.1; done
grep -q ready "$work/t.out" || { cat "$work/t.out" >&2; exit 1; }

args=(--target "127.0.0.1:$tp" --workload handshake --connections "$conns" --duration "$secs"
    --cpus 1 --ca "$work/ca.pem" --server-name localhost --target-pid "$tpid" --run-pid "$bpid" --json --quiet)
[ "$wl" = resumed ] && args+=(--resume)
[ "$wl" = mtls ] && args+=(--client-cert "$work/client.pem" --client-key "$work/client.key")
if [ "${PROFILE:-0}" = 1 ]; then
    perf record -q -e cpu-clock -F 4999 -g -p "$tpid" -o "$work/perf.data" -- sleep $((secs + 2)) 2>/dev/null &
else
    perf stat -e task-clock,raw_syscalls:sys_enter,context-switches -p "$tpid" -o "$work/perf.stat" -- sleep $((secs + 2)) &
fi
ppid=$!
"$bin" bench "${args[@]}" >"$work/bench.json"
wait "$ppid" || true
curl -s "127.0.0.1:$ap/metrics" >"$work/metrics.txt"

python3 - "$work" "$wl" "$conns" <<'P'
import json, re, subprocess, sys, os
work, wl, conns = sys.argv[1:4]
b = json.load(open(f"{work}/bench.json"))
m = open(f"{work}/metrics.txt").read()
def metric(name):
    r = re.search(r'^' + name + r'\{worker="0"\} (\S+)', m, re.M)
    return float(r.group(1)) if r else 0.0
n = sum(float(x) for x in re.findall(r'^terminus_handshakes_total\{[^}]*result="ok"[^}]*\} (\S+)', m, re.M))
print(f"{wl} handshakes, {conns} connections: {b['ops_per_s']:.0f}/s, server CPU "
      f"{b['target_cpu_us_per_op']:.1f} µs per connection, foreign CPU {b['foreign_cpus']:.2f}")
print(f"  per connection: {metric('terminus_worker_loop_completions_count') / n:.2f} loop turns, "
      f"{metric('terminus_worker_loop_completions_sum') / n:.2f} io_uring completions", end="")
if os.path.exists(f"{work}/perf.stat"):
    st = open(f"{work}/perf.stat").read()
    def ev(e):
        r = re.search(r'^\s*([\d,.]+)\s+' + e, st, re.M)
        return float(r.group(1).replace(",", "")) if r else 0.0
    # perf counts the whole window, a little longer than the bench's: per handshake
    # counted by terminus over the same process lifetime.
    print(f", {ev('raw_syscalls:sys_enter') / n:.1f} syscalls, {ev('context-switches') / n:.2f} context switches")
else:
    print()
    out = subprocess.run(["perf", "report", "-i", f"{work}/perf.data", "--no-children", "--sort", "dso,sym",
                          "--stdio", "-g", "none", "--percent-limit", "0"], capture_output=True, text=True).stdout
    groups = {}
    for line in out.splitlines():
        r = re.match(r'\s+([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)', line)
        if not r:
            continue
        pct, dso, sym = float(r.group(1)), r.group(2), r.group(4).strip()
        if dso.startswith('[kernel'):
            if re.search(r'io_uring|^_*io_', sym): g = 'kernel: io_uring'
            elif re.search(r'task_switch|schedule|sched|wake|spin_unlock_irq|ttwu|enqueue|dequeue|update_curr|pick_next|psi_', sym): g = 'kernel: scheduler, wakeups'
            elif re.search(r'alloc|free|slab|kmem|memcg|page', sym): g = 'kernel: memory'
            elif re.search(r'syscall|entry|fget|fput|fdget|__x64|do_sys|file|fd_|close', sym): g = 'kernel: syscalls, files'
            else: g = 'kernel: TCP/IP, sockets, softirq'
        elif re.search(r'curve25519|x25519|p256|nistz|ecdsa|ec_|bn_|sha|hmac|hkdf|aes|gcm|rdrand|aws_lc|evp|chacha|poly1305', sym, re.I): g = 'crypto (aws-lc)'
        elif re.search(r'(^|_)mi_', sym): g = 'allocator (mimalloc)'
        elif re.search(r'memmove|memcpy|memset', sym): g = 'memcpy/memset'
        elif 'rustls' in sym: g = 'rustls (outside crypto)'
        elif 'terminus' in sym: g = 'terminus'
        else: g = 'other'
        groups[g] = groups.get(g, 0.0) + pct
    for g, pct in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {pct:5.1f} %  {g}")
P
