"""Frames of the worker protocol (docs/protocol.md): length-prefixed JSON header plus raw blobs."""

import json
import socket
import struct

_U32 = struct.Struct(">I")


def _recv_exact(sock: socket.socket, size: int) -> memoryview:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise EOFError("socket closed")
        got += n
    return view


def read_frame(sock: socket.socket):
    """Reads one frame; returns (header dict, list of blob memoryviews). EOFError on close."""
    total = _U32.unpack(_recv_exact(sock, 4))[0]
    body = _recv_exact(sock, total)
    header_len = _U32.unpack(body[:4])[0]
    header = json.loads(bytes(body[4 : 4 + header_len]))
    blobs = []
    offset = 4 + header_len
    for length in header.get("blobs", ()):
        blobs.append(body[offset : offset + length])
        offset += length
    return header, blobs


def write_frame(sock: socket.socket, header: dict, blobs=()) -> None:
    """Writes one frame; `header["blobs"]` is filled in from `blobs`."""
    header["blobs"] = [len(b) for b in blobs]
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    total = 4 + len(head) + sum(header["blobs"])
    sock.sendall(b"".join([_U32.pack(total), _U32.pack(len(head)), head]))
    for blob in blobs:
        if len(blob):
            sock.sendall(blob)
