"""The orchestrator on a real Ray runtime: a grid end to end, a random reference through to the report, a failing trial,
resume after SIGKILL, logical GPUs."""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from orchestrator.analyze import analyze
from orchestrator.analyze.layouts import layout_key
from orchestrator.runner import run_experiment
from orchestrator.trainable import trainable
from orchestrator.spec import parse_spec

pytestmark = pytest.mark.slow

TINY = {"seq_len": 32, "stride": 32, "batch_size": 4, "score_batches": 1, "eval_tokens": 256}


def experiment(name: str, out: Path, models, corpus: Path, **extra) -> dict:
    raw = {"experiment": name, "models": [str(m) for m in models], "strategies": ["magnitude", "random"],
           "levels": [0.25, 0.5], "seeds": [0], "data": {**TINY, "source": str(corpus)}, "device": "cpu", "measure_speed": False,
           "finetune": {"steps": 2, "warmup_steps": 0, "eval_every": 1}, "resources": {"cpu": 1},
           "max_concurrent_trials": 2, "max_failures": 0, "output": str(out)}
    raw.update(extra)
    return raw


def test_grid_end_to_end_writes_complete_tables(ray_cluster, tiny_gpt2, tiny_corpus, tmp_path):
    # device "auto" (the default): the worker resolves it, and the row must still be the cell's (same trial_id)
    spec = parse_spec(experiment("grid", tmp_path, [tiny_gpt2], tiny_corpus, seeds=[0, 1], device="auto"))
    summary = run_experiment(spec, stream=io.StringIO())
    assert (summary.ok, summary.failed, summary.missing) == (8, 0, 0)

    trials = pd.read_parquet(summary.written["trials"])
    assert len(trials) == 8 and trials.trial_id.is_unique and set(trials.status) == {"ok"}
    assert set(trials.trial_id) == {cell.trial_id() for cell in spec.cells}
    assert (trials.spec.map(lambda s: json.loads(s)["device"]) == "auto").all() and (trials.device == "cpu").all()
    assert {(s, l, d) for s, l, d in trials[["strategy", "level", "seed"]].values} == {
        (s, l, d) for s in ("magnitude", "random") for l in (0.25, 0.5) for d in (0, 1)}
    for column in ("dense", "pruned", "recovered"):
        assert trials[column].map(math.isfinite).all() and (trials[column] > 1).all()
    assert (trials.metric_name == "perplexity").all() and (trials.architecture == "gpt2").all()
    assert (trials.heads_total == 8).all() and set(trials.heads_pruned) == {2, 4}
    assert (trials.params_after < trials.params_before).all()
    assert trials.protocol.map(lambda p: json.loads(p)["seq_len"] == 32).all() and (trials.task == "perplexity").all()
    assert trials.version_ray.notna().all() and trials.version_torch.notna().all()
    # the dense baseline is computed by one trial; scores once per (strategy, seed) for random and once for
    # magnitude, which does not depend on the seed (STRATEGIES' uses_seed); levels reuse them
    assert (~trials.reused_baseline).sum() == 1
    assert (~trials.reused_scores).sum() == 3
    # magnitude prunes the same heads in both seeds: its pruned model is evaluated once per level
    magnitude = trials[trials.strategy == "magnitude"]
    assert (~magnitude.reused_pruned_eval).sum() == 2 and magnitude.groupby("level").pruned.nunique().eq(1).all()

    curves = pd.read_parquet(summary.written["curves"])
    assert set(curves.trial_id) == set(trials.trial_id) and (curves.groupby("trial_id").step.max() == 2).all()
    assert curves[curves.step > 0].train_loss.map(math.isfinite).all()  # step 0: right after pruning, no loss
    heads = pd.read_parquet(summary.written["heads"])
    assert len(heads) == 8 * 8
    assert (heads.groupby("trial_id").pruned.sum().sort_index()
            == trials.set_index("trial_id").heads_pruned.sort_index()).all()
    config = yaml.safe_load(Path(summary.written["config"]).read_text())
    assert config["levels"] == [0.25, 0.5] and config["seeds"] == [0, 1]


def test_reference_layouts_run_as_cells_and_every_strategy_is_tested_against_them(ray_cluster, tiny_gpt2,
                                                                                   tiny_corpus, tmp_path):
    raw = experiment("ref", tmp_path, [tiny_gpt2], tiny_corpus, strategies=["magnitude", "random"], levels=[0.25],
                     seeds=[0, 1, 2], random_reference={"layouts": 20, "recovered": 5})
    stream = io.StringIO()
    summary = run_experiment(parse_spec(raw), stream=stream)
    assert (summary.ok, summary.failed) == (26, 0)
    assert "random reference level=0.25 draw=19" in stream.getvalue()  # the progress line names a draw, not a seed

    trials = pd.read_parquet(summary.written["trials"])
    reference = trials[trials.reference]
    assert len(reference) == 20 and set(reference.strategy) == {"random"}
    assert sorted(reference[reference.recovery_steps > 0].seed) == [0, 1, 2, 3, 4]
    assert reference.speed_after.isna().all()  # the reference measures quality, never speed
    # reference draw d is not random seed d: its head scores come from a stream of their own
    heads = pd.read_parquet(summary.written["heads"])
    scores = heads.groupby("trial_id").score.apply(tuple)
    grid_random = trials[(trials.strategy == "random") & ~trials.reference].set_index("seed").trial_id
    draws = reference.set_index("seed").trial_id
    assert all(scores[grid_random[d]] != scores[draws[d]] for d in (0, 1, 2))
    key = layout_key
    # an unrecovered draw's recovered value is its pruned one; the analysis uses only the recovered draws for that stage
    unrecovered = reference[reference.recovery_steps == 0]
    assert (unrecovered.recovered == unrecovered.pruned).all()

    report = analyze([summary.written["trials"].rsplit("/", 1)[0]])
    table = pd.read_csv(report.parent / "summary.csv").set_index("label")
    assert set(table.index) == {"magnitude", "random"}  # the reference is not a strategy row
    # tiny-gpt2 has 28 layouts of 2 heads in 8: 20 draws repeat some, and each distinct layout counts once
    distinct = reference.pruned_heads.map(key).nunique()
    assert table.loc["magnitude", "vs_random_pruned_test"] == (
        f"none: {distinct} distinct reference layouts, a test needs 20" if distinct < 20
        else f"exact rank test, 1 layout vs {distinct} random")
    assert 0 <= table.loc["magnitude", "pruned_percentile"] <= 1
    recovered = reference[reference.recovery_steps > 0].pruned_heads.map(key).nunique()
    assert table.loc["magnitude", "vs_random_recovered_test"] == (
        f"none: {recovered} distinct reference layouts, a test needs 5" if recovered < 5
        else f"exact rank test, 1 layout vs {recovered} random")
    text = report.read_text()
    assert "random reference for" in text and "20 draws" in text and "5 draws also recovered" in text
    assert (report.parent / "percentiles.csv").is_file() and (report.parent / "stability.csv").is_file()


def test_failing_trial_is_a_failed_row_after_retries(ray_cluster, tiny_gpt2, broken_gpt2, tiny_corpus, tmp_path):
    raw = experiment("faults", tmp_path, [tiny_gpt2, broken_gpt2], tiny_corpus, strategies=["random"], levels=[0.5],
                     max_failures=1)
    summary = run_experiment(parse_spec(raw), stream=io.StringIO())
    trials = pd.read_parquet(summary.written["trials"]).set_index("model")
    assert (summary.ok, summary.failed) == (1, 1)
    bad, good = trials.loc[str(broken_gpt2)], trials.loc[str(tiny_gpt2)]
    assert bad.status == "failed" and bad.error and pd.isna(bad.dense) and bad.attempts == 2
    assert good.status == "ok" and math.isfinite(good.recovered) and good.attempts == 1


def _dies(config: dict) -> None:
    os._exit(3)  # the worker process ends without reporting anything


def test_a_worker_that_dies_without_reporting_gets_tunes_error_in_its_row(ray_cluster, tiny_gpt2, tiny_corpus, tmp_path):
    raw = experiment("dies", tmp_path, [tiny_gpt2], tiny_corpus, strategies=["random"], levels=[0.5], max_failures=0)
    summary = run_experiment(parse_spec(raw), trainable_fn=_dies, stream=io.StringIO())
    trials = pd.read_parquet(summary.written["trials"])
    assert (summary.ok, summary.failed) == (0, 1)
    error = trials.error.iloc[0]
    assert error.startswith("TuneError: ") and "no error recorded" not in error and "\n" not in error
    assert "Died" in error or "died" in error or "exit" in error  # Tune's own words for a dead worker


def _listening(process: psutil.Process) -> list:
    with contextlib.suppress(psutil.Error):
        return [c for c in process.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    return []


def test_resume_after_sigkill_loses_no_finished_row_and_may_add_cells(ray_cluster, tiny_gpt2, tiny_corpus, tmp_path,
                                                                      capsys):
    from orchestrator import cli

    # 8 short trials, one at a time: the kill comes within a second of the first row, so it lands mid-grid
    raw = experiment("resume", tmp_path / "out", [tiny_gpt2], tiny_corpus, max_concurrent_trials=1,
                     seeds=[0, 1], finetune={"steps": 5, "warmup_steps": 0, "eval_every": 5})
    config = tmp_path / "resume.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "orchestrator.cli", "run", str(config), "--no-analyze"]
    progress = lambda text, n: [l for l in text.splitlines() if l.startswith("[") and f"/{n}]" in l]  # noqa: E731
    parts = tmp_path / "out" / "resume" / "parts" / "trials"

    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)  # its own process group: the kill reaches Ray's processes too
    try:
        for line in proc.stdout:
            if progress(line, 8):
                break
        seen = time.time()  # the finished trial's row reaches a part within the flush interval; then kill at once
        while not list(parts.glob("*.parquet")):
            assert time.time() - seen < 30, "no part was written within 30 s of a finished trial"
            time.sleep(0.02)
        ray_processes = psutil.Process(proc.pid).children(recursive=True)
        # a local run's Ray listens on loopback only (docs/SECURITY.md): a dead line once left it on every interface
        listening = {c.laddr.ip for p in ray_processes for c in _listening(p)}
        assert listening and listening <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, listening
        proc.kill()  # SIGKILL to the driver alone: the local Ray it started must stop with it (orchestrator.watchdog)
        proc.wait()
        _, alive = psutil.wait_procs(ray_processes, timeout=30)
        assert not alive, f"outlived their driver: {[p.info if hasattr(p, 'info') else p.pid for p in alive]}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = progress(line + proc.stdout.read(), 8)  # everything the killed driver printed
    assert 1 <= len(first) < 8, f"the kill should land mid-grid: {first}"
    assert not (tmp_path / "out" / "resume" / "trials.parquet").exists()
    stored = pd.concat([pd.read_parquet(p) for p in parts.glob("*.parquet")])
    assert 1 <= len(stored) <= len(first)

    # a changed config is refused before Ray starts, in one line naming what changed (in this process: nothing starts)
    assert cli.main(command[3:] + ["--resume", "--set", "finetune.steps=41"]) == 2
    refused = capsys.readouterr().err.strip().splitlines()
    assert len(refused) == 1 and "changed since the experiment started (finetune.steps)" in refused[0]

    # one that only adds cells (a third seed) resumes: the stored rows stay, everything else runs once (in this
    # process, on the module's Ray: what is tested is the resume, not a second start of a local Ray)
    code = cli.main(command[3:] + ["--resume", "--set", "seeds=[0,1,2]", "--set", "max_concurrent_trials=2"])
    out = capsys.readouterr()  # how many at once is not a cell
    assert code == 0, out.out + out.err
    second = progress(out.out, 12)
    assert len(second) == 12 - len(stored) and second[-1].startswith("[12/12]")
    trials = pd.read_parquet(tmp_path / "out" / "resume" / "trials.parquet")
    assert len(trials) == 12 and trials.trial_id.is_unique and set(trials.status) == {"ok"}
    kept = trials.set_index("trial_id").loc[stored.trial_id]
    assert (kept.run_id.values == stored.run_id.values).all()  # the finished rows are the killed run's, not re-runs
    assert not (tmp_path / "out" / "resume" / "parts").exists()


def test_sigterm_stops_like_ctrl_c_writes_every_finished_row_and_a_second_run_is_locked_out(ray_cluster, tiny_gpt2,
                                                                                            tiny_corpus, tmp_path, capsys):
    import ray

    from orchestrator import cli

    # Tune's own concurrency: every cell is a trial from the start, most of them pending when the signal comes
    raw = experiment("term", tmp_path / "out", [tiny_gpt2], tiny_corpus, max_concurrent_trials=None,
                     seeds=[0, 1, 2], finetune={"steps": 40, "warmup_steps": 0, "eval_every": 40})
    config = tmp_path / "term.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # a driver on the module's Ray (the SIGKILL test covers a driver's own local Ray): the signal is what is tested
    address = ray.get_runtime_context().gcs_address
    command = [sys.executable, "-m", "orchestrator.cli", "run", str(config), "--no-analyze", "--address", address]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        for line in proc.stdout:
            if line.startswith("[1/12]"):
                break
        # the same output folder, while the first run holds it: refused before Ray starts
        assert cli.main(["run", str(config), "--no-analyze"]) == 2
        refused = capsys.readouterr().err.strip().splitlines()
        assert len(refused) == 1 and "another run" in refused[0]
        proc.send_signal(signal.SIGTERM)  # the driver only, as a batch scheduler does
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr
    assert "Could not fetch metrics" not in stderr  # Tune's line per unstarted trial: our summary says it once
    done = [l for l in (line + stdout).splitlines() if l.startswith("[") and "/12]" in l and "FAILED" not in l]
    assert f"run {config} --address {address} --resume" in stdout, stdout  # how to go on, on the same cluster
    trials = pd.read_parquet(tmp_path / "out" / "term" / "trials.parquet")
    assert 1 <= len(trials) == len(done) < 12 and set(trials.status) == {"ok"}  # every finished row, no other
    assert not (tmp_path / "out" / "term" / ".sentinel.lock").exists()


@pytest.mark.parametrize("fraction, at_once", [(0.5, 4)])  # 0.25 -> 8 is the same code path, 8 actors to start
def test_fractional_gpus_pack_trials_on_two_logical_gpus(ray_cluster, tiny_gpt2, tiny_corpus, tmp_path, fraction, at_once):
    """resources.gpu 0.5 runs 4 trials at once on 2 GPUs, 0.25 runs 8; each sees the GPU Ray gave it."""
    import ray

    @ray.remote(num_cpus=0)
    class Barrier:
        """Counts trials inside the trainable at once; each waits until `n` are in or a timeout passes."""

        def __init__(self) -> None:
            self.inside = self.peak = 0

        def enter(self) -> None:
            self.inside += 1
            self.peak = max(self.peak, self.inside)

        def leave(self) -> None:
            self.inside -= 1

        def get_peak(self) -> int:
            return self.peak

    barrier = Barrier.options(name=f"gpu-barrier-{at_once}", namespace="tests").remote()

    def concurrent_trainable(config):
        handle = ray.get_actor(f"gpu-barrier-{at_once}", namespace="tests")
        ray.get(handle.enter.remote())
        deadline = time.time() + 60
        while ray.get(handle.get_peak.remote()) < at_once and time.time() < deadline:
            time.sleep(0.1)
        try:
            trainable(config)
        finally:
            ray.get(handle.leave.remote())

    seeds = list(range(at_once // 4))  # 4 cells per seed
    raw = experiment(f"gpus{at_once}", tmp_path, [tiny_gpt2], tiny_corpus, device="auto", gpu_dry_run=True,
                     seeds=seeds, resources={"cpu": 2 / at_once, "gpu": fraction}, max_concurrent_trials=None)
    summary = run_experiment(parse_spec(raw), trainable_fn=concurrent_trainable, stream=io.StringIO())
    assert ray.get(barrier.get_peak.remote()) == at_once
    trials = pd.read_parquet(summary.written["trials"])
    assert len(trials) == at_once and set(trials.status) == {"ok"}
    assert (trials.groupby("gpu_ids").size() == at_once // 2).all()  # each logical GPU took its share
    assert (trials.device_assigned == "cuda").all() and (trials.device == "cpu").all()
    assert set(trials.gpu_ids) == {"0", "1"} and (trials.cuda_visible_devices == trials.gpu_ids).all()


def test_speed_lock_waits_for_stages_in_progress_and_holds_new_ones_back(ray_cluster):
    """The per-node stage lock behind quiet speed measurements (orchestrator.shared.SharedStore)."""
    import ray

    from orchestrator.shared import SharedStore

    store = SharedStore.remote()
    call = lambda method, *args: ray.get(getattr(store, method).remote(*args))  # noqa: E731
    assert call("enter", "n1", "a", False) and call("enter", "n1", "b", False)
    assert not call("enter", "n1", "speed", True)  # two stages in progress on n1
    assert not call("enter", "n1", "c", False)  # a waiting measurement goes before new stages
    assert call("enter", "n2", "c", False)  # another node is not held back
    call("leave", "n1", "a")
    assert not call("enter", "n1", "speed", True)
    call("leave", "n1", "b")
    assert call("enter", "n1", "speed", True)
    assert not call("enter", "n1", "a", False)  # nothing computes on n1 while it measures
    call("leave", "n1", "speed")
    assert call("enter", "n1", "a", False) and call("enter", "n1", "a", False)  # re-entrant
    call("forget", "a")  # the trial ended: all its holds go
    assert call("enter", "n1", "speed", True)


def test_a_measurement_that_cannot_get_quiet_gives_up_and_says_so(ray_cluster):
    import ray

    from orchestrator.shared import RayShared, start_store

    store = start_store("quiet-timeout")
    node = ray.get_runtime_context().get_node_id()
    assert ray.get(store.enter.remote(node, "dead-trial", False))  # a trial that died inside a stage
    shared = RayShared("quiet-timeout", owner="measurer", quiet_timeout_s=0.5)
    started = time.time()
    with shared.exclusive() as quiet:
        assert quiet is False and 0.5 <= time.time() - started < 5
    with shared.working():  # the give-up left the queue: stages are not held back by it
        pass
    shared.close()


def test_a_local_run_starts_its_own_ray_whatever_a_stale_cluster_file_names(tmp_path):
    """A crashed head leaves ray_current_cluster in Ray's temp folder; ray.init() without an address reads it and
    waits on the dead address (or joins a live stranger). A local run starts a Ray of its own."""
    import shutil
    import tempfile

    ray_tmp = Path(tempfile.mkdtemp(prefix="sbr-", dir="/tmp"))  # Ray's socket paths must stay under 108 bytes
    (ray_tmp / "ray").mkdir(parents=True)
    (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")  # nothing listens there
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update(TMPDIR=str(ray_tmp), RAY_TMPDIR=str(ray_tmp), HOME=str(tmp_path))
    code = ("import ray; from orchestrator.ray_session import start_ray; start_ray(num_cpus=1); "
            "print(ray.get_runtime_context().gcs_address); ray.shutdown()")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] != "127.0.0.1:9"
