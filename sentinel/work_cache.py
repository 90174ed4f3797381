"""Work that is the same for every run, kept on disk under a key of everything it depends on.

Two kinds, both computed by the pipeline and otherwise paid again by every run (every worker process, for the first):
- a GGUF checkpoint's conversion to a plain transformers folder (dequantised weights as safetensors, config,
  tokenizer): transformers parses SmolLM2's GGUF three times, 20-30 s a process, to load it;
- a dense model's metric on the whole eval split (`data.whole_split_reference`): 100 s of arithmetic for SmolLM2.

A value's key holds the bytes it came from (the GGUF file's digest, the dense weights' digest), the protocol (the
task's full_key), the device and the versions of torch, transformers and gguf: a new version or another file misses
and is computed again. Values are looked up in SENTINEL_CACHE (default ~/.cache/sentinel-bench/work), then in the
values shipped with the package (sentinel/reference/work_cache.json, written by `python scripts/seed_work_cache.py`
from a real run of the pipeline's own code; each says where and when it was computed). A shipped or cached metric is
what this machine computes up to floating-point order (another CPU's kernels may differ in the 7th digit).

Entries are written atomically (sentinel.files) and read only as regular files of bounded size; a converted model
is read as safetensors with remote code off, so nothing in the cache can run code. SENTINEL_CACHE=off disables it.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from sentinel.files import UnreadableFile, read_regular, write_file

SHIPPED = Path(__file__).resolve().parent / "reference" / "work_cache.json"
MAX_ENTRY_BYTES = 1 << 20


def cache_dir() -> Path | None:
    """Where entries live (created on first write), or None when SENTINEL_CACHE=off."""
    configured = os.environ.get("SENTINEL_CACHE", "")
    if configured.lower() == "off":
        return None
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "sentinel-bench" / "work"


def versions() -> dict[str, str]:
    """The library versions a cached value depends on."""
    import torch
    import transformers

    try:
        import gguf

        gguf_version = getattr(gguf, "__version__", "") or _distribution_version("gguf")
    except ImportError:
        gguf_version = ""
    return {"torch": torch.__version__, "transformers": transformers.__version__, "gguf": gguf_version}


def _distribution_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return ""


def key_of(kind: str, **parts: Any) -> str:
    """`kind/<digest>` of the parts and the library versions."""
    text = json.dumps({"kind": kind, **parts, **versions()}, sort_keys=True, default=str)
    return f"{kind}/{hashlib.sha256(text.encode()).hexdigest()[:32]}"


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (a 100 MB GGUF: about 0.1 s)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_digest(model: Any) -> str:
    """sha256 of a model's parameters and buffers (names, dtypes, shapes, bytes): the weights a metric was computed
    on, whatever file they came from."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _entry_path(root: Path, key: str) -> Path:
    kind, digest = key.split("/", 1)
    return root / kind / f"{digest}.json"


def _shipped() -> dict[str, Any]:
    try:
        return json.loads(read_regular(SHIPPED, 16 * MAX_ENTRY_BYTES))
    except (FileNotFoundError, UnreadableFile, ValueError):
        return {}


def lookup(key: str) -> tuple[Any, dict] | None:
    """(value, provenance) of a stored entry, the user's cache first, then the shipped values; None if absent."""
    root = cache_dir()
    if root is None:
        return None
    try:
        entry = json.loads(read_regular(_entry_path(root, key), MAX_ENTRY_BYTES))
        return entry["value"], {**entry["provenance"], "from": "cache"}
    except (FileNotFoundError, UnreadableFile, ValueError, KeyError, TypeError):
        pass
    entry = _shipped().get(key)
    if isinstance(entry, dict) and "value" in entry:
        return entry["value"], {**entry.get("provenance", {}), "from": "shipped"}
    return None


def store(key: str, value: Any) -> dict:
    """Writes an entry (atomically; a failure to write only costs the next run the computation). Returns its
    provenance."""
    provenance = {"computed_at": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {_cpu_model()}",
                  **versions()}
    root = cache_dir()
    if root is not None:
        path = _entry_path(root, key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_file(path, json.dumps({"key": key, "value": value, "provenance": provenance}).encode())
        except OSError:
            pass
    return provenance


def get_or_compute(key: str, compute: Callable[[], Any]) -> tuple[Any, dict]:
    """The stored value, or `compute()` stored now. Returns (value, provenance with "from": cache|shipped|computed)."""
    found = lookup(key)
    if found is not None:
        return found
    value = compute()
    return value, {**store(key, value), "from": "computed"}


def _cpu_model() -> str:
    try:
        text = read_regular("/proc/cpuinfo", 1 << 22).decode(errors="replace")
    except (OSError, UnreadableFile):
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")


def converted_folder(key: str) -> Path | None:
    """The folder of a stored conversion (holds `complete` once whole), or None."""
    root = cache_dir()
    if root is None:
        return None
    folder = _entry_path(root, key).with_suffix("")
    marker = folder / "complete"
    return folder if marker.is_file() and not folder.is_symlink() else None


def store_converted(key: str, write: Callable[[Path], None]) -> None:
    """Writes a conversion: `write(folder)` into a fresh temp folder beside the entry, renamed into place whole (two
    processes converting at once: the second rename finds the first's folder and its copy is dropped)."""
    root = cache_dir()
    if root is None:
        return
    target = _entry_path(root, key).with_suffix("")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    except OSError:
        return
    try:
        write(staging)
        (staging / "complete").write_text(key + "\n")
        os.rename(staging, target)
    except OSError:
        pass
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
