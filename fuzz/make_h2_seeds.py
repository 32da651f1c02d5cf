#!/usr/bin/env python3
"""Write the h2_proxy fuzz target's seeds (fuzz/seeds/h2_proxy/): programs of the
harness (fuzz/src/h2_proxy.rs) that carry real HTTP/2 frames, hand-encoded here
(HPACK static-table indexes and literals), so the fuzzer starts past the handshake:
a GET, a POST with bodies both ways, a gRPC call with trailers, a rapid reset, a
PING flood, and a client that stops reading."""
import os
import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def lit(name, value):  # literal header field without indexing, new name
    return bytes([0, len(name)]) + name + bytes([len(value)]) + value


SETTINGS, SETTINGS_ACK = frame(4, 0, 0), frame(4, 1, 0)
AUTHORITY = b"\x41\x03svc"  # :authority svc (name index 1)


def headers(stream, block, end_stream):
    return frame(1, 0x04 | (0x01 if end_stream else 0), stream, block)


def data(stream, payload, end_stream):
    return frame(0, 0x01 if end_stream else 0, stream, payload)


def op(code, payload=b""):  # harness ops 0: client bytes, 2: upstream bytes
    return bytes([code]) + struct.pack("<H", len(payload)) + payload


def program(streams, *ops):
    return bytes([streams]) + b"".join(ops)


GET = b"\x82\x87\x84" + AUTHORITY  # GET https / svc
POST = b"\x83\x87\x84" + AUTHORITY
GRPC = b"\x83\x87\x44\x08/pkg.S/M" + AUTHORITY + b"\x5f\x10application/grpc" + lit(b"te", b"trailers")
OK = b"\x88"  # :status 200
hello = [op(0, PREFACE + SETTINGS), op(2, SETTINGS), op(0, SETTINGS_ACK), op(2, SETTINGS_ACK)]
seeds = {
    "get": program(3, *hello, op(0, headers(1, GET, True)), op(2, headers(1, OK, True))),
    "post-bodies": program(3, *hello, op(0, headers(1, POST, False) + data(1, b"hello", True)),
                           op(2, headers(1, OK, False) + data(1, b"world", True))),
    "grpc-trailers": program(3, *hello, op(0, headers(1, GRPC, False) + data(1, b"\0\0\0\0\0", True)),
                             op(2, headers(1, OK + b"\x5f\x10application/grpc", False)
                                + data(1, b"\0\0\0\0\0", False)
                                + headers(1, lit(b"grpc-status", b"0"), True))),
    "rapid-reset": program(7, op(0, PREFACE + SETTINGS), *[
        op(0, headers(s, GET, False) + frame(3, 0, s, struct.pack(">I", 8))) for s in range(1, 40, 2)]),
    "ping-flood": program(3, *hello, op(0, b"".join(frame(6, 0, 0, b"12345678") for _ in range(300)))),
    # HTTP/1.1 upstream (first byte's top bit): a length, chunks with trailers, a
    # close after the response (then a redial, made: the op byte after the drive).
    "h1-length": program(0x83, op(0, PREFACE + SETTINGS), op(0, SETTINGS_ACK + headers(1, GET, True)),
                         op(2, b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")),
    "h1-chunked-trailers": program(0x83, op(0, PREFACE + SETTINGS), op(0, headers(1, POST, False) + data(1, b"hi", True)),
                                   op(2, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-t\r\n\r\n"
                                         b"5\r\nhello\r\n0\r\nx-t: 1\r\n\r\n")),
    "h1-close-redial": program(0x83, op(0, PREFACE + SETTINGS), op(0, headers(1, GET, True) + headers(3, GET, True)),
                               op(2, b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"),
                               bytes([5, 1]), op(2, b"HTTP/1.1 204 No Content\r\n\r\n")),
    "client-stops-reading": program(3, *hello, bytes([7, 0]), op(0, headers(1, GET, True)),
                                    op(2, headers(1, OK, False) + data(1, b"x" * 16000, False)
                                       + data(1, b"y" * 16000, True))),
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", "h2_proxy")
os.makedirs(out, exist_ok=True)
for name, body in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(body)
