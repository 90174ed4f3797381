"""The Ray session of a run: the address checked before anything is written, a local Ray started on loopback and
bound to the driver (a watchdog ends it if the driver dies), and SIGINT/SIGTERM turned into a clean stop."""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import Any

from ray.tune import Stopper

from orchestrator import watchdog
from orchestrator.network import dial, port_of, speaks_http2
from orchestrator.spec import SpecError
from orchestrator.trainable import WORKER_ENV


CONNECT_TIMEOUT_S = 5.0  # a Ray address that does not accept a connection within this is refused


def check_address(address: str | None) -> None:
    """Refuses, before anything is written, a Ray address `run` cannot use: --address, else RAY_ADDRESS (which
    ray.init reads too). A job server URL (http://HEAD:8265) is `submit`'s, not `run`'s; host:port and
    ray://host:port must accept a TCP connection within CONNECT_TIMEOUT_S (ray.init would wait much longer) and
    answer as a gRPC server does (a web server or a silent listener there would have ray.init retry for minutes)."""
    from urllib.parse import urlparse

    given, field = (address, "--address") if address else (os.environ.get("RAY_ADDRESS"), "RAY_ADDRESS")
    if not given or given in ("auto", "local"):
        return
    parsed = urlparse(given if "://" in given else f"tcp://{given}")
    if parsed.scheme in ("http", "https"):
        raise SpecError(f"{field}: {given!r} is a job server URL; submit jobs to it with `sentinel-bench submit`, "
                        "or give run the cluster's GCS address (HOST:6379, ray://HOST:10001 or auto)")
    port = port_of(parsed)
    if parsed.scheme not in ("tcp", "ray") or not parsed.hostname or port is None:
        raise SpecError(f"{field}: {given!r} is not a Ray address; expected HOST:PORT, ray://HOST:PORT or auto")
    reason = dial(parsed.hostname, port, CONNECT_TIMEOUT_S)
    if reason is not None:
        raise SpecError(f"{field}: no Ray cluster answers at {given!r} ({reason}); is it up (`ray status`)?")
    tls = os.environ.get("RAY_USE_TLS", "").lower() in ("1", "true")  # a TLS cluster answers a TLS hello, not this
    if not tls and not speaks_http2(parsed.hostname, port, CONNECT_TIMEOUT_S):
        raise SpecError(f"{field}: {given!r} accepts connections but does not speak gRPC, so it is no Ray cluster's "
                        "GCS or client server (another service on that port?); ray.init would retry it for minutes")


def start_ray(address: str | None = None, **init_kwargs: Any) -> bool:
    """Starts a local Ray (dashboard off, bound to 127.0.0.1) or connects to `address`.

    Returns:
        True if this call started or connected Ray (and so should shut it down).
    """
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": True,
                              "logging_level": "WARNING"}
    if address is None:
        kwargs["_node_ip_address"] = "127.0.0.1"
        os.environ.setdefault("MALLOC_ARENA_MAX", WORKER_ENV["MALLOC_ARENA_MAX"])  # the local raylet's workers inherit it
    else:
        kwargs["runtime_env"] = {"env_vars": dict(WORKER_ENV)}
    kwargs.update(init_kwargs)
    before = set(watchdog.children_of_this_process())
    # no address: a Ray of our own ("local"), never the cluster a ray_current_cluster file names (a crashed head's
    # stale file had ray.init wait on a dead address, a live one had the run join someone else's cluster);
    # RAY_ADDRESS, when set, is still the cluster asked for (check_address vetted it)
    chosen = address if address is not None else (None if os.environ.get("RAY_ADDRESS") else "local")
    ray.init(address=chosen, **kwargs)
    if address is None:
        _private_token()
    if address is None:  # a local Ray is this driver's: it stops with it, even after a SIGKILL
        global _WATCHDOG
        _WATCHDOG = watchdog.start([p for p in watchdog.children_of_this_process() if p not in before])
    return True


_WATCHDOG = None


def _private_token() -> None:
    """Ray writes a local cluster's auth token world-readable (0644); it is a credential: owner only (docs/SECURITY.md)."""
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    with contextlib.suppress(OSError):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o600)


def stop_ray() -> None:
    """ray.shutdown(), then the watchdog of a local Ray ends whatever outlived it."""
    import ray

    global _WATCHDOG
    ray.shutdown()
    watchdog.stop(_WATCHDOG)
    _WATCHDOG = None


class Interrupted(KeyboardInterrupt):
    """A stop signal outside Tune's loop (or a second one): the run ends now; `signum` says which signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SignalStop:
    """SIGINT (Ctrl-C) and SIGTERM (what a batch scheduler sends) stop a grid the same way, through Tune's public
    Stopper (`StopOnSignal`): the running trials end, every finished row is written, the summary says which signal
    came. A second signal, or one outside Tune's loop, raises `Interrupted` at once."""

    _received = threading.Event()  # class-level: the stopper Tune holds (and pickles) reads it
    signum: int | None = None

    def __enter__(self) -> SignalStop:
        SignalStop._received.clear()
        SignalStop.signum = None
        self.tuning = False
        self.saved = {}
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            self.saved = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def reinstall(self) -> None:
        """After ray.init: Ray's core installs its own SIGTERM handler (a stack dump, then exit 1) over ours."""
        for signum in self.saved:
            signal.signal(signum, self._handle)

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self.saved.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        first = not SignalStop._received.is_set()
        SignalStop.signum = SignalStop.signum or signum
        SignalStop._received.set()
        if not (first and self.tuning):
            raise Interrupted(SignalStop.signum)

    def stop_all(self) -> bool:
        return SignalStop._received.is_set()


class StopOnSignal(Stopper):
    """Tune's view of SignalStop: no state of its own (Tune pickles its stopper with the experiment)."""

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return SignalStop._received.is_set()
