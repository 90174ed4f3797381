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


# an HTTP/2 client preface and an empty SETTINGS frame: every gRPC server (Ray's GCS, its client server) answers it
# with a SETTINGS frame of its own (RFC 9113, 3.4)
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
SETTINGS = 0x04


def speaks_http2(host: str, port: int, timeout_s: float) -> bool:
    """Whether host:port answers an HTTP/2 preface with a SETTINGS frame within `timeout_s` (a gRPC server does; a
    web server, a database or a silent listener does not)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            sock.sendall(HTTP2_PREFACE)
            header = b""
            while len(header) < 9:  # a frame header: length (3), type (1), flags (1), stream (4)
                chunk = sock.recv(9 - len(header))
                if not chunk:
                    return False
                header += chunk
            return header[3] == SETTINGS
    except OSError:
        return False
