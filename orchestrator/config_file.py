"""Reading a config file as untrusted input: bounded in bytes, depth and expanded size, UTF-8, YAML's safe loader.

Used for experiment configs (`run`, `submit`) and for the config.yaml found beside result tables (`analyze`);
no torch, no transformers (the CLI's light commands import it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sentinel.contract import SpecError
from sentinel.files import UnreadableFile, read_regular

MAX_CONFIG_BYTES = 1 << 20  # a config is a page of YAML; a megabyte is generous
MAX_CONFIG_DEPTH = 12  # the deepest real config: models[i].options.x or models[i].finetune.x (4 levels)
MAX_CONFIG_NODES = 100_000  # values after YAML aliases are expanded (a billion laughs expands to 10^9)


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML keeps the last silently: `levels:` written
    twice would run the second and say nothing)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_config(path: Path) -> dict[str, Any]:
    """The YAML mapping of a config file, refused in one line when it is not a file, not UTF-8 text, not YAML,
    nested deeper than a config needs, or expands (through YAML aliases) beyond MAX_CONFIG_NODES values."""
    try:
        data = read_regular(path, MAX_CONFIG_BYTES)
    except (FileNotFoundError, IsADirectoryError):
        raise SpecError(f"config: {str(path)!r} is not a file") from None
    except UnreadableFile as exc:
        raise SpecError(f"config: {exc}") from None
    except OSError as exc:
        raise SpecError(f"config: {str(path)!r} cannot be read ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"config: {str(path)!r} is not UTF-8 text (byte {exc.start})") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeys)  # noqa: S506 (a SafeLoader subclass: no Python object tags)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"config: {str(path)!r} is not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise SpecError(f"config: {str(path)!r} is nested deeper than {MAX_CONFIG_DEPTH} levels") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError(f"config: {str(path)!r} must hold a mapping of keys, not {type(raw).__name__}")
    check_size(raw, str(path))
    return raw


def check_size(raw: Any, where: str) -> None:
    """Walks the loaded YAML without expanding it, counting values as if aliases were copied, and stops at the
    first bound passed (so a billion laughs costs MAX_CONFIG_NODES steps, not gigabytes)."""
    count = 0
    stack = [(raw, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if depth > MAX_CONFIG_DEPTH:
            raise SpecError(f"config: {where!r} is nested deeper than {MAX_CONFIG_DEPTH} levels")
        if count > MAX_CONFIG_NODES:
            raise SpecError(f"config: {where!r} expands to more than {MAX_CONFIG_NODES:,} values "
                            "(YAML aliases repeated?); write the grid out")
        if isinstance(node, dict):
            stack += [(v, depth + 1) for v in node.values()] + [(k, depth + 1) for k in node]
        elif isinstance(node, (list, tuple)):
            stack += [(v, depth + 1) for v in node]
