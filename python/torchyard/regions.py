"""Shared-memory regions of one worker connection (docs/protocol.md, "Shared memory"): the
server's, mapped read-only, which large request blobs are copied out of, and the worker's own,
mapped read-write, which large outputs are written into. A region is a memfd mapped once and
reused for many frames; its descriptor crosses the socket once."""

from __future__ import annotations

import fcntl
import mmap
import os
import threading
from typing import Dict, List, Optional, Sequence, Tuple


class RegionError(ValueError):
    """A frame that names shared memory the connection does not have."""


#: The most regions of its own a worker keeps, and the largest: an output frame whose shared
#: blobs need more, or that finds every region busy, sends them in the frame instead.
MAX_REGIONS = 4
MAX_REGION_BYTES = 64 << 20
#: The smallest region made: sizes are rounded up to a power of two from here.
_MIN_REGION_BYTES = 1 << 20
#: Seals of the worker's regions: the server maps them, so they may never shrink under it.
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


class _Own:
    """One of the worker's regions: busy from the frame that uses it to the server's `freed`."""

    __slots__ = ("map", "busy")

    def __init__(self, mapped: mmap.mmap):
        self.map, self.busy = mapped, True


def _region_size(needed: int) -> int:
    size = _MIN_REGION_BYTES
    while size < needed:
        size *= 2
    return min(size, MAX_REGION_BYTES)


class Regions:
    """The shared memory of one connection. The worker's regions are leased by the thread that
    writes a frame and freed by the one that reads the server's, so they are locked."""

    def __init__(self) -> None:
        self._peer: Dict[int, mmap.mmap] = {}
        self._own: List[_Own] = []
        self._lock = threading.Lock()

    def map_peer(self, region: int, fd: int, size: int) -> None:
        """Maps the server's region `region` (`size` bytes, read-only) from `fd`, which it
        closes, in place of any region it had by that id."""
        try:
            if size <= 0 or os.fstat(fd).st_size < size:
                raise RegionError(f"region {region} is shorter than its {size} bytes")
            mapped = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        old = self._peer.pop(region, None)
        if old is not None:
            old.close()
        self._peer[region] = mapped

    def read_peer(self, region: int, lengths: Sequence[int]) -> List[bytearray]:
        """The blobs of `lengths`, end to end from the start of the server's region `region`,
        each copied into a bytearray of its own."""
        mapped = self._peer.get(region)
        if mapped is None:
            raise RegionError(f"the server's region {region} was never sent")
        if sum(lengths) > len(mapped):
            raise RegionError(f"shared blobs of {sum(lengths)} bytes exceed region {region}")
        blobs, at = [], 0
        with memoryview(mapped) as view:
            for n in lengths:
                blobs.append(bytearray(view[at:at + n]))
                at += n
        return blobs

    def write_own(self, views: Sequence[memoryview]) -> Optional[Tuple[int, Optional[int], int]]:
        """Writes `views` end to end into a free region of the worker's own, now busy: (its id,
        the descriptor to send with the frame when the region is new to the server, else None,
        the region's size). None when they need more than MAX_REGION_BYTES or every region is
        busy and there are MAX_REGIONS: the frame carries them instead."""
        needed = sum(v.nbytes for v in views)
        if needed > MAX_REGION_BYTES:
            return None
        with self._lock:
            free = [i for i, r in enumerate(self._own) if not r.busy]
            fits = [i for i in free if len(self._own[i].map) >= needed]
            fd = None
            if fits:
                region = min(fits, key=lambda i: len(self._own[i].map))
                self._own[region].busy = True
            elif len(self._own) < MAX_REGIONS or free:
                region = len(self._own) if len(self._own) < MAX_REGIONS else free[0]
                fd, mapped = _create(_region_size(needed))
                if region == len(self._own):
                    self._own.append(_Own(mapped))
                else:  # a free region too small for the frame: a larger one takes its id
                    self._own[region].map.close()
                    self._own[region] = _Own(mapped)
            else:
                return None
            mapped = self._own[region].map
        at = 0
        with memoryview(mapped) as target:
            for view in views:
                target[at:at + view.nbytes] = view
                at += view.nbytes
        return region, fd, len(mapped)

    def free_own(self, regions: object) -> None:
        """Marks the worker's regions the server names in a frame's `freed` free again."""
        if not isinstance(regions, list) or not all(isinstance(i, int) for i in regions):
            raise RegionError(f"bad freed regions {regions!r}")
        with self._lock:
            for i in regions:
                if 0 <= i < len(self._own):
                    self._own[i].busy = False


def _create(size: int) -> Tuple[int, mmap.mmap]:
    """A new region of `size` bytes: its memfd, sealed against shrinking, and its mapping."""
    fd = os.memfd_create("torchyard-reply", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
        return fd, mmap.mmap(fd, size)
    except BaseException:
        os.close(fd)
        raise
