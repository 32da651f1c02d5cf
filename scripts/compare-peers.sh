#!/usr/bin/env bash
# terminus vs nginx (stream + ssl) vs HAProxy (mode tcp) vs hitch as TLS 1.3 terminators
# in front of the same backend, side by side in one run, in two modes: termination, and mTLS
# (client certificate verified against the CA, required). One PKI (`terminus certs`,
# ECDSA P-256) for all. Each peer runs one worker/thread pinned to CPU 0; the load
# generator (`terminus bench`) and the backend (`terminus backend`) run on CPU 1. The
# peer's CPU is read by `bench --target-pid` from /proc/PID/task/*/schedstat around each
# measured window, the same way for every peer (all threads of terminus, the nginx
# worker, haproxy, the hitch worker: hitch has one backend per process, so one hitch per
# backend). Rounds are interleaved: round 1 of every mode, workload and peer, then
# round 2 ..., and each workload runs on every peer back to back, so drift on the host
# hits every peer alike.
#
#   bash scripts/compare-peers.sh               # full handshakes (saturating, and 4
#                                               # clients far from saturation), resumed
#                                               # handshakes, bulk download, 1 KiB rr
#   bash scripts/compare-peers.sh --check-only  # start each peer, verify termination,
#                                               # resumption and mTLS with openssl s_client
#
# The figures go into a JSON file that `terminus report` renders as the demo's report:
# the text tables on stdout and one self-contained HTML file (median and min-max over
# the rounds, ratios to terminus per round, noisy flags, bar charts, latency CDFs).
#
# Each handshake (full, low, resumed) carries 64 B echoed through the backend before the
# close, so every peer does the whole job: accept, handshake, connect the upstream,
# relay, close.
#
# The floor (issue 28), in the same run, for the handshake workloads: rustls' own server
# work in memory (`terminus bench --in-memory` with the server config terminus builds
# for the same listener, the server's share, on CPU 0: full, resumed, mTLS) plus what a plain TCP proxy pays per connection (HAProxy `mode tcp`
# without TLS in front of the same backend, its own process on CPU 0, loaded by `bench
# --plain` with the same connections and bytes). Its row, `floor`, shows how far each
# peer is from the work the job requires; FLOOR=0 leaves it out.
#
# Environment: ROUNDS (default 3); SECONDS_PER_RUN (default 3) per measurement; TERMINUS
# (binary; default: cargo build --release and ./target/release/terminus); HS_CONNECTIONS
# (16), LOW_CONNECTIONS (4), BULK_CONNECTIONS (4), RR_CONNECTIONS (8); PEERS (default
# "terminus nginx haproxy hitch"; terminus is always measured, it is the baseline);
# MODES ("term mtls"); WORKLOADS ("full low resumed bulk rr"); OUT (HTML report path;
# default target/compare-peers-DATE.html; the JSON beside it, .json). Everything listens
# on 127.0.0.1 on free ports; every process is killed and the temp dir removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
me=compare-peers.sh

usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; }
mode=bench
case "${1:-}" in
"") ;;
--check-only) mode=check ;;
-h | --help) usage && exit 0 ;;
*)
    echo "compare-peers.sh: unknown argument '$1' (expected --check-only or nothing)" >&2
    exit 2
    ;;
esac
if [ $# -gt 1 ]; then
    echo "compare-peers.sh: too many arguments" >&2
    exit 2
fi
secs=${SECONDS_PER_RUN:-3}
rounds=${ROUNDS:-3}
for v in ROUNDS:"$rounds" SECONDS_PER_RUN:"$secs" HS_CONNECTIONS:"${HS_CONNECTIONS:-16}" LOW_CONNECTIONS:"${LOW_CONNECTIONS:-4}" BULK_CONNECTIONS:"${BULK_CONNECTIONS:-4}" RR_CONNECTIONS:"${RR_CONNECTIONS:-8}"; do
    if ! [[ ${v#*:} =~ ^[1-9][0-9]*$ ]]; then
        echo "compare-peers.sh: ${v%%:*} must be a positive integer, got '${v#*:}'" >&2
        exit 2
    fi
done
all_peers="terminus nginx haproxy hitch"
peers=(terminus)
for p in ${PEERS:-$all_peers}; do
    [[ " $all_peers " == *" $p "* ]] || { echo "compare-peers.sh: PEERS: unknown peer '$p' (known: $all_peers)" >&2; exit 2; }
    [ "$p" = terminus ] || peers+=("$p")
done
[ "$mode" = check ] && read -r -a peers <<<"$all_peers" # --check-only checks every peer
wants() { [[ " ${peers[*]} " == *" $1 "* ]]; }
modes=(${MODES:-term mtls})
workloads=(${WORKLOADS:-full low resumed bulk rr})
for m in "${modes[@]}"; do
    [[ $m == term || $m == mtls ]] || { echo "compare-peers.sh: MODES: unknown mode '$m' (term, mtls)" >&2; exit 2; }
done
for w in "${workloads[@]}"; do
    [[ " full low resumed bulk rr " == *" $w "* ]] || { echo "compare-peers.sh: WORKLOADS: unknown workload '$w' (full low resumed bulk rr)" >&2; exit 2; }
done

# ---- tools -----------------------------------------------------------------------
# Debian 12: nginx-light's nginx plus the stream module (built with stream_ssl);
# haproxy; hitch; openssl s_client for --check-only; taskset (util-linux).
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v python3 >/dev/null || need+=(python3)
command -v taskset >/dev/null || need+=(util-linux)
if wants nginx; then
    [ -x /usr/sbin/nginx ] || need+=(nginx-light)
    [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
fi
floor=${FLOOR:-1}
[[ $floor == 0 || $floor == 1 ]] || { echo "compare-peers.sh: FLOOR must be 0 or 1, got '$floor'" >&2; exit 2; }
[ "$mode" = check ] && floor=0
{ wants haproxy || ((floor)); } && { [ -x /usr/sbin/haproxy ] || need+=(haproxy); }
wants hitch && { [ -x /usr/sbin/hitch ] || need+=(hitch); }
install_needed

if [ -z "${TERMINUS:-}" ]; then
    cargo build --release -q
    TERMINUS=./target/release/terminus
fi
T=$(realpath "$TERMINUS")
has_sub() { "$T" "$1" --help >/dev/null 2>&1; }
if [ "$mode" = bench ] && ! { has_sub bench && has_sub backend; }; then
    echo "compare-peers.sh: $T has no 'bench'/'backend' subcommands; build a terminus that has them (or use --check-only)" >&2
    exit 1
fi

# Every peer and the bench inherit the highest descriptor limit we may set.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---- processes and cleanup -------------------------------------------------------
lib_init compare-peers.sh /tmp/compare-peers.XXXXXX


"$T" certs --out "$work" >/dev/null
cat "$work/server.pem" "$work/server.key" >"$work/haproxy.pem" # haproxy: chain + key in one file
read -r be_echo be_src \
    t_term t_mtls t_term_src t_mtls_src \
    n_term n_mtls n_term_src n_mtls_src \
    h_term h_mtls h_term_src h_mtls_src \
    x_term x_mtls x_term_src x_mtls_src f_plain < <(free_ports 19)

# ---- backends (CPU 1, with the load generator) --------------------------------------
if has_sub backend; then
    taskset -c 1 "$T" backend --listen "127.0.0.1:$be_echo" --mode echo >"$work/backend-echo.err" 2>&1 &
    pids+=($!)
    backend_pids=($!)
    wait_port "$be_echo" $! backend-echo
    backend_desc="terminus backend (echo, source)"
    if [ "$mode" = bench ]; then
        taskset -c 1 "$T" backend --listen "127.0.0.1:$be_src" --mode source >"$work/backend-src.err" 2>&1 &
        pids+=($!)
        backend_pids+=($!)
        wait_port "$be_src" $! backend-src
    fi
else
    # --check-only with a terminus that has no backend yet: socat echoes instead.
    command -v socat >/dev/null || die "needs socat (apt-get install socat) or a terminus with 'backend'"
    taskset -c 1 socat "TCP-LISTEN:$be_echo,bind=127.0.0.1,reuseaddr,fork" EXEC:/bin/cat >"$work/backend-echo.err" 2>&1 &
    pids+=($!)
    wait_port "$be_echo" $! backend-echo
    backend_desc="socat echo (this terminus has no 'backend')"
fi

# ---- the peers -------------------------------------------------------------
# terminus: one worker pinned to CPU 0.
{
    terminus_runtime
    terminus_listener term "$t_term" "$be_echo" 0
    terminus_listener mtls "$t_mtls" "$be_echo" 1
    terminus_listener term_src "$t_term_src" "$be_src" 0
    terminus_listener mtls_src "$t_mtls_src" "$be_src" 1
} >"$work/terminus.toml"
terminus_start "$T" terminus

npid="" hpid="" xpid="" xpid_src=""
if wants nginx; then
# nginx: stream + ssl (lib.sh: one worker on CPU 0, TLS 1.3, tickets, mTLS required).
nginx_stream_conf "$n_term $be_echo 0" "$n_term_src $be_src 0" "$n_mtls $be_echo 1" "$n_mtls_src $be_src 1" \
    >"$work/nginx.conf"
/usr/sbin/nginx -t -q -c "$work/nginx.conf" 2>"$work/nginx.err" || die "nginx config invalid: $(cat "$work/nginx.err")"
/usr/sbin/nginx -c "$work/nginx.conf" 2>>"$work/nginx.err" &
nmaster=$!
pids+=($nmaster)
wait_port "$n_term" $nmaster nginx
npid=$(pgrep -P $nmaster | head -1)
[ -n "$npid" ] || die "no nginx worker process"
fi

if wants haproxy; then
# HAProxy: mode tcp (lib.sh: one thread on CPU 0, checked by pinned_to_0; TLS 1.3).
haproxy_tcp_conf "term $h_term $be_echo 0" "mtls $h_mtls $be_echo 1" \
    "term_src $h_term_src $be_src 0" "mtls_src $h_mtls_src $be_src 1" >"$work/haproxy.cfg"
/usr/sbin/haproxy -c -q -f "$work/haproxy.cfg" >"$work/haproxy.err" 2>&1 || die "haproxy config invalid: $(cat "$work/haproxy.err")"
/usr/sbin/haproxy -db -f "$work/haproxy.cfg" >>"$work/haproxy.err" 2>&1 &
hpid=$!
pids+=($hpid)
wait_port "$h_term" $hpid haproxy
fi

# hitch: one worker process, the whole process tree pinned to CPU 0, TLS 1.3 only;
# hitch has a single backend per process, so one instance for the echo backend and
# one for the source backend, each with a plain and an mTLS frontend.
hitch_conf() { # NAME BACKEND TERM_PORT MTLS_PORT
    mkdir -p "$work/$1.ocsp"
    # hitch refuses to run its workers as root: as root, they drop to nobody.
    local user=""
    if [ "$(id -u)" -eq 0 ]; then
        user='user = "nobody"'
        chmod 777 "$work/$1.ocsp"
    fi
    cat >"$work/$1.conf" <<EOF
$user
backend = "[127.0.0.1]:$2"
workers = 1
daemon = off
tls-protos = TLSv1.3
ocsp-dir = "$work/$1.ocsp"
client-verify-ca = "$work/ca.pem"
frontend = {
  host = "127.0.0.1"
  port = "$3"
  pem-file = "$work/haproxy.pem"
}
frontend = {
  host = "127.0.0.1"
  port = "$4"
  pem-file = "$work/haproxy.pem"
  client-verify = required
}
EOF
}
hitch_start() { # NAME BACKEND TERM_PORT MTLS_PORT; sets hitch_worker
    hitch_conf "$@"
    /usr/sbin/hitch --test --config="$work/$1.conf" >"$work/$1.err" 2>&1 || die "$1 config invalid: $(tail -3 "$work/$1.err")"
    taskset -c 0 /usr/sbin/hitch --config="$work/$1.conf" >>"$work/$1.err" 2>&1 &
    local master=$!
    pids+=($master)
    wait_port "$3" $master "$1"
    # The worker is the child that holds sockets (hitch may also run an OCSP helper).
    local w
    hitch_worker=""
    for w in $(pgrep -P $master); do
        if ls -l /proc/"$w"/fd 2>/dev/null | grep -q socket; then hitch_worker=$w; fi
    done
    [ -n "$hitch_worker" ] || die "no $1 worker process"
}
if wants hitch; then
hitch_start hitch-echo "$be_echo" "$x_term" "$x_mtls"
xpid=$hitch_worker
xpid_src=$xpid
if [ "$mode" = bench ]; then
    hitch_start hitch-src "$be_src" "$x_term_src" "$x_mtls_src"
    xpid_src=$hitch_worker
fi
fi

fpid=""
if ((floor)); then # the plain TCP proxy of the floor: its own HAProxy, so its CPU is its own
    haproxy_tcp_conf "plain $f_plain $be_echo plain" >"$work/floor.cfg"
    /usr/sbin/haproxy -c -q -f "$work/floor.cfg" >"$work/floor.err" 2>&1 || die "floor haproxy config invalid: $(cat "$work/floor.err")"
    /usr/sbin/haproxy -db -f "$work/floor.cfg" >>"$work/floor.err" 2>&1 &
    fpid=$!
    pids+=($fpid)
    wait_port "$f_plain" $fpid floor-haproxy
fi

declare -A pid_of=([terminus]=$tpid [nginx]=$npid [haproxy]=$hpid [hitch]=$xpid
    [hitch.term_src]=$xpid_src [hitch.mtls_src]=$xpid_src [floor]=$fpid)
declare -A port_of=(
    [terminus.term]=$t_term [terminus.mtls]=$t_mtls [terminus.term_src]=$t_term_src [terminus.mtls_src]=$t_mtls_src
    [nginx.term]=$n_term [nginx.mtls]=$n_mtls [nginx.term_src]=$n_term_src [nginx.mtls_src]=$n_mtls_src
    [haproxy.term]=$h_term [haproxy.mtls]=$h_mtls [haproxy.term_src]=$h_term_src [haproxy.mtls_src]=$h_mtls_src
    [hitch.term]=$x_term [hitch.mtls]=$x_mtls [hitch.term_src]=$x_term_src [hitch.mtls_src]=$x_mtls_src
    [floor.term]=$f_plain [floor.mtls]=$f_plain
)
client_cert=(-cert "$work/client.pem" -key "$work/client.key")

# ---- --check-only: openssl s_client against each peer and mode ----------------------
# One TLS 1.3 connection: send a line, give the echo 0.3 s to come back, close.
s_client() { # PORT ARGS...
    local port=$1
    shift
    (
        printf 'terminus-check\n'
        sleep 0.3
    ) | timeout 10 openssl s_client -connect "127.0.0.1:$port" -servername localhost \
        -tls1_3 -CAfile "$work/ca.pem" -verify_return_error -no_ign_eof "$@" 2>&1 || true
}
# (the echo may share a line with s_client's stderr notes, hence no anchors)
echoed() { grep -q 'terminus-check' <<<"$1"; }

# Whether some thread of PID (terminus: its worker; nginx: the worker process;
# haproxy: its one thread; hitch: its worker) may run only on CPU 0.
pinned_to_0() { grep -qx $'Cpus_allowed_list:\t0' /proc/"$1"/task/*/status 2>/dev/null; }

if [ "$mode" = check ]; then
    echo "backend: $backend_desc; openssl s_client -tls1_3 against each peer"
    fails=0
    report() { # STATUS PEER MODE DETAIL
        printf '%-4s %s %s: %s\n' "$1" "$2" "$3" "$4"
        [ "$1" = OK ] || fails=$((fails + 1))
    }
    for p in "${peers[@]}"; do
        if pinned_to_0 "${pid_of[$p]}"; then
            report OK "$p" pinning "a thread of PID ${pid_of[$p]} runs only on CPU 0"
        else
            report FAIL "$p" pinning "no thread of PID ${pid_of[$p]} is pinned to CPU 0"
        fi
        # Termination: verified TLS 1.3 handshake, bytes through to the echo backend,
        # and a resumed handshake from the ticket of the first connection.
        port=${port_of[$p.term]}
        out=$(s_client "$port" -sess_out "$work/$p.sess")
        out2=$(s_client "$port" -sess_in "$work/$p.sess")
        if ! grep -q 'New, TLSv1.3' <<<"$out" || ! grep -q 'Verify return code: 0 (ok)' <<<"$out" || ! echoed "$out"; then
            report FAIL "$p" terminate "no verified TLS 1.3 echo: $(grep -m3 -iE 'error|alert|verify' <<<"$out" | tr '\n' ' ')"
        elif ! grep -q 'Reused, TLSv1.3' <<<"$out2" || ! echoed "$out2"; then
            report FAIL "$p" terminate "TLS 1.3 echo ok, but the ticket did not resume: $(grep -m1 -E '^(New|Reused)' <<<"$out2")"
        else
            report OK "$p" terminate "TLS 1.3 handshake verified, echo through the backend, ticket resumption"
        fi
        # mTLS: the client certificate gets through (and resumes); no certificate gets
        # no bytes through.
        port=${port_of[$p.mtls]}
        out=$(s_client "$port" "${client_cert[@]}" -sess_out "$work/$p.mtls.sess")
        out2=$(s_client "$port" "${client_cert[@]}" -sess_in "$work/$p.mtls.sess")
        bare=$(s_client "$port")
        if ! grep -q 'New, TLSv1.3' <<<"$out" || ! echoed "$out"; then
            report FAIL "$p" mtls "client certificate refused or no echo: $(grep -m3 -iE 'error|alert' <<<"$out" | tr '\n' ' ')"
        elif echoed "$bare"; then
            report FAIL "$p" mtls "a client without a certificate got through"
        elif ! grep -q 'Reused, TLSv1.3' <<<"$out2" || ! echoed "$out2"; then
            report FAIL "$p" mtls "client certificate ok, but the ticket did not resume: $(grep -m1 -E '^(New|Reused)' <<<"$out2")"
        else
            why=$(grep -oiE 'alert [a-z]+( [a-z]+)*|unexpected eof|connection reset' <<<"$bare" | head -1 || true)
            report OK "$p" mtls "client certificate verified, echo, ticket resumption; without a certificate refused (${why:-connection closed})"
        fi
    done
    if ((fails)); then
        echo "check: $fails FAIL"
        exit 1
    fi
    echo "check OK: every peer terminates TLS 1.3 and enforces mTLS"
    exit 0
fi

# ---- benchmarks --------------------------------------------------------------------
res="$work/results"
mkdir -p "$res"
# One measurement: R.PEER.MODE.NAME.json, bench's report with the peer's CPU
# (--target-pid), the foreign CPU (the backends' CPU is the run's: --run-pid) and the
# latency distribution; a failed run leaves no file (the report shows "-").
bench() { # ROUND PEER MODE NAME LISTENER ARGS...
    local r=$1 p=$2 m=$3 name=$4 l=$5
    shift 5
    local extra=() run=() b
    local tls=(--tls --ca "$work/ca.pem" --server-name localhost)
    [ "$m" = mtls ] && extra=(--client-cert "$work/client.pem" --client-key "$work/client.key")
    if [ "$p" = floor ]; then # the plain TCP proxy: same connections and bytes, no TLS
        tls=(--plain)
        extra=()
        local a rest=()
        for a in "$@"; do # a plain connection has nothing to resume
            [ "$a" = --resume ] || rest+=("$a")
        done
        set -- "${rest[@]}"
    fi
    for b in "${backend_pids[@]}"; do run+=(--run-pid "$b"); done
    local f="$res/$r.$p.$m.$name" pid=${pid_of[$p.$l]:-${pid_of[$p]}}
    printf '  %s/%s %-8s %-5s %-8s ' "$r" "$rounds" "$p" "$m" "$name"
    if ! taskset -c 1 "$T" bench --target "127.0.0.1:${port_of[$p.$l]}" --duration "$secs" --workers 1 \
        "${tls[@]}" "${extra[@]}" --target-pid "$pid" "${run[@]}" \
        --json --latency-cdf "$@" >"$f.json" 2>"$f.err"; then
        echo "bench failed: $(tail -1 "$f.err")"
        rm -f "$f.json"
        return 0
    fi
    python3 -c 'import json, sys
j = json.load(open(sys.argv[1]))
cpu = j.get("target_cpu_us_per_op")
print("%.0f ops/s, %.2f Gbit/s, %s µs peer CPU/op" % (j.get("ops_per_s") or 0, j.get("gbit_per_s") or 0,
      "-" if cpu is None else "%.1f" % cpu))' "$f.json"
}
for p in "${peers[@]}"; do pinned_to_0 "${pid_of[$p]}" || die "$p (PID ${pid_of[$p]}) is not pinned to CPU 0"; done
if wants hitch; then pinned_to_0 "$xpid_src" || die "hitch-src (PID $xpid_src) is not pinned to CPU 0"; fi
echo "ROUNDS=$rounds SECONDS_PER_RUN=$secs; peers (${peers[*]}) pinned to CPU 0; bench and backends on CPU 1"
if ((floor)); then
    pinned_to_0 "$fpid" || die "the floor's HAProxy (PID $fpid) is not pinned to CPU 0"
    # rustls' own server work per handshake, in memory, on the peers' CPU, with the
    # server config terminus builds for its term and mtls listeners; once per run.
    echo "floor: rustls in memory (terminus bench --in-memory, server share, CPU 0)"
    for c in full resumed mtls_full; do
        args=(--listener term)
        [ "$c" = resumed ] && args+=(--resume)
        [ "$c" = mtls_full ] && args=(--listener mtls --client-cert "$work/client.pem" --client-key "$work/client.key")
        taskset -c 0 "$T" bench --in-memory --workload handshake --config "$work/terminus.toml" "${args[@]}" \
            --ca "$work/ca.pem" --server-name localhost --duration "$secs" --json >"$res/rustls_mem.$c.json" 2>"$work/mem.err" ||
            die "bench --in-memory ($c) failed: $(tail -1 "$work/mem.err")"
        python3 -c 'import json, sys; print("%.2f" % json.load(open(sys.argv[1]))["server_us_per_op"])' \
            "$res/rustls_mem.$c.json" >"$res/rustls_mem.$c"
        echo "  $c: $(cat "$res/rustls_mem.$c") µs"
    done
fi
for r in $(seq "$rounds"); do
    for m in "${modes[@]}"; do
        src=${m}_src
        for w in "${workloads[@]}"; do
            runners=("${peers[@]}")
            if ((floor)) && [[ $w == full || $w == low || $w == resumed ]]; then runners+=(floor); fi
            for p in "${runners[@]}"; do
                case $w in
                full) bench "$r" "$p" "$m" full "$m" --workload handshake --connections "${HS_CONNECTIONS:-16}" --size 64 ;;
                # Few closed-loop clients: the server is far from saturated, so what shows
                # is its per-connection overhead (accept, wake-ups, syscalls), not its peak.
                low) bench "$r" "$p" "$m" low "$m" --workload handshake --connections "${LOW_CONNECTIONS:-4}" --size 64 ;;
                resumed) bench "$r" "$p" "$m" resumed "$m" --workload handshake --resume --connections "${HS_CONNECTIONS:-16}" --size 64 ;;
                bulk) bench "$r" "$p" "$m" bulk "$src" --workload bulk --direction down --connections "${BULK_CONNECTIONS:-4}" ;;
                rr) bench "$r" "$p" "$m" rr "$m" --workload rr --size 1024 --connections "${RR_CONNECTIONS:-8}" ;;
                esac
            done
        done
    done
done

# ---- the report: figures into JSON, rendered by `terminus report` -------------------
out=${OUT:-target/compare-peers-$(date +%Y%m%d-%H%M%S).html}
mkdir -p "$(dirname "$out")"
json=${out%.html}.json
versions=$(
    if wants nginx; then printf '%s, ' "$(/usr/sbin/nginx -v 2>&1 | sed 's/^nginx version: //')"; fi
    if wants haproxy; then printf '%s, ' "$(/usr/sbin/haproxy -v | head -1 | awk '{print "HAProxy " $3}')"; fi
    if wants hitch; then printf '%s, ' "$(/usr/sbin/hitch --version 2>&1 | head -1)"; fi
    printf '%s (the peers link it)' "$(openssl version | awk '{print "OpenSSL " $2}')"
)
load="bash scripts/compare-peers.sh, ROUNDS=$rounds x SECONDS_PER_RUN=$secs s per measurement, interleaved (round, mode, workload, then peer); \
terminus bench, 1 worker on CPU 1: full handshakes (64 B echoed, then close) on ${HS_CONNECTIONS:-16} connections and on ${LOW_CONNECTIONS:-4} (low concurrency), \
resumed handshakes on ${HS_CONNECTIONS:-16}, bulk download on ${BULK_CONNECTIONS:-4}, 1 KiB rr on ${RR_CONNECTIONS:-8} kept connections (closed loop); \
each peer one worker pinned to CPU 0; backend: $backend_desc on CPU 1"
RES=$res ROUNDS_=$rounds PEERS_="${peers[*]}" MODES_="${modes[*]}" WORKLOADS_="${workloads[*]}" \
    VERSIONS="$versions" TERMINUS_VERSION="$("$T" --version)" IO="$(sed -n 's/^io backend=//p' "$work/terminus.out")" \
    LOAD="$load" HS="${HS_CONNECTIONS:-16}" LOW="${LOW_CONNECTIONS:-4}" \
    python3 - "$json" <<'EOF'
import json, os, sys
env = os.environ
res, rounds = env["RES"], int(env["ROUNDS_"])
peers, workloads = env["PEERS_"].split(), env["WORKLOADS_"].split()

def run(r, p, m, n):
    try:
        return json.load(open(f"{res}/{r}.{p}.{m}.{n}.json"))
    except (OSError, ValueError):
        return None

def per_round(p, m, n, get):
    out = []
    for r in range(1, rounds + 1):
        j = run(r, p, m, n)
        v = get(j) if j is not None else None
        out.append(float(v) if v is not None else None)
    return out

def median(v):
    v = sorted(x for x in v if x is not None)
    if not v:
        return None
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2

# (workload, header, decimals, bar chart y title or None, figure of a bench report)
# The floor: rustls' server work in memory plus the plain TCP proxy's CPU per connection
# (that proxy's own runs, same round), for the CPU-per-handshake columns only.
def rustls_mem(kind):
    try:
        return float(open(f"{res}/rustls_mem.{kind}").read())
    except (OSError, ValueError):
        return None

FLOOR_KIND = {("term", "full"): "full", ("term", "low"): "full", ("mtls", "full"): "mtls_full",
              ("mtls", "low"): "mtls_full", ("term", "resumed"): "resumed", ("mtls", "resumed"): "resumed"}

def floor_rounds(m, n):
    mem = rustls_mem(FLOOR_KIND.get((m, n), ""))
    plain = per_round("floor", m, n, lambda j: j.get("target_cpu_us_per_op"))
    return [None if (mem is None or v is None) else v + mem for v in plain]

floor = rustls_mem("full") is not None

COLUMNS = [
    ("full", "full hs/s", 0, f"full handshakes/s ({env['HS']} connections)", lambda j: j.get("ops_per_s")),
    ("full", "CPU µs/hs", 1, "CPU µs per full handshake", lambda j: j.get("target_cpu_us_per_op")),
    ("low", "low hs/s", 0, None, lambda j: j.get("ops_per_s")),
    ("low", "low CPU µs/hs", 1, f"CPU µs per full handshake, {env['LOW']} clients",
     lambda j: j.get("target_cpu_us_per_op")),
    ("resumed", "resumed hs/s", 0, None, lambda j: j.get("ops_per_s")),
    ("resumed", "res CPU µs/hs", 1, None, lambda j: j.get("target_cpu_us_per_op")),
    ("bulk", "Gbit/s", 2, "Gbit/s (bulk download)", lambda j: j.get("gbit_per_s")),
    ("bulk", "CPU ns/B", 2, None, lambda j: j.get("target_cpu_ns_per_byte")),
    ("rr", "rr req/s", 0, None, lambda j: j.get("ops_per_s")),
    ("rr", "rr p99 µs", 0, None, lambda j: (j.get("latency_us") or {}).get("p99")),
]
CDFS = [("full", "full handshake (connect until the server accepted): latency CDF"),
        ("rr", "1 KiB request/response on kept connections: latency CDF")]

def section(m, heading):
    runs = [(r, p, run(r, p, m, n)) for r in range(1, rounds + 1) for p in peers for n in workloads]
    runs = [x for x in runs if x[2] is not None]
    foreign = []
    for r in range(1, rounds + 1):
        w = [(j["foreign_cpus"], j["duration_s"]) for (q, _, j) in runs if q == r and j.get("foreign_cpus") is not None]
        secs = sum(d for _, d in w)
        f = sum(f * d for f, d in w) / secs if secs else None
        foreign.append("-" if f is None else "%.2f%s" % (f, "!" if f > 0.25 else ""))
    errors = {p: sum((j.get("errors") or {}).get("total", 0) for (_, q, j) in runs if q == p) for p in peers}
    failed = {p: sum(run(r, p, m, n) is None for r in range(1, rounds + 1) for n in workloads) for p in peers}
    notes = ["foreign CPU (CPU of other processes during the measured windows, average per round; "
             "! above 0.25 CPUs): " + " ".join(foreign),
             "errors over all runs: " + ", ".join(f"{p} {errors[p]}" for p in peers)
             + ("; failed runs: " + ", ".join(f"{p} {failed[p]}" for p in peers if failed[p])
                if any(failed.values()) else "")]
    if floor:
        mems = {k: rustls_mem(k) for k in ("full", "resumed", "mtls_full")}
        parts = []
        for n in ("full", "low", "resumed"):
            if n not in workloads:
                continue
            f = median(floor_rounds(m, n))
            t = median(per_round("terminus", m, n, lambda j: j.get("target_cpu_us_per_op")))
            if f and t:
                parts.append(f"{n} {t / f:.2f}x")
        notes.append("floor = rustls' own server work in memory (terminus bench --in-memory, server share: "
                     + ", ".join(f"{k} {v:.1f} µs" for k, v in mems.items() if v is not None)
                     + ") + a plain TCP proxy's CPU per connection (HAProxy mode tcp, no TLS, same backend, "
                     "connections and bytes); terminus / floor: " + (", ".join(parts) or "-"))
    if "full" in workloads:
        client = [median(per_round(p, m, "full", lambda j: j.get("client_cpu_us_per_op"))) for p in peers]
        notes.append("client CPU per full handshake (the bench's own worker, median): "
                     + ", ".join(f"{p} " + ("-" if c is None else f"{c:.0f} µs") for p, c in zip(peers, client)))
    return {
        "heading": heading,
        "series_kind": "peer",
        "series": peers + (["floor"] if floor else []),
        "baseline": "terminus",
        "ratio_header": "vs terminus",
        "columns": [{"name": h, "decimals": d, "chart": c,
                     "values": [per_round(p, m, n, get) for p in peers]
                     + ([floor_rounds(m, n) if "CPU" in h else [None] * rounds] if floor else [])}
                    for (n, h, d, c, get) in COLUMNS if n in workloads],
        "cdfs": [{"title": t, "runs": [[j["latency_cdf"] for j in (run(r, p, m, n) for r in range(1, rounds + 1))
                                        if j is not None and "latency_cdf" in j] for p in peers]
                           + ([[]] if floor else [])}
                 for (n, t) in CDFS if n in workloads],
        "notes": notes,
    }

titles = {"term": "termination", "mtls": "mTLS (client certificate required, verified against the CA)"}
others = [p for p in peers if p != "terminus"]
report = {
    "title": "terminus vs " + (" vs ".join(others) or "itself") + ": TLS 1.3 terminators, one worker on CPU 0",
    "meta": [
        ("terminus under test", env["TERMINUS_VERSION"] + ", io backend " + (env["IO"] or "?")),
        ("peers", env["VERSIONS"]),
        ("load", env["LOAD"]),
        ("CPU figures", "each peer's on-CPU time from /proc/PID/task/*/schedstat around the measured window "
                        "(bench --target-pid), per operation; ratios are peer / terminus in the same round"),
    ],
    "intro": "The same load against each TLS terminator in front of the same backend, in rounds "
             "interleaved across the peers. Compare ratios, not absolutes: the load generator "
             "shares the machine.",
    "sections": [section(m, titles[m]) for m in env["MODES_"].split()],
}
json.dump(report, open(sys.argv[1], "w"), indent=1, ensure_ascii=False)
EOF
echo
"$T" report --from "$json" --out "$out"
echo "figures: $json"
