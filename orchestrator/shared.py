"""Shared work across trials: one named Ray actor per experiment, a key/value store with per-key claims.

The pipeline asks `shared.get_or_compute(key, fn)` for the dense baseline of a model and the head scores of
(model, strategy, options, seed, scoring data). The first trial to ask *claims* the key and computes it;
trials that ask while it is being computed wait for the value instead of computing it again; every later
trial gets the stored value. A claim is released if its computation fails, and a claim older than
`claim_timeout_s` is treated as abandoned (its trial died), so a waiter never blocks forever.

The store also keeps, per Ray node, a stage lock for quiet speed measurements: trials hold it shared around
each compute stage (`working`), and a speed measurement takes it exclusively (`exclusive`): it waits for the
stages in progress on its node to end, and new stages there wait until it is done (a waiting exclusive
request goes first, so it cannot starve). Stages are seconds to minutes long; a wait longer than
`quiet_timeout_s` (a trial that died holding the lock) gives up and the row says `speed_quiet: false`.

Why an actor and not object-store entries: a value is produced inside a trial, after the grid has started,
and has to be found by name from other trials; an actor gives one place to look, atomic claims, and its
values (a few KB: a metric dict, a [layers, heads] tensor) are tiny. It takes no CPU (num_cpus=0).
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator

import ray

STORE_NAMESPACE = "sentinel-bench"


@ray.remote(num_cpus=0)
class SharedStore:
    """Key -> value, with claims. Methods run one at a time (a plain actor), so claim() is atomic."""

    def __init__(self, claim_timeout_s: float = 600.0) -> None:
        self._values: dict[str, Any] = {}
        self._claims: dict[str, tuple[str, float]] = {}  # key -> (owner, claimed at)
        self._claim_timeout_s = claim_timeout_s
        self._counters: dict[str, int] = {}
        self._holders: dict[str, dict[str, list]] = {}  # node -> owner -> [mode, depth]
        self._waiting: dict[str, set[str]] = {}  # node -> owners waiting for the exclusive lock

    def enter(self, node: str, owner: str, exclusive: bool) -> bool:
        """Takes the node's stage lock (shared, or exclusive) for `owner` if it can be had now; re-entrant."""
        holders, waiting = self._holders.setdefault(node, {}), self._waiting.setdefault(node, set())
        others = {o: held for o, held in holders.items() if o != owner}
        if exclusive:
            if others:
                waiting.add(owner)
                return False
            waiting.discard(owner)
        elif any(held[0] == "exclusive" for held in others.values()) or waiting - {owner}:
            return False
        held = holders.setdefault(owner, ["exclusive" if exclusive else "shared", 0])
        held[1] += 1
        return True

    def leave(self, node: str, owner: str) -> None:
        """Releases one level of `owner`'s hold (or its place in the exclusive queue)."""
        holders = self._holders.get(node, {})
        self._waiting.get(node, set()).discard(owner)
        if owner in holders:
            holders[owner][1] -= 1
            if holders[owner][1] <= 0:
                del holders[owner]

    def forget(self, owner: str) -> None:
        """Drops every hold of `owner` (its trial ended, however it ended)."""
        for node in self._holders:
            self._holders[node].pop(owner, None)
            self._waiting[node].discard(owner)

    def claim(self, key: str, owner: str) -> tuple[str, Any]:
        """("value", v) if stored; ("compute", None) if `owner` now holds the claim; ("wait", None) otherwise."""
        if key in self._values:
            return "value", self._values[key]
        holder = self._claims.get(key)
        if holder is None or holder[0] == owner or time.time() - holder[1] > self._claim_timeout_s:
            self._claims[key] = (owner, time.time())
            return "compute", None
        return "wait", None

    def put(self, key: str, value: Any) -> None:
        self._values[key] = value
        self._claims.pop(key, None)

    def release(self, key: str, owner: str) -> None:
        if self._claims.get(key, ("",))[0] == owner:
            del self._claims[key]

    def count(self, key: str) -> int:
        """Increments and returns a counter (a trial's attempts)."""
        self._counters[key] = self._counters.get(key, 0) + 1
        return self._counters[key]


def store_name(experiment: str) -> str:
    return f"shared/{experiment}"


def start_store(experiment: str) -> Any:
    """Creates (or finds, on resume with a live cluster) the experiment's store; lives as long as the driver.

    The store is pinned to the driver's node: a worker node that dies takes its trials with it (Tune
    retries them), but must not take the store, which every other trial needs.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    driver_node = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    return SharedStore.options(
        name=store_name(experiment), namespace=STORE_NAMESPACE, get_if_exists=True, lifetime=None,
        scheduling_strategy=driver_node,
    ).remote()


class RayShared:
    """The `shared` object handed to run_trial inside a Tune trial: get_or_compute through the store actor."""

    def __init__(self, experiment: str, owner: str, poll_s: float = 0.2, quiet_timeout_s: float = 900.0) -> None:
        self._store = ray.get_actor(store_name(experiment), namespace=STORE_NAMESPACE)
        self._owner = owner
        self._poll_s = poll_s
        self._quiet_timeout_s = quiet_timeout_s
        self._node = ray.get_runtime_context().get_node_id()

    def _enter(self, exclusive: bool) -> bool:
        """Polls for the node's stage lock; False after quiet_timeout_s (the work goes on without it)."""
        deadline = time.time() + self._quiet_timeout_s
        while not ray.get(self._store.enter.remote(self._node, self._owner, exclusive)):
            if time.time() > deadline:
                self._store.leave.remote(self._node, self._owner)  # leave the queue: others must not wait on us
                return False
            time.sleep(self._poll_s)
        return True

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        held = self._enter(exclusive=False)
        try:
            yield
        finally:
            if held:
                self._store.leave.remote(self._node, self._owner)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[bool]:
        held = self._enter(exclusive=True)
        try:
            yield held
        finally:
            if held:
                ray.get(self._store.leave.remote(self._node, self._owner))

    def close(self) -> None:
        """Releases whatever this trial still holds (called when the trial ends, also on failure)."""
        ray.get(self._store.forget.remote(self._owner))

    def count(self, key: str) -> int:
        return ray.get(self._store.count.remote(key))

    def get_or_compute(self, key: str, fn: Callable[[], Any]) -> tuple[Any, bool]:
        """Returns (value, reused): reused is False only for the trial that computed the value."""
        while True:
            state, value = ray.get(self._store.claim.remote(key, self._owner))
            if state == "value":
                return value, True
            if state == "compute":
                break
            time.sleep(self._poll_s)  # another trial is computing it; its value is seconds away
        try:
            value = fn()
        except BaseException:
            self._store.release.remote(key, self._owner)  # let the next trial try
            raise
        ray.get(self._store.put.remote(key, value))
        return value, False
