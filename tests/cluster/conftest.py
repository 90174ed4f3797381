"""Real Ray clusters on this machine for the cluster tests: loopback only, token auth on, isolated.

Other Ray instances may run on the same machine at the same time (other test sessions), so each cluster here
gets its own RAY_TMPDIR (session folders, sockets, the `ray_current_cluster` file that `address="auto"`
reads), its own HOME (the token at ~/.ray/auth_token) and free ports. Teardown kills exactly the process
group it started: never `ray stop`, which stops every Ray instance on the machine.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TINY_DATA = {"source": "gutenberg", "seq_len": 32, "stride": 32, "batch_size": 4, "score_batches": 1,
             "eval_tokens": 256, "whole_split_reference": False}


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free on 127.0.0.1 right now (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def short_tmp(prefix: str) -> Path:
    """A short folder under /tmp: Ray's unix socket paths must stay under ~107 characters."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def write_token(home: Path) -> str:
    """Writes a fresh cluster token to HOME/.ray/auth_token (where Ray looks by default). Returns it."""
    token = secrets.token_hex(32)
    path = home / ".ray" / "auth_token"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token)
    path.chmod(0o600)
    return token


def ray_env(root: Path, **extra: str) -> dict[str, str]:
    """Environment for Ray processes (and the drivers they run) isolated under `root`, token auth on."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RAY_", "AWS_"))}
    home = root / "home"
    env.update({
        "HOME": str(home),
        "RAY_TMPDIR": str(root / "ray"),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(home / ".ray" / "auth_token"),
        # `ray start` rewrites --node-ip-address 127.0.0.1 to the machine's address unless this is 0;
        # with it, every Ray process of the head binds to and advertises the loopback address
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def _refresh_ray_auth() -> None:
    """Makes this process re-read RAY_AUTH_MODE and the token (Ray caches both when it is first imported)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextlib.contextmanager
def in_process_ray_env(root: Path, **extra: str) -> Iterator[dict[str, str]]:
    """Sets ray_env(root) (and a fresh token) in this process for an in-process cluster; restores it after."""
    from ray._private import ray_constants

    env = ray_env(root, **extra)
    write_token(Path(env["HOME"]))
    saved, saved_flag = dict(os.environ), ray_constants.ENABLE_RAY_CLUSTER
    os.environ.clear()
    os.environ.update(env)
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER is read when ray is imported; without this, ray.init rewrites
    # 127.0.0.1 (as an address or a node IP) to the machine's address
    ray_constants.ENABLE_RAY_CLUSTER = False
    _refresh_ray_auth()
    try:
        yield env
    finally:
        os.environ.clear()
        os.environ.update(saved)
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        _refresh_ray_auth()


@dataclass
class RayHead:
    """A `ray start --head --block` process group, its addresses and the environment it runs in."""

    proc: subprocess.Popen
    root: Path
    env: dict[str, str]
    token: str
    gcs_address: str
    dashboard_url: str
    log: Path

    def client(self, token: str | None = "") -> Any:
        """A JobSubmissionClient (token "" = the cluster's token, None = no Authorization header)."""
        from ray.job_submission import JobSubmissionClient

        token = self.token if token == "" else token
        return JobSubmissionClient(self.dashboard_url,
                                   headers={"Authorization": f"Bearer {token}"} if token else None)

    def stop(self) -> None:
        """SIGKILL to the process group at once: a test head holds nothing to save, and its dashboard took 10 s to
        honour SIGTERM (2 s of every teardown went to waiting for it)."""
        for sig, wait_s in ((signal.SIGKILL, 5.0),):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.time() + wait_s
            while time.time() < deadline and _group_alive(self.proc.pid):
                self.proc.poll()
                time.sleep(0.2)
            if not _group_alive(self.proc.pid):
                return


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def start_head(root: Path, num_cpus: int = 2, timeout_s: float = 60.0, **extra_env: str) -> RayHead:
    """Starts a token-auth Ray head on 127.0.0.1 with its dashboard (job server) on 127.0.0.1.

    Args:
        root: a short empty folder for HOME, RAY_TMPDIR and the log.
        num_cpus: CPUs the head offers to trials.
        timeout_s: how long to wait for the job server to answer.
        extra_env: more environment for the head and its jobs (e.g. AWS_ENDPOINT_URL).
    Returns:
        The running head; call stop() in teardown.
    """
    env = ray_env(root, **extra_env)
    token = write_token(Path(env["HOME"]))
    gcs, dashboard, agent, client, metrics = free_ports(5)
    command = [
        str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
        "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--include-dashboard", "true",
        "--dashboard-agent-listen-port", str(agent), "--ray-client-server-port", str(client),
        "--metrics-export-port", str(metrics), "--num-cpus", str(num_cpus), "--num-gpus", "0",
        "--object-store-memory", str(200 * 1024 * 1024), "--disable-usage-stats",
    ]
    log = root / "head.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    head = RayHead(proc, root, env, token, f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}", log)
    deadline = time.time() + timeout_s
    while True:
        try:
            head.client()
            return head
        except Exception:
            if proc.poll() is not None or time.time() > deadline:
                head.stop()
                raise RuntimeError(f"the Ray head did not start:\n{log.read_text()[-3000:]}") from None
            time.sleep(1.0)


def tiny_experiment(name: str, models: list, output: str, **extra: Any) -> dict[str, Any]:
    """A grid of seconds-long CPU trials (2 strategies x len(levels) levels, one seed)."""
    raw = {"experiment": name, "models": [str(m) for m in models], "strategies": ["magnitude", "random"],
           "levels": [0.5], "seeds": [0], "data": dict(TINY_DATA), "device": "cpu", "measure_speed": False,
           "finetune": {"steps": 2, "warmup_steps": 0, "eval_every": 1}, "resources": {"cpu": 1},
           "max_concurrent_trials": 2, "max_failures": 0, "output": output}
    raw.update(extra)
    return raw


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A random-init 2-layer, 4-head GPT-2 folder with a shipped tokenizer (no download)."""
    from tests.integration.conftest import save_tiny_gpt2

    return save_tiny_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2")


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A short /tmp folder for one test, removed afterwards."""
    root = short_tmp("sbc-")
    yield root
    shutil.rmtree(root, ignore_errors=True)
