#!/usr/bin/env bash
# Server CPU per full TLS 1.3 handshake at low concurrency, terminus vs nginx vs
# HAProxy, side by side in one run (the README's "Where we stand" table): CLIENTS
# (default 4) concurrent `openssl s_time` clients, a load far from saturating the
# server, which is where per-connection overhead shows. Each server gets one worker
# pinned to CPU 0; the load runs on CPU 1; server CPU is perf's task-clock of the
# worker process. Everything on 127.0.0.1, bounded (SECONDS per measurement), cleaned up.
#
#   bash scripts/compare-handshakes.sh [SECONDS]      # CLIENTS=N to change the load
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
secs=${1:-4}

need=()
command -v openssl >/dev/null || need+=(openssl)
command -v perf >/dev/null || need+=(linux-perf)
[ -x /usr/sbin/nginx ] || need+=(nginx-light)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
[ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v python3 >/dev/null || need+=(python3)
install_needed

cargo build --release -q
lib_init compare-handshakes.sh

./target/release/terminus certs --out "$work" >/dev/null
read -r be t_term t_mtls n_term n_mtls h_term h_mtls < <(free_ports 7)
clients=${CLIENTS:-4}

# Echo backend (the same for both proxies).
python3 - "$be" <<'EOF' &
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1024)
def h(c):
    try:
        while (d := c.recv(65536)): c.sendall(d)
    except OSError:
        pass  # s_time resets connections; that is expected
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=h, args=(c,), daemon=True).start()
EOF
pids+=($!)

{
    terminus_runtime
    terminus_listener terminate "$t_term" "$be" 0
    terminus_listener mtls "$t_mtls" "$be" 1
    printf 'allow = ["spiffe://example.org/client"]\n'
} >"$work/terminus.toml"
./target/release/terminus run --config "$work/terminus.toml" >"$work/terminus.out" 2>"$work/terminus.err" &
pids+=($!); tpid=$!

nginx_stream_conf "$n_term $be 0" "$n_mtls $be 1" >"$work/nginx.conf"
/usr/sbin/nginx -c "$work/nginx.conf" 2>"$work/nginx.err" &
nmaster=$!
pids+=($nmaster)

cat "$work/server.pem" "$work/server.key" >"$work/haproxy.pem"
haproxy_tcp_conf "term $h_term $be 0" "mtls $h_mtls $be 1" >"$work/haproxy.cfg"
/usr/sbin/haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.err" 2>&1 &
pids+=($!)
hpid=$!
wait_ready terminus "$tpid"
wait_port "$n_term" "$nmaster" nginx
wait_port "$h_term" "$hpid" haproxy
npid=$(pgrep -P "$nmaster" | head -1)
[ -n "$npid" ] || die "no nginx worker process"

# measure LABEL PID PORT [s_time args...]: handshakes and server CPU µs per handshake
measure() {
    local label=$1 pid=$2 port=$3; shift 3
    perf stat -e task-clock -p "$pid" -o "$work/perf" -- sleep $((secs + 1)) &
    local perfpid=$!
    sleep 0.1
    local n=0 i spids=()
    for i in $(seq "$clients"); do
        taskset -c 1 openssl s_time -connect "127.0.0.1:$port" -new -tls1_3 -time "$secs" "$@" \
            >"$work/st$i" 2>&1 &
        spids+=($!)
    done
    wait "${spids[@]}" || true
    for i in $(seq "$clients"); do
        n=$((n + $(awk '/connections in/ {print $1; exit}' "$work/st$i")))
    done
    wait $perfpid
    local ms
    ms=$(awk '/task-clock/ {print $1}' "$work/perf")
    python3 -c "print(f'{\"$label\":<28} {$n:>7} handshakes  {$ms*1000/$n:7.0f} µs server CPU each')"
}

echo "one worker pinned to CPU 0, $clients openssl s_time clients on CPU 1, ${secs}s each"
measure "terminus terminate" "$tpid" "$t_term"
measure "nginx terminate" "$npid" "$n_term"
measure "haproxy terminate" "$hpid" "$h_term"
measure "terminus mTLS (require)" "$tpid" "$t_mtls" -cert "$work/client.pem" -key "$work/client.key"
measure "nginx mTLS (verify on)" "$npid" "$n_mtls" -cert "$work/client.pem" -key "$work/client.key"
measure "haproxy mTLS (verify required)" "$hpid" "$h_mtls" -cert "$work/client.pem" -key "$work/client.key"
