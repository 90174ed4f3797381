"""One way to read an untrusted file (sentinel.files.read_regular): a FIFO, a device or a link to /dev/zero where a
saved spec, a lock, a config or an analysed config.yaml belongs is one line, never a hang or an endless read.
Each case runs under an alarm: a regression hangs no suite."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import yaml

from orchestrator import cli
from orchestrator.outputs import LOCK_FILE, SPEC_FILE, output_lock
from orchestrator.spec import SpecError
from sentinel.files import UnreadableFile, read_regular
from tests.unit.security.test_output_safety import raw


@pytest.fixture(autouse=True)
def alarm():
    def hung(*_):
        raise TimeoutError("a read hung")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_read_regular_refuses_fifos_devices_and_oversized_files(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "zero").symlink_to("/dev/zero")
    (tmp_path / "big").write_bytes(b"x" * 101)
    for name, match in (("fifo", "not a regular file"), ("zero", "not a regular file"), ("big", "at most 100")):
        with pytest.raises(UnreadableFile, match=match):
            read_regular(tmp_path / name, 100)
    assert read_regular(tmp_path / "big", 101) == b"x" * 101


@pytest.mark.parametrize("planted", [SPEC_FILE, LOCK_FILE])
def test_a_fifo_where_the_saved_spec_or_the_lock_goes_is_one_line(tmp_path, capsys, planted):
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(raw("x", tmp_path / "out")))
    (tmp_path / "out" / "x").mkdir(parents=True)
    os.mkfifo(tmp_path / "out" / "x" / planted)
    assert cli.main(["run", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and planted in err


def test_a_fifo_lock_is_refused_by_the_lock_itself(tmp_path):
    (tmp_path / "exp").mkdir()
    os.mkfifo(tmp_path / "exp" / LOCK_FILE)
    with pytest.raises(SpecError, match="not a lock file"):
        with output_lock(str(tmp_path / "exp")):
            pass


def test_a_fifo_config_is_one_line(tmp_path, capsys):
    os.mkfifo(tmp_path / "exp.yaml")
    assert cli.main(["run", str(tmp_path / "exp.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a regular file" in err


def test_an_analysed_config_yaml_that_is_a_fifo_is_skipped_as_metadata(results_dir_copy):
    from orchestrator.analyze import load

    (results_dir_copy / "config.yaml").unlink(missing_ok=True)
    os.mkfifo(results_dir_copy / "config.yaml")
    assert load(str(results_dir_copy)).configs == []


@pytest.fixture
def results_dir_copy(tmp_path) -> Path:
    """A results folder of real Parquet tables (the published default run's)."""
    import shutil

    source = Path(__file__).resolve().parents[3] / "docs" / "data" / "default"
    target = tmp_path / "results"
    target.mkdir()
    for table in ("trials", "curves", "heads", "metrics"):
        shutil.copyfile(source / f"{table}.parquet", target / f"{table}.parquet")
    return target
