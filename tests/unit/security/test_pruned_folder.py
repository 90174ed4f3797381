"""A pruned model folder is untrusted: load_pruned checks every id of its sidecar against the model, reads shards only
by bare names inside the folder, and refuses what is not a regular file, each in one ValueError line."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import sentinel
from sentinel.models.io import SIDECAR, load_pruned, save_pruned

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def pruned_folder(tmp_path_factory) -> Path:
    model, _ = sentinel.load_model("sentinel/tiny-gpt2", device="cpu")
    sentinel.prune_heads(model, {0: [1], 1: [0, 2]})
    return save_pruned(model, tmp_path_factory.mktemp("pruned") / "model")


def copy_of(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(folder, target)
    return target


def edit_sidecar(folder: Path, change) -> None:
    sidecar = json.loads((folder / SIDECAR).read_text())
    change(sidecar)
    (folder / SIDECAR).write_text(json.dumps(sidecar))


def test_the_folder_as_saved_loads(pruned_folder):
    layout = sentinel.head_layout(load_pruned(pruned_folder))
    assert layout.heads[1] == layout.heads[0] - 1  # 1 head removed from layer 0, 2 from layer 1


@pytest.mark.parametrize("change, message", [
    (lambda s: s["layers"].__setitem__("99", {"heads": [0], "kv_heads": [0]}), r"layers\['99'\] is not a layer"),
    (lambda s: s["layers"]["0"].__setitem__("heads", [0, 0]), r"layers\['0'\].heads must be distinct"),
    (lambda s: s["layers"]["0"].__setitem__("heads", [1000]), r"layers\['0'\].heads must be distinct heads ids"),
    (lambda s: s["layers"]["0"].__setitem__("heads", ["a"]), r"layers\['0'\].heads"),
    (lambda s: s["layers"]["0"].__setitem__("kv_heads", None), r"layers\['0'\].kv_heads"),
    (lambda s: s.__setitem__("layers", []), "not a mapping with a `layers` mapping"),
    (lambda s: s["layers"].__setitem__("-1", {"heads": [0], "kv_heads": [0]}), r"layers\['-1'\] is not a layer"),
    (lambda s: s.__setitem__("dense", {"heads": -3}), "dense must be a mapping of positive head counts"),
])
def test_sidecar_ids_are_checked_against_the_model(pruned_folder, tmp_path, change, message):
    folder = copy_of(pruned_folder, tmp_path)
    edit_sidecar(folder, change)
    with pytest.raises(ValueError, match=message):
        load_pruned(folder)


@pytest.mark.parametrize("shard", ["/etc/passwd", "../outside.safetensors", "sub/../../x.safetensors"])
def test_shard_names_are_bare_file_names_inside_the_folder(pruned_folder, tmp_path, shard):
    folder = copy_of(pruned_folder, tmp_path)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": shard}}))
    with pytest.raises(ValueError, match="is not a file name inside the checkpoint folder"):
        load_pruned(folder)


def test_weights_that_are_a_fifo_are_refused_not_read(pruned_folder, tmp_path):
    folder = copy_of(pruned_folder, tmp_path)
    (folder / "model.safetensors").unlink()
    os.mkfifo(folder / "model.safetensors")  # a read would wait for a writer forever
    with pytest.raises(ValueError, match="not a regular file"):
        load_pruned(folder)


def test_a_sidecar_that_is_not_json_is_one_line(pruned_folder, tmp_path):
    folder = copy_of(pruned_folder, tmp_path)
    (folder / SIDECAR).write_bytes(b"\xff\xfe{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_pruned(folder)
