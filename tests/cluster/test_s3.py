"""Results and Tune state on s3:// (a moto server on 127.0.0.1), read back by `sentinel-bench analyze`."""
from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import time

import pandas as pd
import pytest

from orchestrator.runner import run_experiment
from orchestrator.spec import parse_spec
from tests.cluster.conftest import BIN, REPO, free_ports, in_process_ray_env, tiny_experiment

pytestmark = pytest.mark.slow

BUCKET = "sentinel-results"


@pytest.fixture
def s3_env(tmp_path):
    """A moto S3 server on a free loopback port with an empty bucket; the AWS_* variables that reach it."""
    import pyarrow.fs as pafs

    (port,) = free_ports(1)
    with open(tmp_path / "moto.log", "wb") as log:
        proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}  # no instance-metadata lookups
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"moto_server did not start: {(tmp_path / 'moto.log').read_text()}")
                time.sleep(0.2)
        pafs.S3FileSystem(endpoint_override=endpoint, access_key="testing", secret_key="testing",
                          region="us-east-1", allow_bucket_creation=True).create_dir(BUCKET)
        yield env
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_results_on_s3_are_analyzed_from_s3(s3_env, tiny_gpt2, scratch, capsys):
    import pyarrow.fs as pafs

    from orchestrator import cli

    root = scratch
    prefix = f"s3://{BUCKET}/runs"
    raw = tiny_experiment("on-s3", [tiny_gpt2], prefix, storage_path=f"s3://{BUCKET}/tune")
    with in_process_ray_env(root, **s3_env):
        summary = run_experiment(parse_spec(raw), ray_init={"num_cpus": 2}, stream=io.StringIO())
        fs, _ = pafs.FileSystem.from_uri(prefix)
        tune_state = fs.get_file_info(pafs.FileSelector(f"{BUCKET}/tune/on-s3", recursive=True))
    assert (summary.ok, summary.failed, summary.missing) == (2, 0, 0)
    assert summary.written["trials"] == f"{prefix}/on-s3/trials.parquet"
    assert any(info.base_name.startswith("experiment_state") for info in tune_state)  # --resume reads this
    assert not (REPO / "results" / "on-s3").exists()

    # the real CLI, Ray shut down and only the AWS_* variables in common with the run: reads the tables from s3 and
    # writes its report next to them
    with in_process_ray_env(root, **s3_env):  # the AWS_* variables for pyarrow in this process
        capsys.readouterr()
        code, out = cli.main(["analyze", f"{prefix}/on-s3"]), capsys.readouterr()
        assert code == 0, out.out + out.err
        assert f"{prefix}/on-s3/analysis" in out.out
        fs, inner = pafs.FileSystem.from_uri(f"{prefix}/on-s3")
        names = {info.base_name for info in fs.get_file_info(pafs.FileSelector(inner, recursive=True))}
        with fs.open_input_file(f"{inner}/trials.parquet") as f:
            trials = pd.read_parquet(f)
    assert {"trials.parquet", "curves.parquet", "heads.parquet", "config.yaml", "report.md"} <= names
    assert len(trials) == 2 and set(trials.status) == {"ok"} and trials.trial_id.is_unique
