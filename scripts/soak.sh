#!/usr/bin/env bash
# The soak (issue 29 §2): one terminus under mixed load and faults for N minutes, a
# table row per minute, then the end checks; exit 0 when they all hold, 1 otherwise.
#
#   bash scripts/soak.sh --minutes N [--io io_uring|epoll] [--bin FILE] [--no-recovery-check]
#
# At once, for the whole run: full and resumed handshakes, mTLS clients (and clients
# without a certificate, with an unknown CA's or a revoked one, refused), kept-alive requests on an
# http listener, echo streams of 1-8 MiB compared byte for byte, slowloris heads,
# clients that never read and an upstream that never reads, reset storms, garbage,
# a config reload every 10 s (two valid configs and one invalid, in turn), the
# server certificate rotated every 30 s, an upstream that flaps every 20 s, and an
# upstream name whose address changes every 15 s. Load: `terminus bench` and
# scripts/soak-traffic.py; upstreams: `terminus backend` and soak-traffic.py peers.
#
# Per minute: RSS, fds, open connections, handshakes (resumed), and the errors
# terminus counted by reason. At the end: RSS and fd slope after the first minute
# (bounds: 2 MiB/min, 2 fds/min), RSS within 2x the idle baseline in the 30 s after the load
# stops and terminus has no connection left (the faulty upstreams stop with the load)
# (--no-recovery-check reports without enforcing), no corrupt byte, no error on the
# well-behaved clients of steady upstreams, every handshake error matched by a faulty
# client, upstream errors only at the flapping one, one reload error per invalid
# config, /healthz within 100 ms throughout, no panic, still alive.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
here=$(cd "$(dirname "$0")" && pwd)

usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; }
minutes="" io=io_uring bin=target/release/terminus recovery=()
while (($#)); do
    case "$1" in
    --minutes) minutes=$2; shift 2 ;;
    --io) io=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --no-recovery-check) recovery=(--no-recovery-check); shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "soak.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
[[ "$minutes" =~ ^[1-9][0-9]*$ ]] || { echo "soak.sh: --minutes N (N >= 1) is required" >&2; exit 2; }
[[ "$io" == io_uring || "$io" == epoll ]] || { echo "soak.sh: --io io_uring|epoll" >&2; exit 2; }
bin=$(realpath "$bin")
[ -x "$bin" ] || { echo "soak.sh: no terminus binary at $bin (cargo build --release)" >&2; exit 2; }
for t in python3 openssl curl; do
    command -v "$t" >/dev/null || { echo "soak.sh: needs $t" >&2; exit 2; }
done
lib_init soak.sh
py=(python3 "$here/soak-traffic.py")

# --- PKI: the server's, a second server certificate of the same CA (rotation), an
# unknown CA's client.
"$bin" certs --out "$work/pki" >/dev/null
"$bin" certs --out "$work/other" >/dev/null
pki=$work/pki
openssl req -new -key "$pki/server.key" -subj /CN=localhost -out "$work/b.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$work/san.ext"
openssl x509 -req -in "$work/b.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 2 -extfile "$work/san.ext" -out "$work/server-b.pem" 2>/dev/null
cp "$pki/server.pem" "$work/server-a.pem"
# A client certificate of the same CA, revoked in the CA's CRL.
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/revoked.key" \
    -subj /CN=revoked -out "$work/revoked.csr" 2>/dev/null
printf 'extendedKeyUsage=clientAuth\nsubjectAltName=URI:spiffe://example.org/revoked\n' >"$work/revoked.ext"
openssl x509 -req -in "$work/revoked.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 2 -extfile "$work/revoked.ext" -out "$work/revoked.pem" 2>/dev/null
mkdir -p "$work/ca" && : >"$work/ca/index.txt" && echo 1000 >"$work/ca/crlnumber"
printf '[ca]\ndefault_ca = d\n[d]\ndatabase = %s/ca/index.txt\ncrlnumber = %s/ca/crlnumber\ndefault_md = sha256\ndefault_crl_days = 2\n' \
    "$work" "$work" >"$work/ca.cnf"
openssl ca -config "$work/ca.cnf" -cert "$pki/ca.pem" -keyfile "$pki/ca.key" -revoke "$work/revoked.pem" 2>/dev/null
openssl ca -config "$work/ca.cnf" -cert "$pki/ca.pem" -keyfile "$pki/ca.key" -gencrl -out "$pki/ca.crl" 2>/dev/null

# --- Upstreams.
# Ports below the ephemeral range (32768+): a busy host's outgoing connections cannot
# take one between this choice and the bind; each is free on 127.0.0.1 and 127.0.0.2.
soak_ports() {
    python3 - "$1" <<'PY'
import random, socket, sys
out = []
while len(out) < int(sys.argv[1]):
    p = random.randrange(20000, 32000)
    try:
        for ip in ("127.0.0.1", "127.0.0.2"):
            s = socket.socket(); s.bind((ip, p)); s.close()
    except OSError:
        continue
    if p not in out:
        out.append(p)
print(" ".join(map(str, out)))
PY
}
read -r echo_p source_p sink_p http_p flap_p admin_p edge_p mtls_p web_p named_p flappy_p src_l sink_l \
    < <(soak_ports 13)
start_bg() { # NAME CMD...: background, output in $work/NAME.{out,err}
    local name=$1; shift
    "$@" >"$work/$name.out" 2>"$work/$name.err" &
    pids+=($!)
}
start_bg echo1 "$bin" backend --listen "127.0.0.1:$echo_p" --mode echo
start_bg echo2 "$bin" backend --listen "127.0.0.2:$echo_p" --mode echo
start_bg source "$bin" backend --listen "127.0.0.1:$source_p" --mode source
source_pid=$!
start_bg sinkpeer "${py[@]}" sink-peer --port "$sink_p"
sink_pid=$!
start_bg httppeer "${py[@]}" http-peer --port "$http_p"
start_bg flap "$bin" backend --listen "127.0.0.1:$flap_p" --mode echo
flap_pid=$!
for name_port in echo1:$echo_p source:$source_p sinkpeer:$sink_p httppeer:$http_p flap:$flap_p; do
    wait_port "${name_port#*:}" "${pids[-1]}" "${name_port%%:*}"
done
printf '127.0.0.1 soak.test\n' >"$work/hosts"

# --- terminus: two valid configs (B differs in a hot-reloadable value) and an invalid one.
conf() { # HANDSHAKE_TIMEOUT_MS
    cat <<EOF
[runtime]
workers = 2
pin_cpus = false
reload_interval_ms = 1000

[admin]
listen = "127.0.0.1:$admin_p"

[log]
access = "off"

[resolver]
hosts_file = "hosts"

[[listeners]]
name = "edge"
listen = "127.0.0.1:$edge_p"
cert = "pki/server.pem"
key = "pki/server.key"
upstreams = ["127.0.0.1:$echo_p"]
handshake_timeout_ms = $1

[[listeners]]
name = "mtls"
listen = "127.0.0.1:$mtls_p"
cert = "pki/server.pem"
key = "pki/server.key"
upstreams = ["127.0.0.1:$echo_p"]
[listeners.client_auth]
mode = "require"
ca = ["pki/ca.pem"]
crl = ["pki/ca.crl"]

[[listeners]]
name = "web"
listen = "127.0.0.1:$web_p"
cert = "pki/server.pem"
key = "pki/server.key"
upstreams = ["127.0.0.1:$http_p"]
protocol = "http"
[listeners.http]
head_timeout_ms = 5000

[[listeners]]
name = "named"
listen = "127.0.0.1:$named_p"
cert = "pki/server.pem"
key = "pki/server.key"
upstreams = ["soak.test:$echo_p"]
resolve_interval_ms = 1000

[[listeners]]
name = "flappy"
listen = "127.0.0.1:$flappy_p"
cert = "pki/server.pem"
key = "pki/server.key"
upstreams = ["127.0.0.1:$flap_p"]
upstream_backoff_ms = 500

[[listeners]]
name = "source"
listen = "127.0.0.1:$src_l"
cert = "pki/server.pem"
key = "pki/server.key"
upstreams = ["127.0.0.1:$source_p"]

[[listeners]]
name = "sink"
listen = "127.0.0.1:$sink_l"
cert = "pki/server.pem"
key = "pki/server.key"
upstreams = ["127.0.0.1:$sink_p"]
EOF
}
conf 10000 >"$work/a.toml"
conf 9000 >"$work/b.toml"
{ conf 10000; printf '\n[[listeners]\nname = "broken"\n'; } >"$work/bad.toml"
cp "$work/a.toml" "$work/terminus.toml"
"$bin" check --config "$work/terminus.toml" >/dev/null

TERMINUS_IO=$io "$bin" run --config "$work/terminus.toml" >"$work/terminus.out" 2>"$work/terminus.err" &
tpid=$!
pids+=("$tpid")
wait_ready terminus "$tpid"
grep -q "^io backend=$io" "$work/terminus.out" || die "terminus is not on $io: $(head -1 "$work/terminus.out")"
echo "soak: terminus $("$bin" --version | cut -d' ' -f2) on $io, pid $tpid, $minutes minute(s), work dir $work"
sleep 2
# The idle baseline, before any load.
base_rss=$(awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$tpid/status")
base_fds=$(ls "/proc/$tpid/fd" | wc -l)

start=$(date +%s)
until=$((start + minutes * 60))
out=$work/out
mkdir -p "$out"
echo 0 >"$out/invalid-reloads"
common=(--until "$until" --start "$start" --ca "$pki/ca.pem")

# --- Faults, each a loop until the deadline.
( # config reload every 10 s: a, b, invalid in turn
    i=0
    while (($(date +%s) < until - 5)); do
        sleep 10
        case $((i % 3)) in
        0) cp "$work/b.toml" "$work/terminus.toml.new" ;;
        1) cp "$work/bad.toml" "$work/terminus.toml.new"
           echo $(($(cat "$out/invalid-reloads") + 1)) >"$out/invalid-reloads" ;;
        2) cp "$work/a.toml" "$work/terminus.toml.new" ;;
        esac
        mv "$work/terminus.toml.new" "$work/terminus.toml"
        kill -HUP "$tpid"
        i=$((i + 1))
    done
) &
pids+=($!)
( # certificate rotation every 30 s (same CA and key, new certificate)
    i=0
    while (($(date +%s) < until - 5)); do
        sleep 30
        if ((i % 2)); then cp "$work/server-a.pem" "$pki/server.pem.new"; else cp "$work/server-b.pem" "$pki/server.pem.new"; fi
        mv "$pki/server.pem.new" "$pki/server.pem"
        i=$((i + 1))
    done
) &
pids+=($!)
( # the flapping upstream: 20 s down, 20 s up
    # Each kill may cut the one echo in flight (the loop is sequential): counted for
    # the verdict, which allows one failure per kill beyond the connect errors.
    fp=$flap_pid kills=0
    while (($(date +%s) < until - 5)); do
        sleep 20
        kill "$fp" 2>/dev/null; wait "$fp" 2>/dev/null || true
        kills=$((kills + 1)); echo "$kills" >"$out/flap-kills"
        sleep 20
        "$bin" backend --listen "127.0.0.1:$flap_p" --mode echo >/dev/null 2>&1 &
        fp=$!
    done
    kill "$fp" 2>/dev/null || true
) &
pids+=($!)
( # the upstream name's address: 127.0.0.1 and 127.0.0.2 in turn every 15 s
    i=0
    while (($(date +%s) < until - 5)); do
        sleep 15
        printf '127.0.0.%d soak.test\n' $((i % 2 + 1)) >"$work/hosts.new"
        mv "$work/hosts.new" "$work/hosts"
        i=$((i + 1))
    done
) &
pids+=($!)

# --- Load.
bench_loop() { # NAME ARGS...: one bench run of up to 50 s after another, JSON lines
    local name=$1; shift
    (
        while (($(date +%s) < until - 15)); do
            d=$((until - 10 - $(date +%s))); ((d > 50)) && d=50
            "$bin" bench --quiet --json --duration "$d" --ca "$pki/ca.pem" --server-name localhost "$@" \
                >>"$out/bench-$name.jsonl" 2>>"$out/bench-$name.err" || true
        done
    ) &
    pids+=($!)
}
bench_loop full --target "127.0.0.1:$edge_p" --workload handshake --connections 2
bench_loop resumed --target "127.0.0.1:$edge_p" --workload handshake --connections 1 --resume
bench_loop mtls --target "127.0.0.1:$mtls_p" --workload handshake --connections 1 \
    --client-cert "$pki/client.pem" --client-key "$pki/client.key"
bench_loop named --target "127.0.0.1:$named_p" --workload rr --connections 2 --rate 200
gen() { # [NAME=]ROLE PORT ARGS...: counters in $out/NAME.json (NAME: the role's by default)
    local name=${1%%=*} role=${1#*=} port=$2; shift 2
    "${py[@]}" "$role" --port "$port" "${common[@]}" --out "$out/$name.json" "$@" 2>>"$out/$name.err" &
    pids+=($!)
}
gen bulk "$edge_p" --threads 2
gen http "$web_p" --threads 2
gen slowloris "$web_p" --threads 8
gen stall-read "$src_l" --threads 2
gen stall-write "$sink_l" --threads 2
gen resets "$edge_p"
gen garbage "$edge_p"
gen refused "$mtls_p" --cert "$work/other/client.pem" --key "$work/other/client.key" \
    --revoked-cert "$work/revoked.pem" --revoked-key "$work/revoked.key"
gen flappy=echo-loop "$flappy_p" --threads 2
gen admin "$admin_p"

# When the load stops, the faulty upstreams stop too: the sink never reads, so each
# connection a stall-write client left holds what that client sent (up to
# max_buffered_bytes) until the idle timeout, as a proxy must (the client half-closed;
# its bytes are still owed to the upstream). The recovery is measured once terminus
# has no connection left, so it shows memory not given back, not memory in use.
(
    left=$((until - $(date +%s)))
    if ((left > 0)); then sleep "$left"; fi
    kill "$sink_pid" "$source_pid" 2>/dev/null || true
) &
pids+=($!)

# --- The table, then recovery (30 s once no connection is left), then the checks.
"${py[@]}" monitor --pid "$tpid" --port "$admin_p" --baseline "$base_rss" "$base_fds" --until "$until" --start "$start" --out "$out/monitor.json"
# Every generator has passed its deadline; wait for the stragglers (bench runs end
# 10 s before it).
for _ in $(seq 60); do
    n=0
    for f in bulk http slowloris stall-read stall-write resets garbage refused admin flappy; do [ -e "$out/$f.json" ] && n=$((n + 1)); done
    ((n == 10)) && break
    sleep 1
done
kill -0 "$tpid" 2>/dev/null || die "terminus died: $(tail -5 "$work/terminus.err")"
alive=1
panics=$(grep -c "panicked" "$work/terminus.err" || true)
echo
status=0
"${py[@]}" verdict --dir "$out" --flap "127.0.0.1:$flap_p" --named "$echo_p" "${recovery[@]}" --port 0 || status=1
if ((panics)); then echo "FAIL panics in terminus' log: $panics"; status=1; else echo "ok   no panic in terminus' log; still alive ($alive)"; fi
for f in "$out"/*.err; do
    [ -s "$f" ] && { echo "--- $(basename "$f") (last lines)"; tail -3 "$f"; }
done
if ((status)); then echo "soak: FAIL"; else echo "soak: PASS"; fi
exit $status
