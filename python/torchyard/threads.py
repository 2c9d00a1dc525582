"""Torch threads of a worker: the intra-op and inter-op thread counts the server asks for in
`load` and, when the model's pool changed size, in a `predict`, and the cores `load` pins the
handler's loading to (docs/protocol.md)."""

from __future__ import annotations

import logging
import os
import sys
from typing import List, Optional

log = logging.getLogger(__name__)


def pin(cores: Optional[List[int]]) -> None:
    """Runs this thread, and the threads it starts from now on (torch's pools among them), on
    `cores` (nothing when None). The server pins every thread of the process once it loaded."""
    if not cores:
        return
    try:
        os.sched_setaffinity(0, cores)
    except OSError as exc:  # cores gone from the machine's cpuset: the server's pinning reports it
        log.warning("cannot run on cores %s: %s", cores, exc)


def apply(threads: Optional[int]) -> None:
    """Runs torch with `threads` threads from now on (nothing when `threads` is None). Before
    torch is imported, the environment variables its OpenMP and MKL read at import say it; once
    it is, torch is told directly. The inter-op count can be set once only, before any
    inter-op work: a worker forked from its model's template inherits the template's."""
    if not threads:
        return
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    torch = sys.modules.get("torch")
    if torch is None:
        return
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # set before, or inter-op work already ran: it keeps its count
        pass
