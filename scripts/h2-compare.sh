#!/usr/bin/env bash
# HTTP/2 through terminus (`upstream_protocol = "h2"`) against nginx (`grpc_pass` to
# the same h2c upstream) and HAProxy (`mode http`, `proto h2` to it): requests per
# second and server CPU per request with h2load, in one run. Also terminus with HTTP/2
# clients and an HTTP/1.1 upstream (`upstream_protocol = "http1"`, `alpn = ["h2"]`,
# the same nginx's HTTP/1.1 port): the row "terminus-http1", the cost of translating.
#
#   bash scripts/h2-compare.sh [TERMINUS_BINARY]
#
# Each proxy: one worker on CPU 0, TLS 1.3, ALPN h2. The upstream: nginx serving
# 200 "ok" over h2c on CPU 1; h2load on CPU 1 too. Environment: ROUNDS (default 3),
# REQUESTS (200000 per run), CONNECTIONS (8), STREAMS (10 concurrent per connection).
# CPU is each proxy process's utime+stime from /proc around each h2load run. Needs
# h2load, nginx, haproxy, taskset (apt-get install nghttp2-client nginx-light haproxy).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
case "${1:-}" in -h | --help) usage && exit 0 ;; esac
bin=$(terminus_binary "${1:-}") || exit 2
needs h2load nginx haproxy taskset python3
lib_init h2-compare.sh

read -r be term ngx hap be1 term1 < <(free_ports 6)
"$bin" certs --out "$work" >/dev/null
cat "$work/server.pem" "$work/server.key" >"$work/haproxy.pem"

# The upstream: h2c on $be, HTTP/1.1 on $be1 (pids[0]).
nginx_http_ok "$be1" "$be"

{
    terminus_runtime
    terminus_listener h2 "$term" "$be" 0 "$work"
    printf 'protocol = "http"\nupstream_protocol = "h2"\n'
} >"$work/t.toml"
{
    terminus_runtime
    terminus_listener h2 "$term1" "$be1" 0 "$work"
    printf 'protocol = "http"\nalpn = ["h2"]\n'
} >"$work/t1.toml"
terminus_start "$bin" t1
t1pid=$tpid
terminus_start "$bin" t

{
    echo "worker_cpu_affinity 01;"
    nginx_http_head front 4096
    cat <<CONF
    upstream h2c { server 127.0.0.1:$be; keepalive 16; }
    server {
        listen 127.0.0.1:$ngx ssl http2;
        ssl_certificate $work/server.pem;
        ssl_certificate_key $work/server.key;
        ssl_protocols TLSv1.3;
        location / { grpc_pass grpc://h2c; }
    }
}
CONF
} >"$work/front.conf"
nginx -c "$work/front.conf" -p "$work" 2>"$work/front.start" &
npid=$!
pids+=("$npid")

cat >"$work/haproxy.cfg" <<CONF
global
  nbthread 1
  cpu-map 1/all 0
  maxconn 8192
  ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend h2
  bind 127.0.0.1:$hap ssl crt $work/haproxy.pem alpn h2
  default_backend up
backend up
  server up 127.0.0.1:$be proto h2
CONF
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.out" 2>"$work/haproxy.err" &
hpid=$!
pids+=("$hpid")
for p in "$be:nginx:0" "$ngx:front:$npid" "$hap:haproxy:$hpid"; do
    IFS=: read -r port name pid <<<"$p"
    [ "$pid" = 0 ] && pid=${pids[0]}
    wait_port "$port" "$pid" "$name"
done

# nginx's master only forks: its worker does the work.
nworker=$(pgrep -P "$npid" | head -1)
[ -n "$nworker" ] || die "no nginx worker under $npid"

python3 - "$tpid:$term" "$nworker:$ngx" "$hpid:$hap" "$t1pid:$term1" "${ROUNDS:-3}" \
    "${REQUESTS:-200000}" "${CONNECTIONS:-8}" "${STREAMS:-10}" <<'PY'
import os, re, statistics, subprocess, sys
peers = dict(zip(["terminus", "nginx", "haproxy", "terminus-http1"], sys.argv[1:5]))
rounds, n, c, m = (int(x) for x in sys.argv[5:9])
tick = os.sysconf("SC_CLK_TCK")
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick
def run(pid, port):
    before = cpu(pid)
    out = subprocess.run(["taskset", "-c", "1", "h2load", "-n", str(n), "-c", str(c),
                          "-m", str(m), f"https://127.0.0.1:{port}/"],
                         capture_output=True, text=True, check=True).stdout
    used = cpu(pid) - before
    ok = int(re.search(r"(\d+) succeeded", out).group(1))
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    if ok != n:
        sys.exit(f"h2load: {ok} of {n} succeeded on port {port}:\n{out}")
    return rps, used * 1e6 / ok
res = {k: [] for k in peers}
for r in range(rounds):
    order = list(peers) if r % 2 == 0 else list(reversed(peers))
    for k in order:
        pid, port = peers[k].split(":")
        rps, us = run(pid, port)
        res[k].append((rps, us))
        print(f"round {r + 1} {k}: {rps:.0f} req/s, {us:.1f} us CPU per request", file=sys.stderr)
print(f"| proxy | req/s (median of {rounds}) | server CPU per request (us) |")
print("|---|---|---|")
for k, v in res.items():
    print(f"| {k} | {statistics.median(x[0] for x in v):.0f} | {statistics.median(x[1] for x in v):.1f} |")
PY
