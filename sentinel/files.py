"""Files from untrusted places (model folders, text sources, GGUF files) are read only when they are regular files:
a FIFO would hang the read, a link to /dev/zero never end it."""
from __future__ import annotations

import os
import stat
from pathlib import Path


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
