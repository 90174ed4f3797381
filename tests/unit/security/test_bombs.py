"""Small files that would take the machine: every read is bounded by what the file can hold, and a file that is not a
regular file is refused before it is read. Each goes through the real CLI: one line, exit 2, nothing written, fast,
and no memory to speak of."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]


def gguf(entries: list[bytes], tensors: int = 0, kv_count: int | None = None) -> bytes:
    header = b"GGUF" + struct.pack("<IQQ", 3, tensors, len(entries) if kv_count is None else kv_count)
    return header + b"".join(entries)


def string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def kv_string(key: bytes, value: bytes) -> bytes:
    return string(key) + struct.pack("<I", 8) + string(value)


def kv_u32(key: bytes, value: int) -> bytes:
    return string(key) + struct.pack("<I", 4) + struct.pack("<I", value)


BOMBS = {
    # 105 bytes declaring an array of 2**62 uint8: gguf's reader grew to 4 GB in 26 s
    "array.gguf": gguf([kv_string(b"general.architecture", b"llama"),
                        string(b"tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 0, 2**62)]),
    # a header claiming 100,000 layers and no tensors to hold them
    "layers.gguf": gguf([kv_string(b"general.architecture", b"llama"), kv_u32(b"llama.block_count", 100_000)]),
    # a string longer than the file
    "string.gguf": gguf([string(b"general.architecture") + struct.pack("<IQ", 8, 2**40)]),
    # more metadata entries than bytes
    "entries.gguf": gguf([], kv_count=2**50),
}


def write_config(tmp_path: Path, **raw) -> Path:
    config = {"experiment": "t", "models": ["sentinel/tiny-gpt2"], "strategies": ["random"], "levels": [0.5],
              "data": {"source": "gutenberg", "seq_len": 32}, "output": str(tmp_path / "out"), "device": "cpu", **raw}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(tmp_path: Path, capsys, **raw) -> tuple[int, str]:
    """`sentinel-bench run` in this process (the checks run before any read that could grow)."""
    from orchestrator import cli

    code = cli.main(["run", str(write_config(tmp_path, **raw))])
    return code, capsys.readouterr().err.strip()


def test_the_array_bomb_in_a_process_capped_at_4_gb(tmp_path):
    """The one that grew a reader to 4 GB, run as a user would, under an address-space cap no bomb fits in."""
    path = tmp_path / "array.gguf"
    path.write_bytes(BOMBS["array.gguf"])
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30)); "
    done = subprocess.run([sys.executable, "-c", limit + "import sys; from orchestrator.cli import main; "
                           f"sys.exit(main(['run', {str(write_config(tmp_path, models=[str(path)]))!r}]))"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 2 and "not a usable GGUF file" in done.stderr, done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_a_gguf_header_that_claims_more_than_its_file_is_refused_before_reading(tmp_path, capsys, name):
    path = tmp_path / name
    path.write_bytes(BOMBS[name])
    started = time.monotonic()
    code, err = run_cli(tmp_path, capsys, models=[str(path)])
    assert code == 2 and len(err.splitlines()) == 1 and "not a usable GGUF file" in err, err
    assert time.monotonic() - started < 10 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "huge"])
def test_a_text_source_that_is_not_a_bounded_regular_file_is_refused(tmp_path, capsys, kind):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("a line of text\n" * 500)
    hostile = folder / "b.txt"
    if kind == "fifo":
        os.mkfifo(hostile)  # reading it would wait for a writer forever
    elif kind == "dev-zero":
        hostile.symlink_to("/dev/zero")  # reading it would never end
    else:
        with open(hostile, "wb") as f:  # a sparse 200 MB one-line file
            f.truncate(200 * 2**20)
    code, line = run_cli(tmp_path, capsys, data={"source": str(folder), "seq_len": 32})
    assert code == 2, line
    assert len(line.splitlines()) == 1 and "error: data.source:" in line and "file 'b.txt'" in line
    assert ("not a regular file" in line) if kind != "huge" else ("over the 64 MiB a text file may hold" in line)
    assert not (tmp_path / "out").exists()
