#!/usr/bin/env bash
# Regenerate the seed corpora of the fuzz targets (fuzz/seeds/TARGET/) from real
# traffic: ClientHellos of openssl s_client, curl and Java (HttpsURLConnection),
# request heads of curl and wrk, OCSP responses of `openssl ocsp`, and hand-made
# inputs for the other targets. Each seed is small; the set is committed, this script
# only needs to run again when a harness' input layout changes (fuzz/src/*.rs
# document it). Needs python3, openssl, curl; wrk and java are used when present
# (Go is not installed on these machines: no Go ClientHello).
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=fuzz/seeds
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT

# capture PORT OUT: accept one connection on 127.0.0.1:PORT and write what the
# client sends within 1 s (a ClientHello, a request head) to OUT; answers nothing.
capture() {
    python3 - "$1" "$2" <<'PY' &
import socket, sys, time
# The longest of what the connections within 1.5 s of the first sent (wrk opens
# and closes a probe connection first).
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(4); s.settimeout(20)
best = b""; end = None
while end is None or time.time() < end:
    try:
        c, _ = s.accept()
    except socket.timeout:
        break
    if end is None:
        end = time.time() + 1.5
    s.settimeout(max(0.05, end - time.time()))
    c.settimeout(0.5); data = b""
    while True:
        try:
            b = c.recv(65536)
        except socket.timeout:
            break
        if not b:
            break
        data += b
    c.close()
    best = max(best, data, key=len)
open(sys.argv[2], "wb").write(best)
PY
    sleep 0.3
}

port=$((20000 + RANDOM % 20000))
hello() { # NAME COMMAND...: capture the ClientHello COMMAND sends to 127.0.0.1:$port
    local name=$1; shift
    capture "$port" "$tmp/$name"
    timeout 5 "$@" >/dev/null 2>&1 </dev/null || true
    wait
    port=$((port + 1))
}
hello openssl-tls13 openssl s_client -connect "127.0.0.1:$port" -servername localhost
hello openssl-tls12 openssl s_client -connect "127.0.0.1:$port" -servername localhost -tls1_2
hello openssl-alpn openssl s_client -connect "127.0.0.1:$port" -alpn h2,http/1.1 -noservername
hello curl curl -sk --max-time 2 "https://localhost:$port/"
hello curl-http11 curl -sk --http1.1 --max-time 2 "https://127.0.0.1:$port/"
if command -v java >/dev/null 2>&1; then
    cat >"$tmp/Hello.java" <<'JAVA'
public class Hello {
    public static void main(String[] a) throws Exception {
        var c = (javax.net.ssl.HttpsURLConnection) new java.net.URL(a[0]).openConnection();
        c.setConnectTimeout(2000); c.setReadTimeout(1500);
        try { c.getResponseCode(); } catch (Exception e) { }
    }
}
JAVA
    hello java java "$tmp/Hello.java" "https://localhost:$port/"
fi

rm -rf "$seeds"
mkdir -p "$seeds"/{conn_client,conn_session,conn_upstream,http_filter,proxy_v2,config,flags,authz,ocsp}
# conn_client: [listener, split, ending] + the hello; plain/mtls/http, whole and cut.
for f in "$tmp"/openssl-* "$tmp"/curl* "$tmp"/java; do
    [ -s "$f" ] || continue
    n=$(basename "$f")
    for pre in '\x00\x00\x00' '\x01\x20\x00' '\x02\x40\x01' '\x03\x00\x02'; do
        { printf "$pre"; cat "$f"; } >"$seeds/conn_client/$n-$(printf "$pre" | od -An -tx1 | tr -d ' ')"
    done
done

# http_filter: [settings, connection, split] + request heads of curl and wrk
# (captured), then hand-made pipelined, chunked and smuggling shapes.
capture "$port" "$tmp/curl-head"
curl -s --max-time 2 -H 'X-Forwarded-For: 6.6.6.6' "http://127.0.0.1:$port/a/b?c=d" >/dev/null 2>&1 || true
wait; port=$((port + 1))
if command -v wrk >/dev/null 2>&1; then
    capture "$port" "$tmp/wrk-head"
    timeout 3 wrk -t1 -c1 -d1s "http://127.0.0.1:$port/index.html" >/dev/null 2>&1 || true
    wait; port=$((port + 1))
fi
for f in "$tmp"/curl-head "$tmp"/wrk-head; do
    [ -s "$f" ] || continue
    n=$(basename "$f")
    { printf '\x04\x05\x00'; cat "$f"; } >"$seeds/http_filter/$n"
    { printf '\x04\x07\x41'; cat "$f" "$f" "$f"; } >"$seeds/http_filter/$n-pipelined"
done
python3 - "$seeds" <<'PY'
import sys, os, struct
d = sys.argv[1]
def w(target, name, data):
    open(os.path.join(d, target, name), "wb").write(data)
chunked = (b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
           b"X-Forwarded-Client-Cert: forged\r\nforwarded: for=1.2.3.4\r\n\r\n"
           b"5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\n")
cl = b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nx-forwarded-proto: http\r\n\r\nhello"
get10 = b"GET / HTTP/1.0\r\n\r\n"
smuggle = b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
w("http_filter", "chunked", b"\x04\x05\x00" + chunked)
w("http_filter", "content-length-pipelined", b"\x05\x07\x61" + cl + chunked + get10)
w("http_filter", "smuggling", b"\x04\x05\x00" + smuggle)
w("http_filter", "bare-lf", b"\x05\x01\x20" + b"GET / HTTP/1.1\nHost: a\n\n")

# conn_session: [listener, client, sni, split] + program; op 0: client plaintext
# (u8 length), op 5: upstream bytes (u8 length, split), op 7: close_notify,
# op 9: ending (u8), op 10: time (u8 x 50 ms), op 4: raw bytes into the client's TLS.
def op(code, data=b""):
    return bytes([code, len(data)]) + data
resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
w("conn_session", "http-get", b"\x02\x01\x00\x00" + op(0, b"GET /a HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n") + op(5, resp) + b"\x00" + op(7))
w("conn_session", "http-pipelined-denied", b"\x02\x00\x00\x40" + op(0, b"GET /admin/x HTTP/1.1\r\nHost: a\r\n\r\nPOST /w HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: a\r\n\r\n") + op(5, resp + resp) + b"\x20" + op(10) + b"\x03")
w("conn_session", "http-chunked-continue", b"\x02\x01\x01\x21" + op(0, b"POST /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n") + op(5, b"HTTP/1.1 100 Continue\r\n\r\n") + b"\x00" + op(0, b"3\r\nabc\r\n0\r\n\r\n") + op(5, b"HTTP/1.1 204 No Content\r\n\r\n") + b"\x00")
w("conn_session", "plain-echo", b"\x00\x00\x00\x00" + op(0, b"hello") + op(5, b"world") + b"\x00" + bytes([9, 2]) + op(7))
w("conn_session", "mtls-client", b"\x01\x01\x00\x00" + op(0, b"ping") + op(5, b"pong") + b"\x00" + op(7))
w("conn_session", "mtls-stranger-tls12", b"\x01\x82\x00\x00" + op(0, b"x"))
w("conn_session", "garbage-after-handshake", b"\x00\x00\x00\x00" + op(4, b"\x17\x03\x03\x00\x05hello"))
w("conn_session", "upstream-first", b"\x02\x00\x00\x00" + op(5, b"HTTP/1.1 400 Bad\r\n\r\n") + b"\x00" + op(0, b"GET / HTTP/1.1\r\n\r\n"))

# conn_upstream: [listener, mode, split, request (u8 length), client split, ending]
# then mode 1: answer (u8 length) + (u16 offset, xor) flips; mode 0: raw TLS.
req = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
w("conn_upstream", "real-tcp", b"\x00\x01\x00" + bytes([4]) + b"ping" + b"\x00\x00" + bytes([4]) + b"pong")
w("conn_upstream", "real-http", b"\x01\x01\x00" + bytes([len(req)]) + req + b"\x00\x00" + bytes([len(resp)]) + resp)
w("conn_upstream", "real-flip-hello", b"\x00\x01\x21\x00\x00\x01" + b"\x00" + struct.pack("<HB", 5, 0x40))
w("conn_upstream", "real-flip-late", b"\x01\x01\x00" + bytes([len(req)]) + req + b"\x00\x00" + bytes([len(resp)]) + resp + struct.pack("<HB", 1200, 0x01) + struct.pack("<HB", 2000, 0x80))
w("conn_upstream", "raw-alert", b"\x00\x00\x00\x00\x00\x00" + b"\x15\x03\x03\x00\x02\x02\x28")
w("conn_upstream", "raw-hello-retry", b"\x01\x00\x60\x00\x00\x01" + b"\x16\x03\x03\x00\x30\x02\x00\x00\x2c\x03\x03" + b"\xcf\x21\xad\x74\xe5\x9a\x61\x11\xbe\x1d\x8c\x02\x1e\x65\xb8\x91\xc2\xa2\x11\x16\x7a\xbb\x8c\x5e\x07\x9e\x09\xe2\xc8\xa8\x33\x9c" + b"\x00\x13\x01\x00\x00\x04\x00\x2b\x00\x02\x03\x04")

# proxy_v2: [presence u16: bit 0 alpn, 1 authority, 2 spiffe, 3 unique_id, 4 ssl,
# 5 key_alg, 8..11 long form], two addresses ([kind, ...]), fields.
def s8(b): return bytes([len(b)]) + b
def s16(b): return struct.pack("<H", len(b)) + b
v4 = lambda ip, port: b"\x00" + bytes(reversed(bytes(ip))) + struct.pack("<H", port)
v6 = lambda port: b"\x02" + bytes(range(16)) + struct.pack("<H", port)
w("proxy_v2", "tcp4-all", struct.pack("<H", 0b111111) + v4([192,0,2,7], 40000) + v4([10,0,0,1], 443)
  + s8(b"h2") + s8(b"api.example.org") + s8(b"spiffe://example.org/ns/prod/sa/billing") + s8(b"id-1")
  + b"\xff" + s8(b"TLSv1.3") + s8(b"billing") + s8(b"TLS_AES_128_GCM_SHA256") + s8(b"ecdsa-with-SHA256") + s8(b"EC256"))
w("proxy_v2", "tcp6-long-spiffe", struct.pack("<H", 0b100 | 0b100 << 8) + v6(1) + v6(2) + s16(b"spiffe://example.org/" + b"a" * 1500))
w("proxy_v2", "long-cn", struct.pack("<H", 0b10000) + v4([1,2,3,4], 1) + v4([5,6,7,8], 2) + b"\x51" + s16(b"c" * 1100))
hdr = b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0f" + bytes(12) + b"\x02\x00\x00"
w("proxy_v2", "raw-header", hdr)

# flags: NUL-separated arguments of `terminus run`.
def args(*a): return "\0".join(a).encode()
w("flags", "basic", args("--listen", "127.0.0.1:8443", "--upstream", "127.0.0.1:8080", "--cert", "server.pem", "--key", "server.key"))
w("flags", "mtls", args("--listen", "[::1]:0", "--upstream", "127.0.0.1:1", "--upstream", "[::1]:2", "--cert", "s.pem", "--key", "s.key",
  "--client-ca", "ca.pem", "--client-auth", "optional", "--allow", "spiffe://example.org/*", "--allow", "cn:odd \"name\"\n[x]",
  "--crl", "c.crl", "--proxy-protocol", "--admin", "127.0.0.1:9000", "--workers", "2", "--access-log", "stderr"))
w("flags", "reencrypt", args("--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9443", "--cert", "s.pem", "--key", "s.key",
  "--upstream-ca", "up.pem", "--upstream-server-name", "backend\"]\nx = 1"))

# authz: [selector] + NUL-separated strings (0 normalize, 1 path patterns,
# 2 identities, 3 rules of five strings then requests).
w("authz", "normalize", b"\x00" + "\0".join(["/a/../b", "/%61dmin/x", "//admin", "/./x/.", "http://h/p?q", "h:443", "*", "/%2F", "/a%zz"]).encode())
w("authz", "patterns", b"\x01" + "\0".join(["/v1/payments/*", "/admin", "/a/*/b", "/%41", "/"]).encode())
w("authz", "identities", b"\x02" + "\0".join(["spiffe://example.org/ns/*", "dns:billing.internal", "cn:billing", "anonymous", "any", "spiffe://EX/x"]).encode())
w("authz", "rules", b"\x03" + "\0".join(["r1", "any", "GET,POST", "/v1/*", "deny", "r2", "anonymous", "", "", "allow",
  "GET /v1/x", "POST /v1/../v1/y", "DELETE /a"]).encode())
PY

# config: the fuzz world's config, README's, and the tests' literal ones.
sed -n '/^const CONFIG: &str = r#"$/,/^"#;$/p' fuzz/src/world.rs | sed '1d;$d' >"$seeds/config/world.toml"
awk '/^```toml/ {n++; f=1; next} /^```/ {f=0} f {print > sprintf("'"$tmp"'/readme-%02d.toml", n)}' README.md
for f in "$tmp"/readme-*.toml; do
    # Names are not resolved by the config target: keep literal addresses.
    grep -q 'localhost:\|svc.cluster' "$f" || cp "$f" "$seeds/config/$(basename "$f")"
done

# ocsp: [u16 length][certificate DER][response DER], from `openssl ocsp` for a
# leaf of a throwaway CA: good, revoked, for another certificate.
(
    cd "$tmp"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
        -subj /CN=fuzz-ca -days 3650 2>/dev/null
    for n in leaf other; do
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $n.key -out $n.csr -subj /CN=$n 2>/dev/null
        openssl x509 -req -in $n.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $n.pem -days 3650 2>/dev/null
        openssl x509 -in $n.pem -outform der -out $n.der
    done
    serial=$(openssl x509 -noout -serial -in leaf.pem | cut -d= -f2)
    for st in good revoked; do
        if [ $st = good ]; then
            printf 'V\t491231235959Z\t\t%s\tunknown\t/CN=leaf\n' "$serial" >index.txt
        else
            printf 'R\t491231235959Z\t260101000000Z\t%s\tunknown\t/CN=leaf\n' "$serial" >index.txt
        fi
        openssl ocsp -issuer ca.pem -cert leaf.pem -reqout req.der -no_nonce 2>/dev/null
        openssl ocsp -index index.txt -rsigner ca.pem -rkey ca.key -CA ca.pem -reqin req.der \
            -respout $st.der -ndays 3650 2>/dev/null
    done
)
for st in good revoked; do
    for n in leaf other; do
        python3 - "$tmp/$n.der" "$tmp/$st.der" "$seeds/ocsp/$st-for-$n" <<'PY'
import struct, sys
cert, resp = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
open(sys.argv[3], "wb").write(struct.pack("<H", len(cert)) + cert + resp)
PY
    done
done
ls "$seeds"/* | head -100 >/dev/null
find "$seeds" -type f | wc -l | xargs echo "seeds:"
du -sh "$seeds"
