"""A gRPC server for tests/e2e/grpc.rs, with no generated code: methods take and return
raw bytes. Cleartext (h2c), or `upstream.py CERT KEY CLIENT_CA`: TLS (ALPN h2)
requiring a client certificate from CLIENT_CA. Prints its port, then serves until
stdin closes.

echo.Echo/Unary   the request back; initial metadata x-echo-meta (the caller's
                  x-meta), trailing x-trailer and x-xfcc (the XFCC header it saw)
echo.Echo/Stream  each request message back with "!" appended (bidi streaming)
echo.Echo/Fail    aborts with NOT_FOUND "no such thing"
echo.Echo/Big     the request's length in MiB of "x" (at most 8)
echo.Admin/Reset  "admin:" + the request
"""
import sys
from concurrent import futures

import grpc


def unary(req, ctx):
    md = dict(ctx.invocation_metadata())
    ctx.send_initial_metadata((("x-echo-meta", md.get("x-meta", "")),))
    ctx.set_trailing_metadata(
        (("x-trailer", "t1"), ("x-xfcc", md.get("x-forwarded-client-cert", "none")))
    )
    return req


def stream(requests, ctx):
    for m in requests:
        yield m + b"!"


def fail(req, ctx):
    ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


def big(req, ctx):
    return b"x" * (min(len(req), 8) << 20)


def admin(req, ctx):
    return b"admin:" + req


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=256))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "echo.Echo",
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(unary),
                    "Stream": grpc.stream_stream_rpc_method_handler(stream),
                    "Fail": grpc.unary_unary_rpc_method_handler(fail),
                    "Big": grpc.unary_unary_rpc_method_handler(big),
                },
            ),
            grpc.method_handlers_generic_handler(
                "echo.Admin", {"Reset": grpc.unary_unary_rpc_method_handler(admin)}
            ),
        )
    )
    if len(sys.argv) == 4:
        cert, key, ca = (open(p, "rb").read() for p in sys.argv[1:4])
        creds = grpc.ssl_server_credentials(
            ((key, cert),), root_certificates=ca, require_client_auth=True
        )
        port = server.add_secure_port("127.0.0.1:0", creds)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(0)


main()
