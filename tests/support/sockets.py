"""Raw client sockets the connection tests hold open against the server."""

import ssl
import time


def closed_by_server(s) -> bool:
    """Whether the server closed `s` (EOF or reset, a TLS socket's included) before the
    socket's timeout; False when it left `s` waiting."""
    try:
        while s.recv(65536):
            pass
    except (ConnectionResetError, ssl.SSLError):
        pass
    except TimeoutError:
        return False
    return True


def served_within(checks: dict, deadline: float, failures: tuple) -> set:
    """The names of `checks` (name: call returning whether it was served) that succeeded by
    `deadline` (time.monotonic()), each retried in turn until it does; `failures` are the
    exceptions that count as not yet served."""
    served = set()
    while len(served) < len(checks) and time.monotonic() < deadline:
        for name, check in checks.items():
            try:
                if name not in served and check():
                    served.add(name)
            except failures:
                pass
    return served
