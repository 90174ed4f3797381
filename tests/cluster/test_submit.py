"""`sentinel-bench submit | status | logs` against a real token-auth Ray head on 127.0.0.1 (the real CLI)."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.cluster.conftest import free_ports, short_tmp, start_head, tiny_experiment

pytestmark = pytest.mark.slow

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@pytest.fixture(scope="module")
def head():
    root = short_tmp("sbc-head-")
    head = start_head(root, num_cpus=2)
    yield head
    head.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def empty_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("client-home")


@pytest.fixture
def client_env(empty_home):
    """The CLI's environment: nothing of the cluster's (no RAY_*, an empty HOME) unless given."""

    def make(**extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env["HOME"] = str(empty_home)
        env.update(extra)
        return env

    return make


def cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=Path(__file__).resolve().parents[2])


@pytest.fixture
def cli_here(monkeypatch, capsys):
    """`sentinel-bench ARGS` in this process, seeing exactly what `env` says of HOME and RAY_*: what a fresh process
    given `env` would see, without starting one (a refusal before any connection, or a client with the right
    token). Returns what subprocess.run would."""
    from orchestrator import cli as command_line

    def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
        with monkeypatch.context() as patch:
            for key in [k for k in os.environ if k.startswith("RAY_")]:
                patch.delenv(key)
            for key, value in env.items():
                if key == "HOME" or key.startswith("RAY_"):
                    patch.setenv(key, value)
            capsys.readouterr()
            code = command_line.main(list(args))
            out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    return run


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The single stderr line of a refused command (exit code 2)."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(lines) == 1, result.stderr
    return lines[0]


def wait_for_job(head, job_id: str, timeout_s: float = 240) -> str:
    client = head.client()
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        status = str(client.get_job_status(job_id))
        if status.split(".")[-1] in TERMINAL:
            return status.split(".")[-1]
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish in {timeout_s}s:\n{client.get_job_logs(job_id)[-3000:]}")


def test_submitted_job_succeeds_and_writes_complete_parquet(head, tiny_gpt2, tmp_path, client_env, cli_here):
    out = tmp_path / "shared"  # same machine: stands in for NFS
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(tiny_experiment("submitted", [tiny_gpt2], "/placeholder")))
    # the token from the default place, ~/.ray/auth_token; --set reaches the job; run's flags pass through
    env = client_env(HOME=head.env["HOME"])
    result = cli("submit", str(config), "--address", head.dashboard_url, "--set", f"output={out}",
                 "--set", "levels=[0.25,0.5]", "--no-analyze", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    job_id = result.stdout.strip().splitlines()[-1]
    assert job_id.startswith("sentinel-submitted-") and head.token not in result.stdout + result.stderr

    assert wait_for_job(head, job_id) == "SUCCEEDED", head.client().get_job_logs(job_id)[-3000:]
    trials = pd.read_parquet(out / "submitted" / "trials.parquet")
    assert len(trials) == 4 and trials.trial_id.is_unique and set(trials.status) == {"ok"}
    assert sorted(trials.level.unique()) == [0.25, 0.5]
    assert yaml.safe_load((out / "submitted" / "config.yaml").read_text())["output"] == str(out)
    assert not (out / "submitted" / "analysis").exists()  # --no-analyze reached `run`

    # status: the address from RAY_ADDRESS, the token from RAY_AUTH_TOKEN_PATH
    status = cli_here("status", job_id, env=client_env(RAY_ADDRESS=head.dashboard_url,
                                                  RAY_AUTH_TOKEN_PATH=head.env["RAY_AUTH_TOKEN_PATH"]))
    assert status.returncode == 0 and status.stdout.startswith(f"{job_id}: SUCCEEDED"), status.stderr
    # logs, and logs --follow of a finished job (returns at its end): the token from RAY_AUTH_TOKEN
    token_env = client_env(RAY_AUTH_TOKEN=head.token)
    logs = cli_here("logs", job_id, "--address", head.dashboard_url, env=token_env)
    assert logs.returncode == 0 and "submitted: 4 ok, 0 failed" in logs.stdout, logs.stderr
    # the follow-up commands submit printed run as printed: they carry the --address it was given
    printed = re.findall(r"`(sentinel-bench [^`]*)`", result.stderr)
    assert [c.split()[1] for c in printed] == ["logs", "status"] and all(head.dashboard_url in c for c in printed)
    follow = cli_here(*shlex.split(printed[0])[1:], env=token_env)
    assert follow.returncode == 0 and "submitted: 4 ok, 0 failed" in follow.stdout, follow.stderr


def test_client_without_token_is_refused(head, client_env):
    line = one_error_line(cli("status", "any", "--address", head.dashboard_url, env=client_env()))
    assert "requires a token" in line and "RAY_AUTH_TOKEN_PATH" in line


def test_client_with_wrong_token_is_refused(head, client_env):
    line = one_error_line(cli("status", "any", "--address", head.dashboard_url,
                              env=client_env(RAY_AUTH_TOKEN="not-the-token")))
    assert "refused the token from RAY_AUTH_TOKEN" in line and "not-the-token" not in line


def test_unknown_job_id_is_refused(head, client_env):
    env = client_env(RAY_AUTH_TOKEN=head.token)
    for command in ("status", "logs"):
        line = one_error_line(cli(command, "raysubmit_nope", "--address", head.dashboard_url, env=env))
        assert "'raysubmit_nope' does not exist" in line


def test_unreachable_address_fails_fast(client_env):
    (port,) = free_ports(1)  # nothing listens there
    started = time.time()
    line = one_error_line(cli("status", "any", "--address", f"http://127.0.0.1:{port}", env=client_env()))
    assert "cannot reach the Ray job server" in line and time.time() - started < 20


def test_invalid_config_is_rejected_before_submission(head, tiny_gpt2, tmp_path, client_env, cli_here):
    before = len(head.client().list_jobs())
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(tiny_experiment("bad", [tiny_gpt2], str(tmp_path), strategies=["entropi"])))
    env = client_env(RAY_AUTH_TOKEN=head.token)
    line = one_error_line(cli_here("submit", str(config), "--address", head.dashboard_url, env=env))
    assert line.startswith("sentinel-bench: error: strategies[0]") and "'entropi' is not one of" in line
    # a relative output would land in the job's temporary working dir: refused too
    line = one_error_line(cli_here("submit", str(config), "--address", head.dashboard_url, "--set",
                                   "strategies=[random]", "--set", "output=results", env=env))
    assert "output: 'results' is a relative path" in line
    assert len(head.client().list_jobs()) == before


def test_head_listens_on_loopback_only(head):
    import ray  # noqa: F401  (puts Ray's vendored psutil on sys.path)
    import psutil

    members = [p for p in psutil.process_iter() if _pgid(p.pid) == head.proc.pid]
    listening = {(c.laddr.ip, c.laddr.port) for p in members for c in _connections(p) if c.status == "LISTEN"}
    assert listening, "found no listening sockets of the head"
    assert {ip.removeprefix("::ffff:") for ip, _ in listening} == {"127.0.0.1"}, listening


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _connections(process) -> list:
    try:
        return process.net_connections(kind="inet")
    except Exception:  # the process ended meanwhile
        return []
