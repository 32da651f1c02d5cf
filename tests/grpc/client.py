"""The gRPC client of tests/e2e/grpc.rs: calls through terminus over mTLS (server name
localhost) and prints one JSON object with what came back.

client.py TARGET CA CERT KEY calls    every method of upstream.py once
client.py TARGET CA CERT KEY burst N  N unary calls back to back: their status codes
"""
import json
import sys

import grpc


def call(fn, *args, **kw):
    """(reply, code, details, initial, trailing) of a unary call."""
    try:
        reply, c = fn.with_call(*args, **kw)
        return {
            "code": c.code().name,
            "reply": reply.decode(),
            "initial": dict(c.initial_metadata()),
            "trailing": dict(c.trailing_metadata()),
        }
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details()}


def main():
    target, ca, cert, key, mode = sys.argv[1:6]
    creds = grpc.ssl_channel_credentials(
        root_certificates=open(ca, "rb").read(),
        private_key=open(key, "rb").read() if key != "-" else None,
        certificate_chain=open(cert, "rb").read() if cert != "-" else None,
    )
    ch = grpc.secure_channel(
        target, creds, options=(("grpc.ssl_target_name_override", "localhost"),)
    )
    unary = ch.unary_unary("/echo.Echo/Unary")
    out = {}
    if mode == "calls":
        out["unary"] = call(unary, b"hello", metadata=(("x-meta", "m1"),), timeout=10)
        msgs = iter([b"a", b"b", b"c"])
        try:
            out["stream"] = [m.decode() for m in ch.stream_stream("/echo.Echo/Stream")(msgs, timeout=10)]
        except grpc.RpcError as e:
            out["stream"] = {"code": e.code().name, "details": e.details()}
        out["fail"] = call(ch.unary_unary("/echo.Echo/Fail"), b"x", timeout=10)
        out["admin"] = call(ch.unary_unary("/echo.Admin/Reset"), b"now", timeout=10)
    else:
        out["codes"] = [call(unary, b"n", timeout=10)["code"] for _ in range(int(sys.argv[6]))]
    print(json.dumps(out))


main()
