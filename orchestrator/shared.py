"""Shared work across trials: one named Ray actor per experiment, a key/value store with per-key claims.

The pipeline asks `shared.get_or_compute(key, fn)` for the dense baseline of a model and the head scores of
(model, strategy, options, seed, scoring data). The first trial to ask *claims* the key and computes it;
trials that ask while it is being computed wait for the value instead of computing it again; every later
trial gets the stored value. A claim is released if its computation fails, and a claim older than
`claim_timeout_s` is treated as abandoned (its trial died), so a waiter never blocks forever.

Why an actor and not object-store entries: a value is produced inside a trial, after the grid has started,
and has to be found by name from other trials; an actor gives one place to look, atomic claims, and its
values (a few KB: a metric dict, a [layers, heads] tensor) are tiny. It takes no CPU (num_cpus=0).
"""
from __future__ import annotations

import time
from typing import Any, Callable

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

    def keys(self) -> list[str]:
        return sorted(self._values)


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

    def __init__(self, experiment: str, owner: str, poll_s: float = 0.2) -> None:
        self._store = ray.get_actor(store_name(experiment), namespace=STORE_NAMESPACE)
        self._owner = owner
        self._poll_s = poll_s

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
