"""Processes seen through /proc: whether one runs, waiting for it to go, and whose children
which are."""

import time
from pathlib import Path


def _stat(pid: int) -> list:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...); [] when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return []


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie waiting for its reaper does not)."""
    fields = _stat(pid)
    return bool(fields) and fields[0] not in ("Z", "X")


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


def parent(pid: int) -> int:
    """The pid of process `pid`'s parent."""
    return int(_stat(pid)[1])


def rss_kib(pid: int) -> int:
    """Process `pid`'s resident memory (VmRSS) in KiB."""
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1])


def children(pid: int, zombies: bool = False) -> dict:
    """{pid: command line} of the running children of process `pid`, or of those that have
    exited and wait to be reaped (`zombies`)."""
    found = {}
    for entry in Path("/proc").iterdir():
        fields = _stat(int(entry.name)) if entry.name.isdigit() else []
        if fields and (fields[0] == "Z") == zombies and fields[1] == str(pid):
            try:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except FileNotFoundError:
                continue
    return {child: cmdline.decode(errors="replace") for child, cmdline in found.items()}


def fork_server_pid(server) -> int:
    """The pid of a running `Server`'s one fork server."""
    found = [pid for pid, cmd in children(server.process.pid).items()
             if "torchyard.forkserver" in cmd]
    assert len(found) == 1, found
    return found[0]


class PeakMemory:
    """How much a process's peak resident memory (VmHWM) grows over a `with` block, in MiB
    (`grown_mib`): the peak is reset to the current size on entry (/proc/PID/clear_refs)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.grown_mib = None

    def _peak_kib(self) -> int:
        for line in open(f"/proc/{self.pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmHWM for process {self.pid}")

    def __enter__(self):
        with open(f"/proc/{self.pid}/clear_refs", "w") as refs:
            refs.write("5")
        self.start = self._peak_kib()
        return self

    def __exit__(self, *exc):
        self.grown_mib = (self._peak_kib() - self.start) / 1024
