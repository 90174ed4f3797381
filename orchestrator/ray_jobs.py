"""The connection to a Ray cluster's job server for `submit`, `status` and `logs`: its address (--address or
RAY_ADDRESS), its token (read the way Ray reads it: RAY_AUTH_TOKEN, then the file at RAY_AUTH_TOKEN_PATH, then
~/.ray/auth_token; sent as `Authorization: Bearer ...`, never printed or shipped), a reachability check that fails
in seconds, and job requests whose refusals are one SubmitError line."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from orchestrator.network import dial, port_of
from sentinel.contract import SpecError

CONNECT_TIMEOUT_S = 5.0  # an address that does not answer within this is reported as unreachable
DEFAULT_TOKEN_PATH = Path("~/.ray/auth_token")


class SubmitError(SpecError):
    """Bad input to submit/status/logs. The message is one line naming what is wrong and what to do."""


def resolve_address(address: str | None) -> str:
    """The job server URL from --address or RAY_ADDRESS.

    Args:
        address: the --address value, or None to use the RAY_ADDRESS environment variable.
    Returns:
        An http(s)://host:port URL (http:// is assumed when no scheme is given).
    Raises:
        SubmitError: no address, or one that is not a job server URL (ray://, auto, a GCS address).
    """
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SubmitError("--address: missing; give the job server, e.g. --address http://127.0.0.1:8265 "
                          "(or set RAY_ADDRESS)")
    url = address if "://" in address else f"http://{address}"
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or port_of(parsed, 0) is None:
        raise SubmitError(f"--address: {address!r} is not a job server URL; expected http://HEAD:8265 "
                          "(the dashboard port, not ray:// or the GCS port)")
    return url.rstrip("/")


def read_token() -> tuple[str | None, str]:
    """The cluster token, looked up in Ray's order: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token.

    Returns:
        (token or None, where it came from: for messages; never the token itself).
    Raises:
        SubmitError: RAY_AUTH_TOKEN_PATH is set but the file cannot be read or is empty (Ray refuses that too).
    """
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token, "RAY_AUTH_TOKEN"
    env_path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    path = Path(env_path or DEFAULT_TOKEN_PATH).expanduser()
    source = f"RAY_AUTH_TOKEN_PATH ({path})" if env_path else str(path)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError:
        if env_path:
            raise SubmitError(f"RAY_AUTH_TOKEN_PATH: {env_path!r} cannot be read; point it at the cluster's "
                              "token file (`ray get-auth-token` on the head prints the token)") from None
        return None, f"RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, {path}"
    if not token:
        if env_path:
            raise SubmitError(f"RAY_AUTH_TOKEN_PATH: {env_path!r} is empty")
        return None, f"{path} is empty"
    return token, source


def _check_reachable(url: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fails fast (one TCP connect with a timeout) where requests would wait for the OS's connect timeout."""
    parsed = urlparse(url)
    reason = dial(parsed.hostname, port_of(parsed, 443 if parsed.scheme == "https" else 80), timeout_s)
    if reason is not None:
        raise SubmitError(f"--address: cannot reach the Ray job server at {url} ({reason}); is the cluster up "
                          "and the port forwarded (`ray dashboard CLUSTER.yaml`)?")


def connect(address: str | None) -> Any:
    """A JobSubmissionClient for the cluster, authenticated with the token when there is one.

    Args:
        address: --address, or None for RAY_ADDRESS.
    Returns:
        ray.job_submission.JobSubmissionClient (it has already checked the connection and the token).
    Raises:
        SubmitError: unreachable address, missing or refused token.
    """
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    logging.getLogger("ray").setLevel(logging.WARNING)  # Ray's INFO lines (package uploads) are not ours to print
    url = resolve_address(address)
    token, source = read_token()
    _check_reachable(url)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(url, headers=headers)
    except AuthenticationError:
        if token is None:
            raise SubmitError(f"token: the cluster at {url} requires a token and none was found ({source}); "
                              "set RAY_AUTH_TOKEN_PATH to the cluster's token file") from None
        raise SubmitError(f"token: the cluster at {url} refused the token from {source} (wrong token)") from None
    except (ConnectionError, OSError) as exc:  # requests' ConnectionError is an OSError
        raise SubmitError(f"--address: cannot reach the Ray job server at {url} ({first_line(exc)})") from None
    except RuntimeError as exc:  # a server that is not a Ray job server (404 on /api/version) or too old
        raise SubmitError(f"--address: {url} is not a usable Ray job server ({first_line(exc)})") from None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def job_request(fn: Callable[[], Any], job: str, url: str) -> Any:
    """Calls a client method about one job; a job the server does not know is a SubmitError."""
    try:
        return fn()
    except RuntimeError as exc:
        if "404" in str(exc) or "does not exist" in str(exc):
            raise SubmitError(f"job: {job!r} does not exist on {url} (`ray job list` shows the jobs)") from None
        raise SubmitError(f"job {job!r}: {first_line(exc)}") from None
