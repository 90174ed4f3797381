"""Nothing already written is lost: --overwrite deletes only what this experiment wrote, one run per output
folder, a failed final write keeps the rows, result files follow the umask."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator import cli
from orchestrator.results import write_part
from orchestrator.outputs import LOCK_FILE, SPEC_FILE, output_lock, prepare
from orchestrator.spec import SpecError, parse_spec
from orchestrator.storage import write_bytes
from sentinel.trial import failed_record


def raw(name: str, output: Path, **extra) -> dict:
    out = {"experiment": name, "models": ["sentinel/tiny-gpt2"], "strategies": ["random"], "levels": [0.5],
           "seeds": [0, 1], "data": {"source": "gutenberg", "seq_len": 32}, "device": "cpu", "output": str(output)}
    out.update(extra)
    return out


def finished(spec, out: Path) -> None:
    """Rows for every cell of `spec` (failed rows: they count as done) streamed as a part, as a run leaves them."""
    write_part(str(out), [failed_record(c.to_dict(), "x") for c in spec.cells], "run-000000")


def test_overwrite_never_deletes_another_experiments_results(tmp_path):
    # A's output folder is where B (also named "A", output elsewhere) keeps its Tune state
    a = parse_spec(raw("A", tmp_path / "res"))
    prepare(a, resume=False, overwrite=False, run_id="A-00000001")
    finished(a, Path(a.output_dir))
    write_bytes(f"{a.output_dir}/trials.parquet", b"A's table")
    before = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "res").rglob("*"))

    b = parse_spec(raw("A", tmp_path / "other", storage_path=str(tmp_path / "res")))
    assert b.tune_location == (str(tmp_path / "res"), "A")  # Tune's folder is A's output folder
    prepare(b, resume=False, overwrite=False, run_id="A-0000000b")
    (tmp_path / "res" / "A" / "A-0000000b").mkdir()  # B's own Tune state inside it
    prepare(b, resume=False, overwrite=True, run_id="A-0000000c")
    after = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "res").rglob("*"))
    assert after == [p for p in before]  # A intact; B's run folder gone
    assert (tmp_path / "res" / "A" / "trials.parquet").read_bytes() == b"A's table"
    assert json.loads((tmp_path / "other" / "A" / SPEC_FILE).read_text())["runs"] == ["A-0000000c"]


def test_overwrite_of_an_outer_experiment_keeps_one_that_lives_in_its_parts_folder(tmp_path):
    """Round three's finding: experiment `parts` with output `out/fz`, then experiment `fz` with output `out` and
    --overwrite deleted `out/fz/parts` whole, i.e. all of `parts`. Only fz's own manifest entries go now."""
    inner = parse_spec(raw("parts", tmp_path / "out" / "fz"))
    prepare(inner, resume=False, overwrite=False, run_id="parts-00000001")
    write_part(inner.output_dir, [failed_record(c.to_dict(), "x") for c in inner.cells], "parts-00000001-000000")
    write_bytes(f"{inner.output_dir}/trials.parquet", b"parts' table")
    outer = parse_spec(raw("fz", tmp_path / "out"))
    assert Path(inner.output_dir) == Path(outer.output_dir) / "parts"
    prepare(outer, resume=False, overwrite=False, run_id="fz-00000001")
    write_part(outer.output_dir, [failed_record(c.to_dict(), "x") for c in outer.cells], "fz-00000001-000000")
    inner_files = sorted(p.relative_to(tmp_path) for p in Path(inner.output_dir).rglob("*")
                         if p.is_file() and not p.name.startswith("fz-"))  # fz's own part lands inside parts' folder
    planted = tmp_path / "elsewhere"
    planted.mkdir()
    (planted / "fz-00000001-000001.parquet").write_bytes(b"not fz's")
    os.symlink(planted, Path(outer.output_dir) / "parts" / "metrics")  # a link where a table's parts go
    prepare(outer, resume=False, overwrite=True, run_id="fz-00000002")
    assert sorted(p.relative_to(tmp_path) for p in Path(inner.output_dir).rglob("*") if p.is_file()) == inner_files
    assert (Path(inner.output_dir) / "trials.parquet").read_bytes() == b"parts' table"
    assert not list((Path(outer.output_dir) / "parts" / "trials").glob("fz-*"))  # fz's own part: gone
    assert (planted / "fz-00000001-000001.parquet").read_bytes() == b"not fz's"  # never through the link


def test_overwrite_refuses_tables_no_run_recorded(tmp_path):
    spec = parse_spec(raw("x", tmp_path))
    finished(spec, Path(spec.output_dir))  # rows, but no saved spec: not ours to delete
    with pytest.raises(SpecError, match=r"^--overwrite: .* no sentinel-bench run recorded"):
        prepare(spec, resume=False, overwrite=True, run_id="x-00000001")
    assert list((Path(spec.output_dir) / "parts" / "trials").glob("*.parquet"))


def test_a_second_run_into_the_same_folder_is_refused_and_a_stale_lock_taken_over(tmp_path):
    out = str(tmp_path / "exp")
    with output_lock(out):
        with pytest.raises(SpecError, match=rf"^output: another run \(pid {os.getpid()} on "):
            with output_lock(out):
                pass
    assert not (tmp_path / "exp").exists()  # made for the lock, left empty: removed
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / LOCK_FILE).write_text(json.dumps({"pid": int(gone.stdout), "host": os.uname().nodename}))
    with output_lock(out):  # its process is gone
        assert json.loads((tmp_path / "exp" / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_the_cli_refuses_a_run_into_a_locked_folder_before_ray_starts(tmp_path, capsys):
    import ray

    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(raw("x", tmp_path / "out")))
    with output_lock(str(tmp_path / "out" / "x")):
        assert cli.main(["run", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another run" in err[0] and not ray.is_initialized()
    assert not (tmp_path / "out" / "x" / SPEC_FILE).exists()


def test_a_failed_final_write_is_one_line_exit_1_and_the_rows_stay_in_parts(tmp_path, capsys):
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(raw("x", tmp_path / "out")))
    spec = parse_spec(raw("x", tmp_path / "out"))
    prepare(spec, resume=False, overwrite=False, run_id="x-00000001")
    finished(spec, Path(spec.output_dir))
    (Path(spec.output_dir) / "trials.parquet").mkdir()  # the table cannot be written there
    code = cli.main(["run", str(config), "--resume", "--no-analyze"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert "could not write the tables" in err[0] and "parts" in err[0] and "--resume" in err[0]
    assert len(list((Path(spec.output_dir) / "parts" / "trials").glob("*.parquet"))) == 1


def test_result_files_take_the_umasks_mode_not_0600(tmp_path):
    saved = os.umask(0o022)
    try:
        write_bytes(str(tmp_path / "a.parquet"), b"x")
        os.umask(0o007)
        write_bytes(str(tmp_path / "b.parquet"), b"x")
    finally:
        os.umask(saved)
    assert stat.S_IMODE((tmp_path / "a.parquet").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.parquet").stat().st_mode) == 0o660


@pytest.mark.parametrize("pid", [0, -1, 10**12])
def test_a_lock_naming_a_pid_no_process_can_have_is_stale(tmp_path, pid):
    out = tmp_path / "exp"
    out.mkdir()
    (out / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": os.uname().nodename}))
    with output_lock(str(out)):  # taken over, no traceback (pid 0 looked alive: os.kill(0, 0) hits our own group)
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_lock_that_is_a_folder_is_one_line_before_ray(tmp_path, capsys):
    import ray

    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(raw("x", tmp_path / "out")))
    (tmp_path / "out" / "x" / LOCK_FILE).mkdir(parents=True)
    assert cli.main(["run", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a folder or a link where this run's lock file goes" in err[0]
    assert not ray.is_initialized()


def test_a_local_ray_auth_token_is_readable_by_its_owner_only(tmp_path, monkeypatch):
    from orchestrator import ray_session

    token = tmp_path / "auth_token"
    token.write_text("secret")
    token.chmod(0o644)  # as Ray writes it
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    ray_session._private_token()
    assert token.stat().st_mode & 0o777 == 0o600


def test_cloze_items_leave_no_folder_per_process(tmp_path, monkeypatch):
    import tempfile

    from sentinel import zero_shot

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    zero_shot._cloze_file.cache_clear()
    first = zero_shot._cloze_file()
    zero_shot._cloze_file.cache_clear()  # a second worker process
    assert zero_shot._cloze_file() == first
    assert [p.name for p in tmp_path.iterdir()] == [f"sentinel-cloze-{os.getuid()}"]
    zero_shot._cloze_file.cache_clear()


@pytest.mark.parametrize("link", ["dangling", "loop"])
def test_an_output_that_is_a_link_to_nothing_is_one_line_before_ray(tmp_path, capsys, link):
    import ray

    out = tmp_path / "out"
    if link == "dangling":
        out.symlink_to(tmp_path / "gone")
    else:
        out.symlink_to(tmp_path / "other")
        (tmp_path / "other").symlink_to(out)
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(raw("x", out / "deeper")))
    assert cli.main(["run", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a link to nothing (dangling, or a loop)" in err[0], err
    assert not ray.is_initialized() and not (tmp_path / "gone").exists()


def test_a_full_disk_when_the_lock_is_written_is_one_line_and_leaves_no_lock(tmp_path, monkeypatch):
    """The lock's bytes go to /dev/full, whose every write fails with ENOSPC: the kernel's own full disk."""
    import orchestrator.outputs as outputs

    def full(fd, mode="r", *args, **kwargs):
        os.close(fd)
        return open("/dev/full", mode)

    monkeypatch.setattr(outputs.os, "fdopen", full)
    out = tmp_path / "fresh"
    with pytest.raises(SpecError, match=r"^output: cannot write to .* \(No space left on device\); nothing was started$"):
        with output_lock(str(out)):
            pass
    assert not out.exists()  # the folder it created, and the empty lock in it, are gone


def test_a_saved_spec_nested_past_pythons_stack_is_one_line(tmp_path):
    from orchestrator.outputs import _saved_spec

    with pytest.raises(SpecError, match="is not a saved experiment spec"):
        _saved_spec("[" * 100_000 + "]" * 100_000, str(tmp_path))
