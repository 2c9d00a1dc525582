"""Frames of the worker protocol (docs/protocol.md): u32 lengths, a JSON header, raw blobs,
and large blobs in a shared-memory region of the sender's (regions.py, Shared memory)."""

from __future__ import annotations

import array
import collections
import json
import os
import select
import socket
import struct
from typing import Any, Deque, Iterable, List, Optional, Tuple

from .regions import RegionError, Regions

#: Largest value of a frame's leading length (the bytes after it) either side may send.
MAX_FRAME = 2 << 30

_PREFIX = struct.Struct(">II")  # length of the rest of the frame, length of the header
_IOV_MAX = 1024  # buffers per sendmsg call (Linux's IOV_MAX)


class ProtocolError(ValueError):
    """A frame that breaks the protocol: bad lengths, a bad header or one too large to send."""


#: How much of a frame the first receive asks for: a small frame then takes one system call.
READ_AHEAD = 4096


#: Room for the descriptors one receive may bring: a frame carries at most one, and the
#: kernel ends a receive at the bytes that carry descriptors.
_FDS_MAX = 8
_ANCILLARY = socket.CMSG_SPACE(_FDS_MAX * 4)


def _recv(sock: socket.socket, view: memoryview, fds: Deque[int]) -> int:
    """One receive into `view`; descriptors that come with the bytes go to `fds`."""
    n, ancillary, flags, _ = sock.recvmsg_into([view], _ANCILLARY, socket.MSG_CMSG_CLOEXEC)
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(array.array("i", data[:len(data) - len(data) % 4]))
    if flags & socket.MSG_CTRUNC:
        raise ProtocolError(f"more than {_FDS_MAX} descriptors came with one receive")
    return n


def _recv_into(sock: socket.socket, view: memoryview, got: int, fds: Deque[int]) -> None:
    """Fills `view` from `got` on; EOFError if the peer closes first."""
    while got < len(view):
        n = _recv(sock, view[got:], fds)
        if n == 0:
            raise EOFError("socket closed" if got == 0 else "socket closed inside a frame")
        got += n


class _Frame:
    """The bytes of one frame: those already received, then the socket's. What was received
    past the frame's end stays in `first` after `pos`."""

    def __init__(self, sock: socket.socket, first: memoryview, fds: Deque[int]):
        self.sock, self.first, self.pos, self.fds = sock, first, 0, fds

    def take(self, size: int) -> bytearray:
        """The next `size` bytes, in a bytearray of their own."""
        buf = bytearray(size)
        ready = min(size, len(self.first) - self.pos)
        buf[:ready] = self.first[self.pos:self.pos + ready]
        self.pos += ready
        _recv_into(self.sock, memoryview(buf), ready, self.fds)
        return buf

    def rest(self) -> memoryview:
        return self.first[self.pos:]


def _read(sock: socket.socket, rest: memoryview, fds: Deque[int],
          regions: Optional[Regions]) -> Tuple[dict, List[bytearray], memoryview]:
    """Reads one frame that may begin in `rest` (bytes already received): (header dict, its
    blobs, the bytes received past its end). A receive asks for READ_AHEAD bytes, so a small
    frame takes one system call; the rest of a larger blob is received straight into its own
    bytearray, a shared blob copied out of the server's region into its own. Descriptors
    received go to `fds`, a frame's own taken from there; the worker's regions the header
    names `freed` are free again. EOFError when the socket closes."""
    got = len(rest)
    if got < _PREFIX.size:
        ahead = bytearray(READ_AHEAD)
        ahead[:got] = rest
        view = memoryview(ahead)
        while got < _PREFIX.size:
            n = _recv(sock, view[got:], fds)
            if n == 0:
                raise EOFError("socket closed" if got == 0 else "socket closed inside a frame")
            got += n
        rest = view[:got]
    total, header_len = _PREFIX.unpack_from(rest)
    if not 4 <= total <= MAX_FRAME or header_len > total - 4:
        raise ProtocolError(f"bad frame lengths: frame {total}, header {header_len}")
    frame = _Frame(sock, rest[_PREFIX.size:], fds)
    try:
        header = json.loads(frame.take(header_len))
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"frame header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not a JSON object")
    lengths = header.get("blobs", [])
    if not isinstance(lengths, list) or any(not isinstance(n, int) or n < 0 for n in lengths):
        raise ProtocolError(f"bad blob lengths {lengths!r}")
    shared = header.get("shared", [])
    if not isinstance(shared, list) or any(not isinstance(i, int) for i in shared) \
            or shared != sorted(set(shared)) or (shared and not 0 <= shared[0] <= shared[-1]
                                                   < len(lengths)):
        raise ProtocolError(f"bad shared blob indices {shared!r}")
    inline = sum(lengths) - sum(lengths[i] for i in shared)
    if inline != total - 4 - header_len:
        raise ProtocolError(
            f"inline blob lengths add up to {inline}, the frame holds {total - 4 - header_len}"
        )
    try:
        if "freed" in header and regions is not None:
            regions.free_own(header["freed"])
        if not shared:
            return header, [frame.take(n) for n in lengths], frame.rest()
        region = header.get("region")
        if regions is None or not isinstance(region, int):
            raise ProtocolError("shared blobs without a region of this connection")
        if "region_size" in header:
            if not fds:
                raise ProtocolError(f"region {region} came without its descriptor")
            size = header["region_size"]
            if not isinstance(size, int):
                raise ProtocolError(f"bad region size {size!r}")
            regions.map_peer(region, fds.popleft(), size)
        copied = iter(regions.read_peer(region, [lengths[i] for i in shared]))
    except (RegionError, OSError) as exc:
        raise ProtocolError(f"shared memory: {exc}") from None
    in_region = set(shared)
    blobs = [next(copied) if i in in_region else frame.take(n) for i, n in enumerate(lengths)]
    return header, blobs, frame.rest()


def read_frame(sock: socket.socket) -> Tuple[dict, List[bytearray]]:
    """Reads the one frame of a lock-step exchange (one message, one reply), which has no
    shared memory: (header dict, its blobs). ProtocolError if more bytes than the frame came;
    EOFError when the socket closes."""
    fds: Deque[int] = collections.deque()
    try:
        header, blobs, rest = _read(sock, memoryview(b""), fds, None)
    finally:
        _close_all(fds)
    if rest:
        raise ProtocolError("bytes after the end of a frame")
    return header, blobs


def _close_all(fds: Deque[int]) -> None:
    while fds:
        os.close(fds.popleft())


class FrameReader:
    """Reads frames off a socket that may carry several back to back (the server sends the
    next batch while the worker still runs one): bytes received past the end of one frame
    stay for the next."""

    def __init__(self, sock: socket.socket, regions: Optional[Regions] = None):
        self.sock = sock
        self._rest = memoryview(b"")
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        #: Descriptors received and not yet taken by their frame.
        self._fds: Deque[int] = collections.deque()
        #: The connection's shared memory; None: frames may not use any.
        self.regions = regions

    def read(self) -> Tuple[dict, List[bytearray]]:
        """The next frame: (header dict, its blobs). EOFError when the socket closes."""
        if len(self._fds) > _FDS_MAX:
            raise ProtocolError("descriptors came that no frame claims")
        header, blobs, self._rest = _read(self.sock, self._rest, self._fds, self.regions)
        return header, blobs

    def waiting(self) -> bool:
        """Whether the next frame has begun to arrive, so `read` would not wait for it."""
        return bool(self._rest) or bool(self._poll.poll(0))


#: Compact JSON for frame headers, made once: `json.dumps` with arguments makes an encoder per
#: call.
_HEADER_ENCODER = json.JSONEncoder(separators=(",", ":"))


def write_frame(sock: socket.socket, header: dict, blobs: Iterable[Any] = (),
                share_above: int = 0, regions: Optional[Regions] = None) -> None:
    """Sends one frame with a single gathering write where possible. `blobs` are bytes-like
    (C-contiguous); their lengths are added to the header as `blobs`. With `share_above` > 0,
    blobs of at least that many bytes go end to end into a free region of the worker's own in
    `regions` instead (listed as `shared`, the region as `region`; a region new to the server
    goes with the frame, its size as `region_size`), or in the frame when none is free. Raises
    ProtocolError, before sending anything, if the frame with its shared blobs would exceed
    MAX_FRAME."""
    views = [memoryview(b).cast("B") for b in blobs]
    shared = [i for i, v in enumerate(views) if 0 < share_above <= v.nbytes]
    if views:
        header = {**header, "blobs": [v.nbytes for v in views]}
    head = _HEADER_ENCODER.encode(header).encode("utf-8")
    size = 4 + len(head) + sum(v.nbytes for v in views)
    if size > MAX_FRAME:
        raise ProtocolError(f"a frame of {size} bytes exceeds the limit of {MAX_FRAME}")
    written = regions.write_own([views[i] for i in shared]) if shared and regions else None
    fd = None
    if written is None:
        shared = []
    else:
        region, fd, region_size = written
        header = {**header, "shared": shared, "region": region}
        if fd is not None:
            header["region_size"] = region_size
        head = _HEADER_ENCODER.encode(header).encode("utf-8")
    in_region = set(shared)
    inline = [v for i, v in enumerate(views) if i not in in_region]
    total = 4 + len(head) + sum(v.nbytes for v in inline)
    first = memoryview(_PREFIX.pack(total, len(head)) + head)
    try:
        _send_all(sock, [first, *inline], fd)
    finally:
        if fd is not None:
            os.close(fd)


def _advance(views: List[memoryview], done: int) -> List[memoryview]:
    """`views` without their first `done` bytes."""
    start = 0
    while done:
        if done < views[start].nbytes:
            views[start] = views[start][done:]
            break
        done -= views[start].nbytes
        start += 1
    return views[start:]


def _send_all(sock: socket.socket, views: List[memoryview], fd: Optional[int] = None) -> None:
    """Sends `views`; `fd` goes with the first bytes (the frame's prefix, never empty)."""
    pending = [v for v in views if v.nbytes]
    rights = [] if fd is None else [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
    while pending:
        pending = _advance(pending, sock.sendmsg(pending[:_IOV_MAX], rights))
        rights = []
