"""The fork server: `python -m torchyard.forkserver --socket PATH`.

Imports torch and the worker's modules once, then forks a worker for each request of the server
(docs/protocol.md, "Fork server"): the child is ready in milliseconds and shares the imported
modules' memory with the fork server and its siblings. A fork request with `"role": "template"`
makes the child a model's template instead, which loads the handler once and forks that model's
workers in turn (`become_template`). The fork server starts no threads and never
initialises CUDA; it refuses to fork once either has happened, and the server then starts a fresh
process instead. It reaps its children and exits when the server closes the control socket.
"""

from __future__ import annotations

import gc

# No collection may leave freed holes in the pages the workers share; gc.freeze() below moves
# every object into the permanent generation, which the children's collections never touch.
gc.disable()

import argparse  # noqa: E402 - every import comes after gc.disable()
import fcntl  # noqa: E402
import os  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
from typing import Callable, List, Optional, Sequence, Tuple  # noqa: E402

from . import worker  # noqa: E402
from .framing import ProtocolError, read_frame, write_frame  # noqa: E402
from .metrics import drain  # noqa: E402

#: Linux's F_SETSIG, which Python's fcntl module does not name.
F_SETSIG = getattr(fcntl, "F_SETSIG", 10)

#: What a fork request carries: the worker's stdout, its stderr and the read end of its lifeline.
REQUEST_FDS = 3

#: A fork request, and the file descriptors that came with it.
Request = Tuple[dict, List[int]]


def preload() -> List[str]:
    """Imports what workers import anyway; returns the optional packages found."""
    found = []
    try:
        import torch  # noqa: F401 - imported for the workers
    except ImportError:
        pass
    else:
        found.append("torch")
    return found


def settle_threads() -> None:
    """Forks once and reaps the child. Libraries whose threads stop before a fork (OpenBLAS, which
    numpy imports, starts its pool at import) stay stopped: the fork server never calls them."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def unsafe_reason() -> Optional[str]:
    """Why forking would be unsafe now, or None: another thread runs (it may hold a lock the child
    would never see released), or CUDA is initialised (its state cannot cross a fork)."""
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        return f"{threads} threads run in the fork server"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "CUDA is initialised in the fork server"
    return None


def pidfd_missing() -> Optional[str]:
    """Why the server could not watch forked workers (it is not their parent), or None."""
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError) as exc:
        return f"no pidfd_open (Linux 5.3 or later): {exc}"
    return None


def send(sock: socket.socket, message: dict, fds: Sequence[int] = ()) -> None:
    """Sends the one-byte marker carrying `fds`, then `message` as a worker-protocol frame."""
    if fds:
        socket.send_fds(sock, [b"\0"], list(fds))
    else:
        sock.sendall(b"\0")
    write_frame(sock, message)


def receive(sock: socket.socket) -> Request:
    """Receives a marker with its file descriptors and the frame after it; EOFError when the
    server closes the socket."""
    marker, fds, flags, _ = socket.recv_fds(sock, 1, REQUEST_FDS)
    if not marker:
        raise EOFError("socket closed")
    if flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise ProtocolError(f"more than {REQUEST_FDS} file descriptors came with a request")
    message, _ = read_frame(sock)
    return message, fds


def _reap(*_) -> None:
    """SIGCHLD: collects every child that has exited, so none lingers as a zombie."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def serve(control: socket.socket) -> Optional[Request]:
    """Answers fork requests until the server closes the socket (then returns None). In a forked
    child, returns the request that child is to serve."""
    signal.signal(signal.SIGCHLD, _reap)
    while True:
        try:
            request, fds = receive(control)
        except (EOFError, ConnectionError):
            return None
        reason = unsafe_reason() if request.get("kind") == "fork" else "not a fork request"
        if reason is not None or len(fds) != REQUEST_FDS:
            for fd in fds:
                os.close(fd)
            reason = reason or f"a fork request carries {REQUEST_FDS} file descriptors"
            send(control, {"kind": "error", "message": reason})
            continue
        # SIGCHLD waits until the child's pidfd is open: the child cannot be reaped (and its pid
        # reused) before.
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
        pid = -1
        try:
            gc.freeze()
            pid = os.fork()
            if pid == 0:
                return request, fds
            pidfd = os.pidfd_open(pid)
        finally:
            if pid:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])
        for fd in fds:
            os.close(fd)
        try:
            send(control, {"kind": "forked", "pid": pid}, [pidfd])
        finally:
            os.close(pidfd)


def hold_lifeline(fd: int) -> None:
    """Has the kernel SIGKILL this process as soon as the server's end of the pipe `fd` closes:
    the server died (however it died) or let go of this worker."""
    os.set_inheritable(fd, False)
    fcntl.fcntl(fd, fcntl.F_SETOWN, os.getpid())
    fcntl.fcntl(fd, F_SETSIG, signal.SIGKILL)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC | os.O_NONBLOCK)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if poller.poll(0):  # the server's end closed before the signal was armed
        os._exit(1)


def become_child(control: socket.socket, start_dir: str, request: dict, fds: List[int]) -> None:
    """In a forked child: takes the request's pipes as stdout and stderr, holds its lifeline and
    moves to its directory (which then heads `sys.path`, as `python -m` would have put it)."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])
    control.close()
    stdout, stderr, lifeline = fds
    os.dup2(stdout, 1)
    os.dup2(stderr, 2)
    os.close(stdout)
    os.close(stderr)
    hold_lifeline(lifeline)
    os.chdir(request["cwd"])
    # `python -m` puts the directory it starts in first on sys.path.
    if sys.path and sys.path[0] == start_dir:
        sys.path[0] = os.getcwd()
    numpy = sys.modules.get("numpy")
    if numpy is not None:  # its global generator would repeat the fork server's sequence
        numpy.random.seed()
    gc.enable()


def become_worker(control: socket.socket, start_dir: str, request: dict, fds: List[int],
                  loaded: Optional[worker.Worker] = None) -> int:
    """In a forked child: turns into the worker `python -m torchyard.worker` would be, started
    in the request's directory with its output on the request's pipes; returns its exit code.
    `loaded`: the model template's worker, whose handler is initialised already."""
    become_child(control, start_dir, request, fds)
    argv = ["--socket", request["socket"]]
    sys.argv = [worker.__file__, *argv]
    return worker.main(argv, loaded)


def single_threaded_torch() -> Callable[[], None]:
    """Has torch run its intra-op work on the calling thread only, so that a handler's
    `initialize` (loading a large state dict, say) starts no OpenMP pool: a pool's threads make
    forking unsafe, and the template would then be given up. Returns what a forked worker calls
    to get torch's thread count back: the default, or the count `initialize` chose itself."""
    torch = sys.modules.get("torch")
    if torch is None:
        return lambda: None
    default = torch.get_num_threads()
    torch.set_num_threads(1)

    def restore() -> None:
        chosen = torch.get_num_threads()
        torch.set_num_threads(default if chosen == 1 else chosen)

    return restore


def become_template(control: socket.socket, start_dir: str, request: dict,
                    fds: List[int]) -> int:
    """In a forked child: becomes a model's template (docs/protocol.md, "Model templates").
    Connects to the request's socket, loads the handler the `load` message names, and, when
    forking is still safe, forks that model's workers on request as the fork server does; the
    forked workers share the handler's memory (its weights) copy-on-write."""
    become_child(control, start_dir, request, fds)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)
    sys.path.append(worker.COMPAT_PATH)
    template = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    template.connect(request["socket"])
    try:
        msg, extra = receive(template)
    except (EOFError, ConnectionError, ProtocolError):
        return 1
    for fd in extra:
        os.close(fd)
    loaded = worker.Worker()
    # Each forked worker sets its own torch threads: setting them here would start a thread
    # pool (pthreadpool's) that makes forking unsafe.
    msg.pop("threads", None)
    restore_threads = single_threaded_torch()
    reply, _ = loaded.handle(msg, [])
    if reply.get("kind") != "loaded":
        send(template, reply)
        return 1
    gc.collect()
    reason = unsafe_reason()
    if reason is not None:
        send(template, {"kind": "unsafe", "reason": f"after the handler's initialize, {reason}"})
        return 1
    if loaded.pending_metrics:  # what `initialize` recorded; the workers start with none
        reply["metrics"] = drain(loaded.pending_metrics)
    gc.disable()
    gc.freeze()
    send(template, reply)
    forked = serve(template)
    if forked is None:
        return 0
    loaded.forked = True
    restore_threads()
    return become_worker(template, start_dir, *forked, loaded=loaded)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the fork server; in a forked child, runs the worker and returns its exit code."""
    parser = argparse.ArgumentParser(prog="python -m torchyard.forkserver",
                                     description="Forks torchyard workers on request.")
    parser.add_argument("--socket", required=True, help="the server's control socket path")
    args = parser.parse_args(argv)
    start_dir = os.getcwd()
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    control.connect(args.socket)
    try:
        preloaded = preload()
    except Exception as exc:  # noqa: BLE001 - a broken install: workers will report it
        send(control, {"kind": "unsafe", "reason": f"preloading failed: {exc!r}"})
        return 1
    settle_threads()
    reason = unsafe_reason() or pidfd_missing()
    if reason is not None:
        send(control, {"kind": "unsafe", "reason": reason})
        return 1
    gc.freeze()
    send(control, {"kind": "ready", "pid": os.getpid(), "preloaded": preloaded})
    forked = serve(control)
    if forked is None:
        return 0
    if forked[0].get("role") == "template":
        return become_template(control, start_dir, *forked)
    return become_worker(control, start_dir, *forked)


if __name__ == "__main__":
    sys.exit(main())
