"""A small name -> object registry, shared by architecture adapters and pruning strategies.

Follows lm-eval-harness's contract: registering a taken name is an error, and an unknown name is an
error that lists what exists (with a "did you mean" hint).
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind  # e.g. "strategy", "model_type": used in error messages
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def register(self, *names: str) -> Callable[[T], T]:
        """Decorator: `@REGISTRY.register("name", "alias")`."""

        def decorate(item: T) -> T:
            for name in names:
                self.add(name, item)
            return item

        return decorate

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise ValueError(self.unknown_message(name)) from None

    def unknown_message(self, name: object) -> str:
        allowed = ", ".join(sorted(self._items))
        hint = difflib.get_close_matches(str(name), list(self._items), n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        return f"{self.kind}: {name!r} is not one of {allowed}{did_you_mean}"

    def names(self) -> list[str]:
        return sorted(self._items)

    def in_order(self) -> list[str]:
        """The names in registration order (what a registry that tries its entries in turn, like tasks' "auto", reads)."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
