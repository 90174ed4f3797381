"""A GGUF file's header checked against what the file can hold, before any reader allocates for it.

GGUF files are untrusted input (docs/SECURITY.md). Its header declares counts: metadata entries, array lengths,
string lengths, tensors, layers. A reader that believes them allocates what they say: a 105-byte file declaring an
array of 2^62 items grew gguf's reader to 4 GB in 26 s, and a 15 KB file claiming 100,000 layers built a model of
5 GB. Here every count is bounded by the bytes left in the file (an item takes at least its type's size), and the
layer count by the tensors the file declares; a file that fails says so in one line (ValueError), having read
nothing but its header, without allocating more than the header itself.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

from sentinel.files import regular_file_size

MAGIC = b"GGUF"
# value type -> bytes of one item (strings and arrays: at least their 8-byte length)
SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 8: 8, 9: 12, 10: 8, 11: 8, 12: 8}
STRING, ARRAY = 8, 9
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
MAX_HEADER_BYTES = 256 * 2**20  # the metadata of a real model (tokenizer included) is a few MB


class _Header:
    def __init__(self, data: bytes, size: int) -> None:
        self.data, self.pos, self.size = data, 0, size

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(f"{what} runs past the end of the file")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack("<Q", self.take(8, what))[0]

    def count(self, what: str, each: int) -> int:
        """A declared count, refused when that many items of at least `each` bytes cannot fit in the file."""
        n = self.u64(what)
        if n * each > self.size - self.pos:
            raise ValueError(f"{what} declares {n:,} items, more than the {self.size:,}-byte file can hold")
        return n

    def string(self, what: str) -> bytes:
        return self.take(self.count(f"{what} length", 1), what)

    def value(self, kind: int, what: str, depth: int = 0) -> object:
        if kind not in SIZES:
            raise ValueError(f"{what} has value type {kind}, not a GGUF type")
        if kind == STRING:
            return self.string(what)
        if kind == ARRAY:
            if depth > 1:
                raise ValueError(f"{what} nests arrays more than twice")
            item = self.u32(f"{what} item type")
            if item not in SIZES:
                raise ValueError(f"{what} has item type {item}, not a GGUF type")
            n = self.count(what, SIZES[item])
            if item in (STRING, ARRAY):
                for i in range(n):
                    self.value(item, what, depth + 1)
            else:
                self.take(n * SIZES[item], what)
            return n
        return struct.unpack(SCALARS[kind], self.take(SIZES[kind], what))[0]


def check_gguf(path: str | os.PathLike) -> dict[str, object]:
    """Raises ValueError (one line, naming what) unless `path` is a regular GGUF file whose header's counts fit in it
    and whose layer count (`<arch>.block_count`) is at most the tensors it declares.

    Returns:
        the header's metadata: key -> a number, a string's bytes, or an array's item count (its items are skipped:
        SmolLM2's tokenizer arrays took gguf's reader 3 s per read, this walk a fraction of a second).
    """
    path = Path(path)
    try:
        size = regular_file_size(path)
    except ValueError as exc:
        raise ValueError(f"{path}: not a usable GGUF file ({exc})") from None
    with open(path, "rb") as f:
        data = f.read(min(size, MAX_HEADER_BYTES))
    header = _Header(data, size)
    try:
        if header.take(4, "magic") != MAGIC:
            raise ValueError("does not start with GGUF")
        version = header.u32("version")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} (this reader knows 2 and 3)")
        tensors = header.count("tensor count", 8 + 4 + 8 + 4 + 8)  # name, dims, one dim, type, offset at least
        entries = header.count("metadata count", 8 + 4)
        numbers: dict[bytes, object] = {}
        for i in range(entries):
            key = header.string(f"metadata key {i}")
            kind = header.u32(f"metadata {key[:40]!r} type")
            numbers[key] = header.value(kind, f"metadata {key[:40]!r}")
    except ValueError as exc:
        raise ValueError(f"{path}: not a usable GGUF file ({exc})") from None
    architecture = numbers.get(b"general.architecture")
    layers = numbers.get(architecture + b".block_count") if isinstance(architecture, bytes) else None
    if isinstance(layers, int) and layers > tensors:
        raise ValueError(f"{path}: not a usable GGUF file (it claims {layers:,} layers but holds {tensors:,} tensors)")
    return {key.decode("utf-8", "replace"): value for key, value in numbers.items()}
