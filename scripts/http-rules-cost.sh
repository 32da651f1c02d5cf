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
. "$(dirname "$0")/lib.sh"

wrk_ab_init http-rules-cost.sh "${1:-}"
{
    terminus_runtime
    terminus_listener plain "$pa" "$be" 0 pki
    printf 'protocol = "http"\n\n'
    terminus_listener rules "$pb" "$be" 0 pki
    printf 'protocol = "http"\nrequests_per_second_per_caller = 100000000\n'
} >"$work/t.toml"
cat >>"$work/t.toml" <<EOF
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
terminus_start "$bin" t

wrk_cpu_ab "$tpid" plain "$pa" rules "$pb"
