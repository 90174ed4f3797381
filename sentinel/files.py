"""Files from untrusted places (model folders, text sources, GGUF files) are read only when they are regular files:
a FIFO would hang the read, a link to /dev/zero never end it. Files are written one way, atomic_output: an exclusive
temp file in the target's folder, renamed over a target that is a regular file or absent."""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterator


def regular_file_size(path: str | os.PathLike) -> int:
    """The size of `path` (links followed: judged by what would be read), or a one-line ValueError when it cannot be
    read or is not a regular file."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ValueError(f"{Path(path).name!r} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{Path(path).name!r} is not a regular file (a FIFO, a device or a socket)")
    return info.st_size


class UnsafeTarget(OSError):
    """A file would be written where something other than a regular file (a link, a device, a FIFO, a folder) is."""


def check_target(path: str | os.PathLike) -> None:
    """Refuses, in one line, a target that exists and is not a regular file: writing there would follow a link to
    wherever it points, or replace a device node (/dev/null) with a file."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeTarget(f"{str(path)!r} is a link; not writing through it (remove it, or name the file itself)")
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeTarget(f"{str(path)!r} is not a regular file (a folder, device, FIFO or socket); not replacing it")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """The one way a local file is written: yields a temp file created exclusively (O_EXCL, an unpredictable name, so
    no planted link is followed) in the target's folder; when the block ends it is renamed over the target, which
    must be a regular file or absent (checked before and again just before the rename). On any error or signal
    the temp file is removed and the target is untouched."""
    path = Path(path)
    check_target(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are the team's
        yield Path(tmp)
        check_target(path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_file(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` through atomic_output."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (os.umask both sets and returns)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class UnreadableFile(ValueError):
    """A file expected and something else found (a FIFO, a device, a link to /dev/zero, a folder), or too large."""


def read_regular(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes`: the one way an untrusted local file is read. Opened
    without blocking (a FIFO would hang an open for reading until a writer came), checked on the open descriptor
    (nothing swapped in between), read to the cap and no further (a link to /dev/zero, a sparse 8 GB file).

    Raises:
        FileNotFoundError: nothing there.
        UnreadableFile: not a regular file, or larger than max_bytes (one line naming it and the cap).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableFile(f"{str(path)!r} is not a regular file (a FIFO, a device, a socket or a folder)")
        if info.st_size > max_bytes:
            raise UnreadableFile(f"{str(path)!r} is {info.st_size:,} bytes; at most {max_bytes:,} are read")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # grew since fstat
        raise UnreadableFile(f"{str(path)!r} is over {max_bytes:,} bytes; at most {max_bytes:,} are read")
    return data
