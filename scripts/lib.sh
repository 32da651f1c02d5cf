# Shared set-up of the measurement scripts, sourced (`. "$(dirname "$0")/lib.sh"`), not
# run: a temp dir and the processes killed on exit, free ports, waits with deadlines,
# the packages a script needs, and the configs of terminus and its peers (nginx stream,
# HAProxy mode tcp), each with one worker pinned to CPU 0 and TLS 1.3.
#
# lib_init NAME [MKTEMP_TEMPLATE] first: NAME prefixes every message; it sets `work`
# (the temp dir) and `pids` (append each background process; all are killed on exit).

lib_init() { # NAME [MKTEMP_TEMPLATE]
    me=$1
    if [ -n "${2:-}" ]; then work=$(mktemp -d "$2"); else work=$(mktemp -d); fi
    pids=()
    trap lib_cleanup EXIT
    trap 'exit 130' INT TERM
}

# SIGTERM to every process in `pids`, up to 2 s to exit, then SIGKILL; the temp dir goes.
lib_cleanup() {
    local p alive
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 20); do
        alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}

# Exit 2 naming the first of these commands that is not on PATH.
needs() { # COMMAND...
    local t
    for t; do command -v "$t" >/dev/null || { echo "${me:-${0##*/}}: needs $t" >&2; exit 2; }; done
}

# The terminus binary a script measures: PATH (default target/release/terminus) as an
# absolute path on stdout, or exit 2.
terminus_binary() { # [PATH]
    local b
    b=$(realpath "${1:-target/release/terminus}")
    [ -x "$b" ] || { echo "${0##*/}: no terminus binary at $b (cargo build --release)" >&2; exit 2; }
    echo "$b"
}

die() {
    echo "$me: $*" >&2
    exit 1
}

# Install the Debian packages named in the array `need` (if any), as root or with sudo.
install_needed() {
    ((${#need[@]})) || return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    echo "installing: ${need[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# N distinct free ports on 127.0.0.1, all bound at once so they differ.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

wait_port() { # PORT PID NAME: until PORT accepts, or PID died / 10 s passed
    for _ in $(seq 100); do
        kill -0 "$2" 2>/dev/null || die "$3 exited during start-up: $(tail -5 "$work/$3.err" 2>/dev/null)"
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    die "$3 did not listen on 127.0.0.1:$1 within 10 s"
}

wait_ready() { # NAME PID: until terminus' stdout ($work/NAME.out) says `ready` (10 s)
    for _ in $(seq 100); do
        grep -q '^ready' "$work/$1.out" 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || die "$1 exited during start-up: $(tail -5 "$work/$1.err")"
        sleep 0.1
    done
    die "$1 not ready within 10 s: $(tail -3 "$work/$1.err")"
}

# `BINARY run` on $work/NAME.toml (output in $work/NAME.out and .err), its pid in
# `tpid` and `pids`; returns once it is ready.
terminus_start() { # BINARY NAME
    "$1" run --config "$work/$2.toml" >"$work/$2.out" 2>"$work/$2.err" &
    tpid=$!
    pids+=("$tpid")
    wait_ready "$2" "$tpid"
}

# Sum of on-CPU nanoseconds of every thread of PID (field 1 of schedstat).
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'; } # %.0f: mawk's %d clamps at 2^31 ns

# terminus config: one worker pinned to CPU 0, no access log; then terminus_listener
# for each listener.
terminus_runtime() {
    printf '[runtime]\nworkers = 1\ncpus = [0]\ndrain_timeout_ms = 1000\n\n[log]\naccess = "off"\n\n'
}
terminus_listener() { # NAME PORT UPSTREAM_PORT MTLS(0|1) [PKI_DIR]: PKI_DIR/server.pem...
    local pki=${5:+$5/}
    printf '[[listeners]]\nname = "%s"\nlisten = "127.0.0.1:%s"\ncert = "%sserver.pem"\nkey = "%sserver.key"\nupstreams = ["127.0.0.1:%s"]\n' \
        "$1" "$2" "$pki" "$pki" "$3"
    if [ "$4" = 1 ]; then printf '[listeners.client_auth]\nmode = "require"\nca = ["%sca.pem"]\n' "$pki"; fi
    echo
}

# nginx (stream + ssl): one worker pinned to CPU 0, TLS 1.3 only, tickets on (TLS 1.3
# resumption is by ticket), the PKI in $work; each server "PORT UPSTREAM_PORT MTLS(0|1)",
# mTLS servers verify against the CA and require a certificate.
nginx_stream_conf() { # SERVER...
    local s
    cat <<EOF
worker_processes 1;
worker_cpu_affinity 01;
worker_rlimit_nofile 65536;
daemon off;
master_process on;
pid $work/nginx.pid;
error_log $work/nginx.err notice;
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
events { worker_connections 16384; }
stream {
  ssl_certificate $work/server.pem;
  ssl_certificate_key $work/server.key;
  ssl_protocols TLSv1.3;
  ssl_session_tickets on;
  ssl_session_cache shared:TLS:10m;
  ssl_session_timeout 1h;
EOF
    for s in "$@"; do
        set -- $s
        if [ "$3" = 1 ]; then
            printf '  server { listen 127.0.0.1:%s ssl; proxy_pass 127.0.0.1:%s;\n           ssl_client_certificate %s/ca.pem; ssl_verify_client on; }\n' "$1" "$2" "$work"
        else
            printf '  server { listen 127.0.0.1:%s ssl; proxy_pass 127.0.0.1:%s; }\n' "$1" "$2"
        fi
    done
    echo "}"
}

# HAProxy (mode tcp): one thread pinned to CPU 0 (2.6 with nbthread 1 applies
# `cpu-map 1/all`, not `1/1`), TLS 1.3 only (tickets are on by default), the chain and
# key in $work/haproxy.pem; each frontend "NAME PORT UPSTREAM_PORT MTLS(0|1|plain)", mTLS
# frontends verify against the CA and require a certificate; plain ones have no TLS.
haproxy_tcp_conf() { # FRONTEND...
    local f
    cat <<EOF
global
  nbthread 1
  cpu-map 1/all 0
  maxconn 8192
  ssl-default-bind-options ssl-min-ver TLSv1.3
  tune.ssl.cachesize 100000
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
EOF
    for f in "$@"; do
        set -- $f
        if [ "$4" = plain ]; then # no TLS: the plain TCP proxy (the floor's proxy share)
            printf 'frontend %s\n  bind 127.0.0.1:%s' "$1" "$2"
        else
            printf 'frontend %s\n  bind 127.0.0.1:%s ssl crt %s/haproxy.pem' "$1" "$2" "$work"
        fi
        if [ "$4" = 1 ]; then printf ' ca-file %s/ca.pem verify required' "$work"; fi
        printf '\n  default_backend up_%s\nbackend up_%s\n  server up 127.0.0.1:%s\n' "$1" "$1" "$3"
    done
}

# The first number named KEY anywhere in the JSON report FILE of `terminus bench --json`;
# fails when there is none, and with a third argument `clean` also when the report
# counts errors.
bench_figure() { # FILE KEY [clean]
    python3 - "$1" "$2" "${3:-}" <<'EOF'
import json, sys
path, key, clean = sys.argv[1:]
r = json.load(open(path))
def find(d, key):
    if isinstance(d, dict):
        for k, v in d.items():
            if k == key and isinstance(v, (int, float)):
                return v
            got = find(v, key)
            if got is not None:
                return got
    return None
v = find(r, key)
if v is None or (clean and find(r, "errors")):
    sys.exit(f"no {key} in the bench report, or errors: {r}")
print(v)
EOF
}

# The start of an nginx HTTP config, up to inside `http {`: one worker, in the
# foreground, pid and error log in $work/NAME.pid and .err, kept connections.
nginx_http_head() { # NAME WORKER_CONNECTIONS
    printf 'worker_processes 1;\ndaemon off;\npid %s/%s.pid;\nerror_log %s/%s.err;\n' "$work" "$1" "$work" "$1"
    printf 'events { worker_connections %s; }\nhttp {\n    access_log off;\n    keepalive_requests 100000000;\n' "$2"
}

# nginx as an HTTP backend on CPU 1 answering every request with 200 "ok" on kept
# connections (config in $work/nginx.conf): HTTP/1.1 on PORT and, given H2C_PORT, h2c
# there (nginx 1.22: `listen … http2` without ssl is prior knowledge); its pid goes
# into `pids`.
nginx_http_ok() { # PORT [H2C_PORT]
    local h2c=""
    if [ -n "${2:-}" ]; then h2c="server { listen 127.0.0.1:$2 http2; location / { return 200 \"ok\\n\"; } }"; fi
    {
        nginx_http_head nginx 1024
        cat <<EOF
    server {
        listen 127.0.0.1:$1;
        location / { return 200 "ok\n"; }
    }
    $h2c
}
EOF
    } >"$work/nginx.conf"
    taskset -c 1 nginx -c "$work/nginx.conf" -p "$work" 2>"$work/nginx.start" &
    pids+=($!)
}

# The start of the scripts that compare two listeners with wrk_cpu_ab: -h/--help
# prints the script's leading comment; the terminus binary (ARG, default the release
# build) in `bin`; lib_init NAME; nginx_http_ok on port `be`; two free ports `pa` and
# `pb` for the listeners; the test PKI in $work/pki.
wrk_ab_init() { # NAME [ARG]
    case "${2:-}" in -h | --help) sed -n '2,/^[^#]/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//' && exit 0 ;; esac
    bin=$(terminus_binary "${2:-}") || exit 2
    needs wrk nginx taskset python3
    lib_init "$1"
    read -r be pa pb < <(free_ports 3)
    nginx_http_ok "$be"
    "$bin" certs --out "$work/pki" >/dev/null
}

# Server CPU per request of two https listeners of one terminus (PID), A against B:
# `wrk` on CPU 1 with ROUNDS x SECONDS_PER_RUN runs of CONNECTIONS kept connections,
# alternating A,B / B,A; CPU is the process's utime+stime from /proc around each run.
# Prints each run to stderr, then the table of medians and the ratio B / A.
wrk_cpu_ab() { # PID A_NAME A_PORT B_NAME B_PORT
    python3 - "$@" "${ROUNDS:-5}" "${SECONDS_PER_RUN:-4}" "${CONNECTIONS:-8}" <<'EOF'
import os, re, statistics, subprocess, sys
pid, a, a_port, b, b_port = sys.argv[1:6]
rounds, secs, conns = int(sys.argv[6]), sys.argv[7], sys.argv[8]
ports = {a: a_port, b: b_port}
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
res = {a: [], b: []}
for r in range(rounds):
    order = [a, b] if r % 2 == 0 else [b, a]
    for m in order:
        us, rps = run(ports[m])
        res[m].append(us)
        print(f"round {r + 1} {m}: {us:.2f} µs/request, {rps:.0f} requests/s", file=sys.stderr)
print(f"\n{rounds} rounds x {secs} s, {conns} kept connections (wrk), server CPU per request\n")
print("| listener | median µs/request (range) |")
print("|---|---:|")
for m in (a, b):
    v = res[m]
    print(f"| {m} | {statistics.median(v):.2f} ({min(v):.2f}–{max(v):.2f}) |")
print(f"\n{b} / {a}: {statistics.median(res[b]) / statistics.median(res[a]):.3f}")
EOF
}
