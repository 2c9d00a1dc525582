"""Frames of the worker protocol (docs/protocol.md): u32 lengths, a JSON header, raw blobs."""

from __future__ import annotations

import json
import select
import socket
import struct
from typing import Any, Iterable, List, Tuple

#: Largest value of a frame's leading length (the bytes after it) either side may send.
MAX_FRAME = 2 << 30

_PREFIX = struct.Struct(">II")  # length of the rest of the frame, length of the header
_IOV_MAX = 1024  # buffers per sendmsg call (Linux's IOV_MAX)


class ProtocolError(ValueError):
    """A frame that breaks the protocol: bad lengths, a bad header or one too large to send."""


#: How much of a frame the first receive asks for: a small frame then takes one system call.
READ_AHEAD = 4096


def _recv_into(sock: socket.socket, view: memoryview, got: int) -> None:
    """Fills `view` from `got` on; EOFError if the peer closes first."""
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            raise EOFError("socket closed" if got == 0 else "socket closed inside a frame")
        got += n


class _Frame:
    """The bytes of one frame: those already received, then the socket's. What was received
    past the frame's end stays in `first` after `pos`."""

    def __init__(self, sock: socket.socket, first: memoryview):
        self.sock, self.first, self.pos = sock, first, 0

    def take(self, size: int) -> bytearray:
        """The next `size` bytes, in a bytearray of their own."""
        buf = bytearray(size)
        ready = min(size, len(self.first) - self.pos)
        buf[:ready] = self.first[self.pos:self.pos + ready]
        self.pos += ready
        _recv_into(self.sock, memoryview(buf), ready)
        return buf

    def rest(self) -> memoryview:
        return self.first[self.pos:]


def _read(sock: socket.socket, rest: memoryview) -> Tuple[dict, List[bytearray], memoryview]:
    """Reads one frame that may begin in `rest` (bytes already received): (header dict, its
    blobs, the bytes received past its end). A receive asks for READ_AHEAD bytes, so a small
    frame takes one system call; the rest of a larger blob is received straight into its own
    bytearray. EOFError when the socket closes."""
    got = len(rest)
    if got < _PREFIX.size:
        ahead = bytearray(READ_AHEAD)
        ahead[:got] = rest
        view = memoryview(ahead)
        while got < _PREFIX.size:
            n = sock.recv_into(view[got:])
            if n == 0:
                raise EOFError("socket closed" if got == 0 else "socket closed inside a frame")
            got += n
        rest = view[:got]
    total, header_len = _PREFIX.unpack_from(rest)
    if not 4 <= total <= MAX_FRAME or header_len > total - 4:
        raise ProtocolError(f"bad frame lengths: frame {total}, header {header_len}")
    frame = _Frame(sock, rest[_PREFIX.size:])
    try:
        header = json.loads(frame.take(header_len))
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"frame header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not a JSON object")
    lengths = header.get("blobs", [])
    if not isinstance(lengths, list) or any(not isinstance(n, int) or n < 0 for n in lengths):
        raise ProtocolError(f"bad blob lengths {lengths!r}")
    if sum(lengths) != total - 4 - header_len:
        raise ProtocolError(
            f"blob lengths add up to {sum(lengths)}, the frame holds {total - 4 - header_len}"
        )
    blobs = [frame.take(n) for n in lengths]
    return header, blobs, frame.rest()


def read_frame(sock: socket.socket) -> Tuple[dict, List[bytearray]]:
    """Reads the one frame of a lock-step exchange (one message, one reply): (header dict, its
    blobs). ProtocolError if more bytes than the frame came; EOFError when the socket closes."""
    header, blobs, rest = _read(sock, memoryview(b""))
    if rest:
        raise ProtocolError("bytes after the end of a frame")
    return header, blobs


class FrameReader:
    """Reads frames off a socket that may carry several back to back (the server sends the
    next batch while the worker still runs one): bytes received past the end of one frame
    stay for the next."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._rest = memoryview(b"")
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)

    def read(self) -> Tuple[dict, List[bytearray]]:
        """The next frame: (header dict, its blobs). EOFError when the socket closes."""
        header, blobs, self._rest = _read(self.sock, self._rest)
        return header, blobs

    def waiting(self) -> bool:
        """Whether the next frame has begun to arrive, so `read` would not wait for it."""
        return bool(self._rest) or bool(self._poll.poll(0))


#: Compact JSON for frame headers, made once: `json.dumps` with arguments makes an encoder per
#: call.
_HEADER_ENCODER = json.JSONEncoder(separators=(",", ":"))


def write_frame(sock: socket.socket, header: dict, blobs: Iterable[Any] = ()) -> None:
    """Sends one frame with a single gathering write where possible. `blobs` are bytes-like
    (C-contiguous); their lengths are added to the header as `blobs`. Raises ProtocolError,
    before sending anything, if the frame would exceed MAX_FRAME."""
    views = [memoryview(b).cast("B") for b in blobs]
    if views:
        header = {**header, "blobs": [v.nbytes for v in views]}
    head = _HEADER_ENCODER.encode(header).encode("utf-8")
    total = 4 + len(head) + sum(v.nbytes for v in views)
    if total > MAX_FRAME:
        raise ProtocolError(f"a frame of {total} bytes exceeds the limit of {MAX_FRAME}")
    _send_all(sock, [memoryview(_PREFIX.pack(total, len(head)) + head), *views])


def _send_all(sock: socket.socket, views: List[memoryview]) -> None:
    pending = [v for v in views if v.nbytes]
    start = 0
    while start < len(pending):
        sent = sock.sendmsg(pending[start : start + _IOV_MAX])
        while sent:
            first = pending[start]
            if sent < first.nbytes:
                pending[start] = first[sent:]
                break
            sent -= first.nbytes
            start += 1
