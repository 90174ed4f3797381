"""One TCP dial with a timeout, for the addresses a command is given (a Ray cluster, a job server, an object store's
endpoint): an address that refuses or stays silent is said in seconds, not after a client's own retries."""
from __future__ import annotations

import socket
from urllib.parse import SplitResult


def dial(host: str, port: int, timeout_s: float) -> str | None:
    """None when host:port accepts a TCP connection within `timeout_s`, else why not ("Connection refused", "timed
    out", ...), for a one-line message."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or type(exc).__name__)


def port_of(parsed: SplitResult, default: int | None = None) -> int | None:
    """The port of a parsed URL, `default` when it names none, None when it names one that is not a port (urllib
    raises ValueError for `host:99999` or `host:abc` only when `.port` is read)."""
    try:
        return parsed.port or default
    except ValueError:
        return None
