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

wrk_ab_init http-vs-tcp.sh "${1:-}"
{
    terminus_runtime
    terminus_listener tcp "$pa" "$be" 0 pki
    terminus_listener http "$pb" "$be" 0 pki
    printf 'protocol = "http"\n'
} >"$work/t.toml"
terminus_start "$bin" t

wrk_cpu_ab "$tpid" tcp "$pa" http "$pb"
