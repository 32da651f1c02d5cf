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
secs=${1:-4}

need=()
command -v openssl >/dev/null || need+=(openssl)
command -v perf >/dev/null || need+=(linux-perf)
[ -x /usr/sbin/nginx ] || need+=(nginx-light)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
[ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v python3 >/dev/null || need+=(python3)
if ((${#need[@]})); then apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; fi

cargo build --release -q
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

./target/release/terminus certs --out "$work" >/dev/null
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
be=$(free_port); t_term=$(free_port); t_mtls=$(free_port); n_term=$(free_port); n_mtls=$(free_port)
h_term=$(free_port); h_mtls=$(free_port)
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

cat >"$work/terminus.toml" <<EOF
[runtime]
workers = 1
cpus = [0]
[log]
access = "off"
[[listeners]]
name = "terminate"
listen = "127.0.0.1:$t_term"
cert = "server.pem"
key = "server.key"
upstreams = ["127.0.0.1:$be"]
[[listeners]]
name = "mtls"
listen = "127.0.0.1:$t_mtls"
cert = "server.pem"
key = "server.key"
upstreams = ["127.0.0.1:$be"]
[listeners.client_auth]
mode = "require"
ca = ["ca.pem"]
allow = ["spiffe://example.org/client"]
EOF
./target/release/terminus run --config "$work/terminus.toml" >"$work/t.out" 2>&1 &
pids+=($!); tpid=$!

cat >"$work/nginx.conf" <<EOF
worker_processes 1;
worker_cpu_affinity 01;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx.err;
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
events { worker_connections 4096; }
stream {
  ssl_certificate $work/server.pem;
  ssl_certificate_key $work/server.key;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache shared:S:10m;
  server { listen 127.0.0.1:$n_term ssl; proxy_pass 127.0.0.1:$be; }
  server { listen 127.0.0.1:$n_mtls ssl; ssl_client_certificate $work/ca.pem;
           ssl_verify_client on; proxy_pass 127.0.0.1:$be; }
}
EOF
/usr/sbin/nginx -c "$work/nginx.conf" &
pids+=($!)

cat "$work/server.pem" "$work/server.key" >"$work/haproxy.pem"
cat >"$work/haproxy.cfg" <<EOF
global
  nbthread 1
  cpu-map 1/all 0
  maxconn 8192
  ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend term
  bind 127.0.0.1:$h_term ssl crt $work/haproxy.pem
  default_backend echo
frontend mtls
  bind 127.0.0.1:$h_mtls ssl crt $work/haproxy.pem ca-file $work/ca.pem verify required
  default_backend echo
backend echo
  server echo 127.0.0.1:$be
EOF
/usr/sbin/haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.err" 2>&1 &
pids+=($!)
hpid=$!
for _ in $(seq 50); do grep -q ready "$work/t.out" 2>/dev/null && pgrep -f "nginx: worker" >/dev/null && break; sleep 0.1; done
npid=$(pgrep -f "nginx: worker" | head -1)

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
