"""Field rules for the typed configs (`DataSpec`, `FinetuneConfig`, `TrialSpec`): one rule per field, in one place.

A rule is attached to a dataclass field with `checked(default, rule)`; `Contract.__post_init__` runs every
field's rule, then the class's `check_together` for rules that span fields. The same objects are built from
YAML (the orchestrator), by library users, and inside each Ray worker, so the same rule runs everywhere.
`from_dict` refuses unknown keys and prefixes every message with where the mapping came from
(`data.seq_len: ...`, `models[1].finetune.lr: ...`).

A rule takes (value, field name) and returns the value, normalised (`"1e-3"` -> 0.001: PyYAML reads a
number without a dot as a string), or raises `SpecError` with one line naming the field, the value and what
is allowed.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar, Mapping, Sequence, TypeVar

Rule = Callable[[Any, str], Any]
STAGES = ("load", "baseline", "score", "select", "prune", "eval_pruned", "speed", "generation", "finetune", "extra")  # a trial's timed stages
C = TypeVar("C", bound="Contract")


class SpecError(ValueError):
    """A bad value in a config. The message is one line: the field, the value, what is allowed."""


def checked(default: Any = dataclasses.MISSING, rule: Rule | None = None, *, factory: Any = dataclasses.MISSING):
    """A dataclass field whose value must pass `rule`."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"rule": rule})


class Contract:
    """Base of the frozen, self-validating config dataclasses.

    LATE_DEFAULTS: the fields added after results were published, with their defaults. `identity_dict` leaves each
    out while it holds its default, in this contract and every nested one, so a field added to any part of a trial
    (data, finetune, generation, ...) does not change the ids of the cells that existed before it. RETIRED: fields
    removed since, with the value every published cell held; `identity_dict` puts them back, so ids hold too.
    """

    LATE_DEFAULTS: ClassVar[dict[str, Any]] = {}
    RETIRED: ClassVar[dict[str, Any]] = {}  # fields removed after results were published, with the value ids held

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            rule = f.metadata.get("rule")
            if rule is not None:
                object.__setattr__(self, f.name, rule(getattr(self, f.name), f.name))
        self.check_together()

    def check_together(self) -> None:
        """Rules that span fields (stride <= seq_len, warmup_steps <= steps, ...). Raises SpecError."""

    @classmethod
    def from_dict(cls: type[C], value: Any, where: str = "") -> C:
        """Builds and validates from a mapping; nested contracts are built from their own mappings.

        Args:
            value: field name -> value; unknown keys are refused.
            where: the mapping's place in a larger config, prefixed to messages ("data", "models[1].finetune").
        """
        prefix = f"{where}." if where else ""
        if not isinstance(value, Mapping):
            raise SpecError(f"{where or cls.__name__}: {value!r} is not a mapping")
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        for key in value:
            if key not in names:
                raise SpecError(f"{prefix}{key}: unknown key in {where or cls.__name__}; allowed: {', '.join(names)}")
        kwargs = dict(value)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            nested = f.metadata.get("contract")
            if nested is not None and isinstance(kwargs.get(f.name), Mapping):
                kwargs[f.name] = nested.from_dict(kwargs[f.name], f"{prefix}{f.name}")
        try:
            return cls(**kwargs)
        except SpecError as exc:
            raise SpecError(f"{prefix}{exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def identity_dict(cls, value: Mapping[str, Any]) -> dict[str, Any]:
        """`value` (this contract as plain data) without the late fields that hold their defaults, nested contracts
        included: what an id is computed from."""
        out = {**cls.RETIRED, **value}
        for name, default in cls.LATE_DEFAULTS.items():
            if name in out and out[name] == default:
                del out[name]
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            inner = f.metadata.get("contract")
            if inner is not None and isinstance(out.get(f.name), Mapping):
                out[f.name] = inner.identity_dict(out[f.name])
        return out


def nested(contract: type[Contract], default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING,
           optional: bool = False):
    """A field holding another contract (built by from_dict from a mapping; None allowed if `optional`)."""

    def rule(value: Any, name: str) -> Any:
        if value is None and optional:
            return None
        if isinstance(value, Mapping):
            return contract.from_dict(value, name)
        if not isinstance(value, contract):
            allowed = f"a {contract.__name__} or a mapping" + (" or null" if optional else "")
            raise SpecError(f"{name}: {value!r} is not {allowed}")
        return value

    return dataclasses.field(default=default, default_factory=factory, metadata={"rule": rule, "contract": contract})


# ---------------------------------------------------------------------------------------------------- rules


def integer(minimum: int | None = None, maximum: int | None = None) -> Rule:
    def rule(value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{name}: {value!r} is not an integer")
        if minimum is not None and value < minimum:
            raise SpecError(f"{name}: {value!r} must be >= {minimum}")
        if maximum is not None and value > maximum:
            raise SpecError(f"{name}: {value!r} must be <= {maximum}")
        return value

    return rule


def number(minimum: float | None = None, *, above: float | None = None, below: float | None = None,
           maximum: float | None = None) -> Rule:
    """A float; `minimum`/`maximum` inclusive, `above`/`below` exclusive bounds."""

    def rule(value: Any, name: str) -> float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string: accept the numbers people write
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SpecError(f"{name}: {value!r} is not a finite number")
        if minimum is not None and value < minimum:
            raise SpecError(f"{name}: {value!r} must be >= {minimum:g}")
        if above is not None and not value > above:
            raise SpecError(f"{name}: {value!r} must be > {above:g}")
        if below is not None and not value < below:
            raise SpecError(f"{name}: {value!r} must be < {below:g}")
        if maximum is not None and value > maximum:
            raise SpecError(f"{name}: {value!r} must be <= {maximum:g}")
        return float(value)

    return rule


def fraction(*, zero: bool) -> Rule:
    """A fraction in [0, 1) (`zero=True`) or (0, 1)."""

    def rule(value: Any, name: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value < 1 if zero else 0 < value < 1):
            raise SpecError(f"{name}: {value!r} is not a fraction in {'[0, 1)' if zero else '(0, 1)'}")
        return float(value)

    return rule


def boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"{name}: {value!r} is not true or false")
    return value


def text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise SpecError(f"{name}: {value!r} is not a non-empty string")
    return value


def one_of(allowed: Sequence[str]) -> Rule:
    def rule(value: Any, name: str) -> str:
        if value not in allowed:
            raise SpecError(f"{name}: {value!r} is not one of {', '.join(allowed)}")
        return value

    return rule


def mapping(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise SpecError(f"{name}: {value!r} is not a mapping of names to values")
    return dict(value)


def optional(rule: Rule) -> Rule:
    return lambda value, name: None if value is None else rule(value, name)


# the grid's two coordinates, one rule each wherever they are read (the trial contract, select_heads, score_heads)
LEVEL = fraction(zero=True)  # 0 is allowed: a control cell that prunes nothing and only fine-tunes
SEED = integer(minimum=0, maximum=2**63 - 1)  # the rows' int64 column holds it (and torch, numpy accept it)
