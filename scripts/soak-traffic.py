#!/usr/bin/env python3
"""The soak's own clients and peers (scripts/soak.sh), the ones `terminus bench`
does not play: each runs until --until (a Unix time) and then writes its counters as
one JSON object to --out. Standard library only.

  bulk        TLS echo streams of 1-8 MiB, every byte compared (corrupt = mismatches)
  http        kept-alive HTTP/1.1 requests, 20 per connection, status and body checked
  slowloris   request heads sent a byte every 2 s (the listener's head timeout ends them)
  stall-read  a client that sends requests and never reads the answers (source backend)
  stall-write a client that writes to an upstream that never reads (its buffers fill)
  resets      bursts of connections reset (SO_LINGER 0) during and after the handshake
  garbage     random bytes to the TLS port
  refused     mTLS handshakes with no client certificate and with an unknown CA's
  admin       GET /healthz every 200 ms: the slowest answer per minute (admin.tsv)
  http-peer   the upstream of the http listener: answers every request with a fixed body
  sink-peer   an upstream that accepts and never reads
  monitor     every 10 s: RSS and fds of --pid and the admin metrics; a table row per
              minute on stdout; after --until, once no connection is left (60 s at most), 30 s
              of recovery samples (monitor.json)
  verdict     the end checks over --dir's files; prints them, exits 1 if one fails
"""
import argparse
import contextlib
import glob
import http.server
import json
import os
import random
import socket
import socketserver
import ssl
import struct
import threading
import time
import urllib.request

A = None
C = {}
LOCK = threading.Lock()


def count(key, n=1):
    with LOCK:
        C[key] = C.get(key, 0) + n


@contextlib.contextmanager
def counting_errors():
    """One attempt of a load: any exception is counted by kind, and the load goes on."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - counted by kind
        count("error:" + type(e).__name__)


def left():
    return A.until - time.time()


def ctx(cert=None, key=None):
    c = ssl.create_default_context(cafile=A.ca)
    if cert:
        c.load_cert_chain(cert, key)
    return c


def tls(port, c=None, timeout=20):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return (c or ctx()).wrap_socket(s, server_hostname="localhost")


def pattern(seed, n):
    r = random.Random(seed)
    return r.randbytes(n)


def bulk():
    # One thread per connection, non-blocking: an SSL object must not be read and
    # written from two threads at once.
    import select
    seed = 0
    while left() > 10:
        seed += 1
        n = random.Random(seed).randint(1, 8) << 20
        data = pattern(seed, n)
        with counting_errors():
            s = tls(A.port)
            s.setblocking(False)
            got = bytearray()
            sent = 0
            while len(got) < n:
                want_w = sent < n and sent - len(got) < (4 << 20)
                r, w, _ = select.select([s], [s] if want_w else [], [], 20)
                if not r and not w and not s.pending():
                    count("stalled")
                    break
                if w:
                    try:
                        sent += s.send(data[sent:sent + 65536])
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        pass
                eof = False
                while True:
                    try:
                        b = s.recv(262144)
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        break
                    if not b:
                        eof = True
                        break
                    got.extend(b)
                if eof:
                    break
            s.close()
            if len(got) != n:
                count("short")
            elif bytes(got) != data:
                count("corrupt")
            else:
                count("ok")
                count("bytes", n)


def http_client():
    body = A.body.encode()
    while left() > 5:
        with counting_errors():
            s = tls(A.port)
            f = s.makefile("rb")
            for i in range(20):
                s.sendall(b"GET /soak/%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % i)
                status = f.readline()
                length = None
                while True:
                    h = f.readline()
                    if h in (b"\r\n", b""):
                        break
                    k, _, v = h.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                got = f.read(length or 0)
                if not status.startswith(b"HTTP/1.1 200") or got != body:
                    count("bad")
                    break
                count("ok")
            s.close()


def slowloris():
    # A byte a second of a head that never ends; the listener's head timeout must cut
    # it (a 408, or the connection closed). Uncut after 3x the timeout: never-ended.
    import select
    head = b"GET /slow HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 1000
    while left() > 20:
        with counting_errors():
            s = tls(A.port, timeout=5)
            t0 = time.time()
            outcome = "never-ended"
            for b in head:
                if time.time() - t0 > 15:
                    break
                try:
                    s.send(bytes([b]))
                except (ConnectionError, ssl.SSLError, OSError):
                    outcome = "cut"
                    break
                r, _, _ = select.select([s], [], [], 1)
                if r or s.pending():
                    try:
                        answer = s.recv(64)
                    except (ConnectionError, ssl.SSLError, OSError):
                        answer = b""
                    outcome = "408" if answer.startswith(b"HTTP/1.1 408") else "cut"
                    break
            count(outcome)
            s.close()


def stall_read():
    # The source backend sends without end; this client never reads. Held 20 s.
    while left() > 25:
        with counting_errors():
            s = tls(A.port)
            s.sendall(b"go")
            time.sleep(20)
            s.close()
            count("held")


def stall_write():
    # The upstream never reads: write until the proxy stops reading us, hold, close.
    chunk = b"x" * 65536
    while left() > 25:
        with counting_errors():
            s = tls(A.port)
            s.settimeout(5)
            sent = 0
            try:
                while sent < (64 << 20):
                    s.send(chunk)
                    sent += len(chunk)
                count("never-blocked")
            except (socket.timeout, TimeoutError):
                count("blocked")
                count("blocked_after_bytes", sent)
            time.sleep(10)
            s.close()


def resets():
    linger = struct.pack("ii", 1, 0)
    while left() > 2:
        for i in range(50):
            with counting_errors():
                s = socket.create_connection(("127.0.0.1", A.port), timeout=5)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                if i % 2:
                    # Mid-handshake: a ClientHello's first bytes, then RST.
                    s.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
                else:
                    t = ctx().wrap_socket(s, server_hostname="localhost")
                    t.send(b"hello")
                    s = t
                s.close()
                count("reset")
        time.sleep(2)


def garbage():
    r = random.Random(29)
    while left() > 2:
        with counting_errors():
            s = socket.create_connection(("127.0.0.1", A.port), timeout=5)
            s.sendall(r.randbytes(r.randint(1, 4096)))
            s.settimeout(5)
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass
            s.close()
            count("sent")
        time.sleep(0.05)


def refused():
    clients = [("none", ctx())]
    if A.cert:
        clients.append(("unknown", ctx(A.cert, A.key)))
    if A.revoked_cert:
        clients.append(("revoked", ctx(A.revoked_cert, A.revoked_key)))
    while left() > 2:
        for name, c in clients:
            try:
                s = tls(A.port, c)
                s.sendall(b"ping")
                if s.recv(4):
                    count(name + ":served")  # must not happen
                else:
                    count(name + ":refused")
                s.close()
            except (ssl.SSLError, ConnectionError, OSError):
                count(name + ":refused")
        time.sleep(0.2)


def echo_loop():
    # A short echo on a new connection every 100 ms (the flapping upstream's clients:
    # served while it is up, refused while it is down).
    while left() > 2:
        with counting_errors():
            s = tls(A.port, timeout=5)
            s.sendall(b"x" * 1024)
            got = b""
            while len(got) < 1024:
                b = s.recv(1024 - len(got))
                if not b:
                    break
                got += b
            s.close()
            count("ok" if got == b"x" * 1024 else "cut")
        time.sleep(0.1)


def admin():
    lat = {}
    while left() > 0:
        t0 = time.time()
        try:
            s = socket.create_connection(("127.0.0.1", A.port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            ok = s.recv(64).startswith(b"HTTP/1.1 200")
            s.close()
            count("ok" if ok else "bad")
        except OSError:
            count("error")
        m = int((t0 - A.start) // 60) + 1
        lat.setdefault(m, []).append((time.time() - t0) * 1000)
        with open(A.out + ".tsv", "w") as f:
            for k in sorted(lat):
                v = sorted(lat[k])
                f.write("%d\t%.1f\t%.1f\n" % (k, v[int(0.99 * (len(v) - 1))], v[-1]))
        time.sleep(0.2)
    every = sorted(x for v in lat.values() for x in v)
    if every:
        count("p99_ms", round(every[int(0.99 * (len(every) - 1))], 1))
        count("worst_ms", round(every[-1], 1))
        count("over_100ms", sum(1 for x in every if x > 100))


def http_peer():
    body = A.body.encode()

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    S(("127.0.0.1", A.port), H).serve_forever()


def sink_peer():
    ls = socket.create_server(("127.0.0.1", A.port))
    held = []
    while True:
        c, _ = ls.accept()
        held.append(c)  # never read; the newest 200 are kept open
        held = [h for h in held if h.fileno() >= 0][-200:]


def scrape(port):
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read()
    m = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            m[k] = float(v)
    return m


def total(m, name):
    return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))


def by_label(m, name, label):
    out = {}
    for k, v in m.items():
        if k.startswith(name + "{"):
            lab = [x for x in k[len(name) + 1:-1].split(",") if x.startswith(label + "=")]
            key = lab[0].split("=", 1)[1].strip('"') if lab else "-"
            out[key] = out.get(key, 0) + v
    return out


def proc(pid):
    rss = 0
    for line in open("/proc/%d/status" % pid):
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return rss, len(os.listdir("/proc/%d/fd" % pid))


def diff(a, b):
    return {k: int(b[k] - a.get(k, 0)) for k in b if b[k] - a.get(k, 0) > 0}


def monitor():
    pid, port = A.pid, A.port
    samples, rows = [], []
    base_rss, base_fds = A.baseline or proc(pid)
    prev = scrape(port)
    hdr = "%-4s %8s %5s %6s %8s %8s  %s" % (
        "min", "rss_MiB", "fds", "conns", "hs", "hs_resum", "errors by reason (this minute)")
    print("idle baseline: rss %.1f MiB, %d fds" % (base_rss / 2**20, base_fds), flush=True)
    print(hdr, flush=True)
    minute = 1
    while True:
        now = time.time()
        if now >= A.until:
            break
        time.sleep(min(10, A.until - now))
        t = time.time() - A.start
        rss, fds = proc(pid)
        samples.append([t, rss, fds])
        if t + 1 < minute * 60 and time.time() < A.until - 1:
            continue
        m = scrape(port)
        hs = by_label(m, "terminus_handshakes_total", "resumed")
        hs0 = by_label(prev, "terminus_handshakes_total", "resumed")
        errs = {}
        for name, label, short in [
            ("terminus_handshake_errors_total", "reason", "hs"),
            ("terminus_upstream_connect_errors_total", "upstream", "up_connect"),
            ("terminus_http_rejected_total", "status", "http"),
            ("terminus_config_reloads_total", "result", "reload"),
            ("terminus_connections_rejected_total", "listener", "conn_rejected"),
        ]:
            for k, v in diff(by_label(prev, name, label), by_label(m, name, label)).items():
                if short == "reload" and k == "ok":
                    continue
                errs["%s:%s" % (short, k)] = v
        row = {
            "minute": minute, "rss": rss, "fds": fds,
            "conns": int(total(m, "terminus_connections_active")),
            "handshakes": int(total(m, "terminus_handshakes_total") - total(prev, "terminus_handshakes_total")),
            "resumed": int(hs.get("true", 0) - hs0.get("true", 0)),
            "errors": errs,
        }
        rows.append(row)
        print("%-4d %8.1f %5d %6d %8d %8d  %s" % (
            minute, rss / 2**20, fds, row["conns"], row["handshakes"], row["resumed"],
            " ".join("%s=%d" % kv for kv in sorted(errs.items())) or "-"), flush=True)
        prev = m
        minute += 1
    # Load has stopped (every generator's deadline is --until, and soak.sh stops the
    # faulty upstreams then): wait for terminus' last connections to close (60 s at
    # most: the stragglers are clients finishing), then 30 s of recovery.
    drained = None
    for i in range(60):
        if total(scrape(port), "terminus_connections_active") == 0:
            drained = i
            break
        time.sleep(1)
    recovery = []
    for _ in range(6):
        time.sleep(5)
        rss, fds = proc(pid)
        recovery.append([time.time() - A.until, rss, fds])
    final = scrape(port)
    with open(A.out, "w") as f:
        json.dump({"baseline": [base_rss, base_fds], "samples": samples, "rows": rows,
                   "recovery": recovery, "drained_s": drained, "final": final}, f)


def slope(points):
    """Least-squares slope of (x, y) per unit x."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    den = sum((p[0] - mx) ** 2 for p in points)
    return sum((p[0] - mx) * (p[1] - my) for p in points) / den if den else 0.0


def verdict():
    d = A.dir
    mon = json.load(open(os.path.join(d, "monitor.json")))
    load = lambda name: json.load(open(os.path.join(d, name + ".json")))  # noqa: E731
    checks = []

    def check(ok, what):
        checks.append(ok)
        print("%s %s" % ("ok  " if ok else "FAIL", what))

    # Memory and descriptors after the warm-up (the first minute): slope and bound.
    warm = [s for s in mon["samples"] if s[0] >= 60] or mon["samples"]
    rs = slope([(s[0] / 60, s[1] / 2**20) for s in warm])
    fs = slope([(s[0] / 60, s[2]) for s in warm])
    rss = [s[1] / 2**20 for s in warm]
    # Shorter than 10 minutes, a slope mostly measures the load's own phases (held
    # connections, 8 MiB streams): stated, not enforced.
    long_run = len(mon["rows"]) >= 10
    note = "" if long_run else " [not enforced under 10 minutes]"
    check(rs <= A.rss_slope or not long_run,
          "RSS after warm-up: slope %+.2f MiB/min (bound %.1f), %.1f-%.1f MiB%s"
          % (rs, A.rss_slope, min(rss), max(rss), note))
    fds = [s[2] for s in warm]
    check(fs <= A.fd_slope or not long_run, "fds after warm-up: slope %+.2f /min (bound %.1f), %d-%d%s"
          % (fs, A.fd_slope, min(fds), max(fds), note))
    base = mon["baseline"][0] / 2**20
    rec = [r[1] / 2**20 for r in mon["recovery"]]
    drained = mon.get("drained_s")
    when = ("%d s after the load, once no connection was left" % drained if drained is not None
            else "after the load, connections still open 60 s later")
    check(min(rec) <= 2 * base or not A.recovery,
          "RSS in the 30 s %s: %s MiB (idle baseline %.1f, bound 2x = %.1f)%s"
          % (when, " ".join("%.0f" % r for r in rec), base, 2 * base,
             "" if A.recovery else " [not enforced: --no-recovery-check]"))
    # Bytes and answers.
    bulk = load("bulk")
    check(bulk.get("corrupt", 0) == 0 and bulk.get("short", 0) == 0 and bulk.get("ok", 0) > 0,
          "bulk echo: %d streams, %.0f MiB compared byte for byte, %d corrupt, %d short, %d stalled"
          % (bulk.get("ok", 0), bulk.get("bytes", 0) / 2**20, bulk.get("corrupt", 0),
             bulk.get("short", 0), bulk.get("stalled", 0)))
    # Well-behaved clients of listeners with steady upstreams: no error at all.
    good = {"bulk": bulk, "http": load("http")}
    refused = load("refused")
    for f in sorted(glob.glob(os.path.join(d, "bench-*.jsonl"))):
        name = os.path.basename(f)[:-6]
        if name == "bench-flappy":
            continue
        e = {}
        for line in open(f):
            if line.strip():
                for k, v in json.loads(line)["errors"].items():
                    e[k] = e.get(k, 0) + v
        good[name] = {("error:" + k if k != "total" else "total"): v for k, v in e.items() if v}
    bad = {n: {k: v for k, v in c.items() if k.startswith("error") or k in ("bad", "total")}
           for n, c in good.items()}
    bad = {n: c for n, c in bad.items() if c}
    check(not bad, "errors of well-behaved clients (steady upstreams): %s" % (bad or "none"))
    refused = load("refused")
    check(not any(k.endswith(":served") for k in refused),
          "mTLS clients without a certificate, with an unknown CA's, revoked: %s" % refused)
    revoked = by_label(mon["final"], "terminus_handshake_errors_total", "reason").get("cert_revoked", 0)
    check(refused.get("revoked:refused", 0) > 0 and revoked > 0,
          "the revoked client: refused %d times, cert_revoked counted %d"
          % (refused.get("revoked:refused", 0), revoked))
    stall = load("stall-write")
    check(stall.get("never-blocked", 0) == 0 and stall.get("blocked", 0) > 0,
          "a client writing to an upstream that never reads is stopped (backpressure): %s" % stall)
    held = load("stall-read")
    check(held.get("held", 0) > 0 and not any(k.startswith("error") for k in held),
          "clients that never read a source upstream: %s" % held)
    flap = load("flappy")
    flap_errs = int(by_label(mon["final"], "terminus_upstream_connect_errors_total", "upstream")
                    .get(A.flap, 0))
    flap_bad = sum(v for k, v in flap.items() if k != "ok")
    kills_f = os.path.join(d, "flap-kills")
    kills = int(open(kills_f).read()) if os.path.exists(kills_f) else 0
    check(flap.get("ok", 0) > 0 and flap_bad <= flap_errs + kills,
          "the flapping upstream's clients: %s; each failure matched by a connect error "
          "terminus counted there (%d) or by a kill of the upstream mid-echo (%d kills)"
          % (flap, flap_errs, kills))
    slow = load("slowloris")
    check(slow.get("never-ended", 0) == 0 and not any(k.startswith("error") for k in slow),
          "slowloris heads, each cut by the head timeout: %s" % slow)
    # Every error terminus counted comes from a fault the soak induced.
    fin = mon["final"]
    hs_err = int(total(fin, "terminus_handshake_errors_total"))
    resets, garb = load("resets"), load("garbage")
    induced = (resets.get("reset", 0) + garb.get("sent", 0) + sum(refused.values())
               + sum(v for k, v in slow.items() if not k.startswith("error")))
    check(hs_err <= induced, "handshake errors %d <= faulty clients %d (%s)"
          % (hs_err, induced, by_label(fin, "terminus_handshake_errors_total", "reason")))
    up = by_label(fin, "terminus_upstream_connect_errors_total", "upstream")
    check(all(k == A.flap for k, v in up.items() if v),
          "upstream connect errors only at the flapping upstream %s: %s" % (A.flap, up))
    if A.named:
        seen = [a for a in up if a.endswith(":" + A.named)]
        check(len(seen) >= 2, "the upstream name followed its address changes: %s" % seen)
    rel = by_label(fin, "terminus_config_reloads_total", "result")
    invalid = int(open(os.path.join(d, "invalid-reloads")).read() or 0)
    check(rel.get("error", 0) == invalid, "reload errors %d = invalid configs sent %d (ok: %d)"
          % (rel.get("error", 0), invalid, rel.get("ok", 0)))
    adm = load("admin")
    check(adm.get("p99_ms", 1e9) <= 100 and adm.get("ok", 0) > 0 and not adm.get("error"),
          "admin /healthz every 200 ms: %d answers, p99 %.1f ms (bound 100), slowest %.1f ms, "
          "%d over 100 ms (the prober shares the loaded CPUs)"
          % (adm.get("ok", 0), adm.get("p99_ms", -1), adm.get("worst_ms", -1), adm.get("over_100ms", 0)))
    raise SystemExit(0 if all(checks) else 1)


def main():
    global A
    p = argparse.ArgumentParser()
    p.add_argument("role")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--until", type=float, default=0)
    p.add_argument("--start", type=float, default=time.time())
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--revoked-cert")
    p.add_argument("--revoked-key")
    p.add_argument("--body", default="soak body\n")
    p.add_argument("--out", default=os.devnull)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--pid", type=int)
    p.add_argument("--baseline", type=int, nargs=2, help="idle RSS bytes and fds")
    p.add_argument("--dir")
    p.add_argument("--flap", default="")
    p.add_argument("--named", default="", help="the port of the name's two addresses")
    p.add_argument("--rss-slope", type=float, default=2.0)
    p.add_argument("--fd-slope", type=float, default=2.0)
    p.add_argument("--no-recovery-check", dest="recovery", action="store_false")
    A = p.parse_args()
    if A.role in ("monitor", "verdict"):
        return {"monitor": monitor, "verdict": verdict}[A.role]()
    fn = {
        "bulk": bulk, "http": http_client, "slowloris": slowloris,
        "stall-read": stall_read, "stall-write": stall_write, "resets": resets,
        "garbage": garbage, "refused": refused, "admin": admin,
        "http-peer": http_peer, "sink-peer": sink_peer, "echo-loop": echo_loop,
    }[A.role]
    ts = [threading.Thread(target=fn) for _ in range(A.threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    with open(A.out, "w") as f:
        json.dump(C, f, sort_keys=True)


if __name__ == "__main__":
    main()
