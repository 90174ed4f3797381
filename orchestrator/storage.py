"""Where results live: local paths or object-store URIs (s3://, gs://, ...), read and written through pyarrow.fs."""
from __future__ import annotations

import os
import tempfile
from urllib.parse import urlparse

from sentinel.files import read_regular, write_file

REMOTE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss")  # storage handled by pyarrow.fs


def is_uri(path: str) -> bool:
    """Whether `path` names remote storage (s3://bucket/...) rather than a local path."""
    return urlparse(path).scheme in REMOTE_SCHEMES


def absolute(path: str) -> str:
    return path if is_uri(path) else os.path.abspath(os.path.expanduser(path))


def join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name if is_uri(base) else os.path.join(base, name)


def filesystem(path: str):
    """(pyarrow FileSystem, path inside it) for a local path or a URI."""
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(path) if is_uri(path) else (pafs.LocalFileSystem(), path.removeprefix("file://"))


MAX_TEXT_BYTES = 64 << 20  # a saved spec of 10,000 cells is a few MB


def read_text(path: str, max_bytes: int = MAX_TEXT_BYTES) -> str | None:
    """The file's text, or None if it does not exist. A local one must be a regular file of at most max_bytes
    (sentinel.files.read_regular: a FIFO or a link to /dev/zero is UnreadableFile, never a hang)."""
    if not is_uri(path):
        try:
            return read_regular(path.removeprefix("file://"), max_bytes).decode()
        except FileNotFoundError:
            return None
    fs, inner = filesystem(path)
    try:
        with fs.open_input_stream(inner) as f:
            return f.read().decode()
    except (FileNotFoundError, OSError):
        return None


def unwritable(path: str) -> str | None:
    """Why a local folder cannot be created and written (None if it can), found by trying: permissions do not
    tell everything (/proc, read-only mounts). The probe leaves nothing behind."""
    target = os.path.abspath(os.path.expanduser(path.removeprefix("file://")))
    if os.path.exists(target) and not os.path.isdir(target):
        return f"{target!r} exists and is not a folder"
    probe = target
    while not os.path.exists(probe):
        if os.path.islink(probe):  # exists() follows links: a dangling one, or a loop, looks like nothing there
            return f"{probe!r} is a link to nothing (dangling, or a loop)"
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        return f"{probe!r} is a file"
    try:
        tempfile.TemporaryDirectory(dir=probe, prefix=".sentinel-probe-").cleanup()
    except OSError as exc:
        return f"{probe!r}: {exc.strerror or exc}"
    return None


def write_bytes(path: str, data: bytes) -> None:
    """Writes a file atomically: an exclusive temp file renamed over the target locally (a link, device or FIFO there
    is refused: sentinel.files.UnsafeTarget), one object PUT via pyarrow.fs for URIs."""
    if is_uri(path):
        import pyarrow.fs as pafs

        fs, inner = pafs.FileSystem.from_uri(path)
        fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(inner) as out:
            out.write(data)
        return
    path = path.removeprefix("file://")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_file(path, data)  # exclusive temp file, renamed over a regular file or nothing (sentinel.files)
