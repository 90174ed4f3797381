"""One way to write a file (sentinel.files.atomic_output): a temp file created exclusively in the target's folder,
renamed over a regular file or nothing. A planted link is never written through; a device, FIFO or folder at the
target is refused in one line; an interrupted write leaves neither a temp file nor a changed target."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator.storage import write_bytes
from sentinel.export import export_gguf
from sentinel.files import UnsafeTarget, atomic_output, write_file
from sentinel.models.loading import load_model


def test_a_link_planted_at_the_former_temp_name_is_not_followed(tmp_path):
    """Round three: a link at d/.m.gguf.partial made export overwrite the link's target and exit 0."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / ".m.gguf.partial").symlink_to(victim)
    model, tokenizer = load_model("sentinel/tiny-llama")
    export_gguf(model, tokenizer, tmp_path / "m.gguf", dtype="f32")
    assert victim.read_text() == "precious"
    assert (tmp_path / "m.gguf").read_bytes()[:4] == b"GGUF"


@pytest.mark.parametrize("writer", [write_file, write_bytes])
def test_a_link_device_fifo_or_folder_at_the_target_is_refused(tmp_path, writer):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "link").symlink_to(victim)
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    for name in ("link", "fifo", "folder"):
        with pytest.raises(UnsafeTarget, match="not writing through it|not a regular file"):
            writer(str(tmp_path / name), b"x")
    with pytest.raises(UnsafeTarget, match="not a regular file"):
        write_file("/dev/null", b"x")  # as root, os.replace would swap the device node for a file
    assert victim.read_text() == "precious" and Path("/dev/null").is_char_device()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "folder", "link", "victim.txt"]  # no temp file left


def test_an_interrupted_write_leaves_the_target_and_no_temp_file(tmp_path):
    target = tmp_path / "table.parquet"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["table.parquet"]


def test_export_to_a_device_with_overwrite_is_one_line_and_exit_2(tmp_path, capsys):
    assert cli.main(["export", "sentinel/tiny-llama", "--out", "/dev/null", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--out" in err and "not a regular file" in err
    assert Path("/dev/null").is_char_device()


@pytest.mark.slow
def test_sigterm_during_an_export_leaves_no_partial_file(tmp_path):
    """Round three: export had no handler, and a SIGTERM left its partial file behind."""
    import signal
    import subprocess
    import sys
    import time

    import transformers

    _, tokenizer = load_model("sentinel/tiny-llama")  # a Llama of ~40M parameters: its f32 export takes a few seconds
    config = transformers.LlamaConfig(hidden_size=512, intermediate_size=1536, num_hidden_layers=10,
                                      num_attention_heads=8, num_key_value_heads=4, vocab_size=len(tokenizer))
    folder = tmp_path / "model"
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "out" / "m.gguf"
    out.parent.mkdir()
    process = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "export", str(folder),
                                "--out", str(out), "--dtype", "f32"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.parent.glob(".m.gguf.*.partial")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the export ended before it could be interrupted"
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=60)[1]
    assert process.returncode == 128 + signal.SIGTERM and "interrupted" in stderr
    assert list(out.parent.iterdir()) == []  # neither the file nor its partial
