"""A multi-node Ray cluster on one machine (head + 2 worker nodes): a worker node dies mid-experiment.

The head offers no CPUs, so every trial runs on one of the two worker nodes (1 CPU each). Once a trial has
started on the victim node, the node is removed (all its processes killed). Tune's FailureConfig retries the
lost trial on the surviving node, and the experiment still ends with every grid cell exactly once.
"""
from __future__ import annotations

import io
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.runner import run_experiment
from orchestrator.trainable import trainable
from orchestrator.spec import parse_spec
from tests.cluster.conftest import in_process_ray_env, short_tmp, tiny_experiment

pytestmark = pytest.mark.slow

FAST_NODE_DEATH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                   "health_check_failure_threshold": 3}  # a dead node is noticed in ~1.5 s, not ~15 s


@pytest.fixture
def cluster():
    """Head (0 CPUs: driver and store only) + 2 worker nodes with 1 CPU each, all on 127.0.0.1, token auth."""
    import ray
    from ray.cluster_utils import Cluster

    root = short_tmp("sbc-fault-")
    with in_process_ray_env(root):
        node = {"node_ip_address": "127.0.0.1", "include_dashboard": False}
        cluster = Cluster(initialize_head=True, head_node_args={**node, "num_cpus": 0,
                                                                "_system_config": FAST_NODE_DEATH})
        try:
            workers = [cluster.add_node(**node, num_cpus=1) for _ in range(2)]
            cluster.wait_for_nodes()
            yield cluster, workers
        finally:
            ray.shutdown()
            cluster.shutdown()
    shutil.rmtree(root, ignore_errors=True)


def test_killed_worker_node_trials_rerun_on_survivor_each_cell_once(cluster, tiny_gpt2, tmp_path):
    cluster, workers = cluster
    marks = tmp_path / "started"
    marks.mkdir()

    def marked_trainable(config):
        """The real trainable, after leaving a mark (which node, which cell) and pausing so a kill lands mid-trial."""
        import ray

        cell = config["cell"]
        name = f"{ray.get_runtime_context().get_node_id()}_{cell['strategy']}_{cell['level']}_{uuid.uuid4().hex[:6]}"
        (Path(str(marks)) / name).write_text("")
        time.sleep(1.0)
        trainable(config)

    victim, survivor = workers
    killed: list[float] = []

    def kill_victim_once_it_runs_a_trial() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            if any(p.name.startswith(victim.node_id) for p in marks.iterdir()):
                cluster.remove_node(victim, allow_graceful=False)
                killed.append(time.time())
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_victim_once_it_runs_a_trial, daemon=True)
    killer.start()
    raw = tiny_experiment("fault", [tiny_gpt2], str(tmp_path / "out"), levels=[0.2, 0.5],
                          max_failures=2, max_concurrent_trials=2)
    progress = io.StringIO()
    summary = run_experiment(parse_spec(raw), address=cluster.address, trainable_fn=marked_trainable,
                             stream=progress)
    killer.join(timeout=5)

    assert killed, "the victim node never started a trial"
    trials = pd.read_parquet(summary.written["trials"])
    errors = trials.loc[trials.status != "ok", "error"].str.split("\n").str[0].tolist()
    assert (summary.ok, summary.failed, summary.missing) == (4, 0, 0), errors
    assert len(trials) == 4 and trials.trial_id.is_unique and set(trials.status) == {"ok"}
    assert {(s, lv) for s, lv in trials[["strategy", "level"]].values} == {
        (s, lv) for s in ("magnitude", "random") for lv in (0.2, 0.5)}
    starts = [p.name.split("_")[:3] for p in marks.iterdir()]  # [node id, strategy, level] per attempt
    assert {node for node, _, _ in starts} == {victim.node_id, survivor.node_id}  # spread over both workers
    # each cell that started on the victim (killed there) started again on the survivor, once, and finished there
    lost = {(strategy, float(level)) for node, strategy, level in starts if node == victim.node_id}
    assert lost
    for strategy, level in lost:
        again = [n for n, s, lv in starts if (s, float(lv)) == (strategy, level) and n == survivor.node_id]
        assert len(again) == 1
        assert progress.getvalue().count(f"[retry] {tiny_gpt2} {strategy} level={level} ") == 1
    assert len(starts) == 4 + len(lost)
    assert set(trials.ray_node_id) == {survivor.node_id}  # nothing finished on the victim
    assert (trials.node == socket.gethostname()).all()  # one host: only ray_node_id tells the nodes apart


class _Lines(io.StringIO):
    """A progress stream other threads can poll."""

    def seen(self, text: str) -> bool:
        return text in self.getvalue()


def test_trial_waiting_for_resources_is_reported_then_runs_when_a_node_joins(cluster, tiny_gpt2, tmp_path):
    """No node can give a trial 2 CPUs: the runner says so (what one trial asks, what the cluster has) instead of
    waiting silently, and the grid finishes once a node that can run it joins (what an autoscaler would do)."""
    cluster, _ = cluster
    raw = tiny_experiment("pending", [tiny_gpt2], str(tmp_path / "out"), strategies=["magnitude"],
                          resources={"cpu": 2}, pending_report_s=1)
    progress = _Lines()
    done: list = []
    runner = threading.Thread(target=lambda: done.append(run_experiment(parse_spec(raw), address=cluster.address,
                                                                        stream=progress)), daemon=True)
    runner.start()
    deadline = time.time() + 60
    while not progress.seen("[waiting]") and time.time() < deadline:
        time.sleep(0.1)
    line = next((l for l in progress.getvalue().splitlines() if l.startswith("[waiting]")), "")
    assert "1 trial(s) pending" in line and "each asks for cpu 2" in line and "the cluster has cpu 2, gpu 0" in line
    cluster.add_node(node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=2)
    runner.join(timeout=120)
    assert done and (done[0].ok, done[0].missing) == (1, 0)
