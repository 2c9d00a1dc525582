"""Raw client sockets the connection tests hold open against the server."""

import ssl


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
