"""Experiment specs: a YAML file (plus `--set` overrides) -> a validated, frozen `ExperimentSpec`.

Everything a user can get wrong is checked here, before Ray starts and before any file is written, and
reported as one `SpecError` line that names the field, the value and what is allowed.

    experiment: default            # folder name under `output`
    models: [sentinel/tiny-gpt2, {name: gpt2, options: {...}, levels: [0.3], seeds: [0, 1, 2], finetune: {steps: 5},
             extra_tasks: [lm_eval:gutenberg_cloze]}]
    strategies: [entropy, {name: random, options: {}}]
    levels: [0.1, 0.3, 0.5]        # fractions of heads to prune, each in [0, 1) (0: a fine-tune-only control)
    seeds: [0, 1]
    data: {source: gutenberg, seq_len: 64, ...}        # sentinel.trial.DataSpec
    finetune: {steps: 20, lr: 5.0e-5, ...}             # sentinel.finetune.FinetuneConfig, or null
    method: remove                 # remove | mask
    compensate: false              # bias compensation on removal (FLAP); per strategy: {name: gradient, compensate: true}
    generation: {new_tokens: 32}   # generation speed and KV cache (sentinel.trial.GenerationSpec); null: not measured
    extra_tasks: []                # evaluations beside the primary task: task names, lm_eval:<task>; per model too
    policy: global                 # global | per_layer | uniform; per strategy: {name: gradient, policy: uniform}
                                   # a strategy for some models only: {name: attention_drop, models: [NAME, ...]}
    device: auto                   # cpu | cuda | auto (a trial with a GPU assigned uses it)
    resources: {cpu: 1, gpu: 0}    # per trial; gpu may be fractional (0.5 = two trials per GPU)
    max_concurrent_trials: 2
    max_failures: 1                # retries of a failing trial
    storage_path: null             # Tune state: local folder, NFS path or s3://bucket/prefix
    random_reference: {layouts: 100, recovered: 10}   # K random layouts per (model, level), K_r also recovered
    output: results                # Parquet tables go to <output>/<experiment>/
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlparse

import yaml

from orchestrator.config_file import read_config
from orchestrator.network import dial, port_of
from orchestrator.storage import REMOTE_SCHEMES, absolute, is_uri, join, unwritable
from sentinel.contract import Contract, SpecError, boolean, checked, integer, number, one_of
from sentinel.finetune import FinetuneConfig
from sentinel.pruning import STRATEGIES
from sentinel.pruning.selection import POLICIES
from sentinel.trial import (LEVEL, REFERENCE_STRATEGY, SEED, DataSpec, TrialSpec, device_name, extra_task_names,
                            model_name, model_options, strategy_name)

__all__ = ["SpecError", "ExperimentSpec", "load_spec", "parse_spec", "apply_overrides", "check_local_run"]


def entry_field(default: Any, rule: Callable[[Any, str], Any], *, always: bool = False, key: bool = False) -> Any:
    """A field of a model or strategy entry: its default, the rule its YAML value passes, whether the resolved config
    always lists it (`always`) and whether it tells two entries apart as grid cells (`key`)."""
    factory = {"default_factory": default} if callable(default) else {"default": default}
    return field(**factory, metadata={"rule": rule, "always": always, "key": key})


def _mapping_of_options(value: Any, at: str) -> dict[str, Any]:
    if value is None:  # `options:` left empty in the YAML
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"{at}: {value!r} is not a mapping")
    return dict(value)


@dataclass(frozen=True)
class ModelEntry:
    """A model of the grid and what it changes for its own cells. Each field is declared once, with its rule: the
    YAML keys an entry accepts, their checks, the resolved config and the duplicate check all read these fields."""

    name: str
    options: Mapping[str, Any] = entry_field(dict, _mapping_of_options, always=True, key=True)  # for load_model
    finetune: Mapping[str, Any] = entry_field(dict, _mapping_of_options, always=True, key=True)  # section overrides
    levels: tuple[float, ...] = entry_field((), lambda v, at: () if v is None else tuple(_levels(v, at)),
                                            always=True)  # (): the experiment's levels
    seeds: tuple[int, ...] = entry_field((), lambda v, at: () if v is None else tuple(_seeds(v, at)),
                                         always=True)  # (): the experiment's seeds
    extra_tasks: tuple[str, ...] | None = entry_field(None, lambda v, at: extra_task_names(v or [], at))  # None: grid's

    def key(self) -> str:
        return _entry_key(self)


@dataclass(frozen=True)
class StrategyEntry:
    """A strategy of the grid and what it changes for its own cells (declared once, as ModelEntry)."""

    name: str
    options: Mapping[str, Any] = entry_field(dict, _mapping_of_options, always=True, key=True)  # for the scorer
    compensate: bool | None = entry_field(None, boolean, key=True)  # bias compensation (None: the experiment's)
    policy: str | None = entry_field(None, one_of(POLICIES), key=True)  # selection policy (None: the experiment's)
    models: tuple[str, ...] = entry_field((), lambda v, at: _model_names(v, at))  # () every model

    def key(self) -> str:
        return _entry_key(self)


def _entry_key(entry: Any) -> str:
    """What makes two entries the same grid cells: the name and the fields marked `key`."""
    return json.dumps([entry.name, *[getattr(entry, f.name) for f in dataclasses.fields(entry) if f.metadata.get("key")]],
                      sort_keys=True, default=_plain)


@dataclass(frozen=True)
class RandomReference(Contract):
    """The random reference: `layouts` random layouts per (model, level), drawn by strategy random under the grid's
    selection rules, evaluated after pruning; the first `recovered` of them also fine-tuned with the model's recipe.
    Every strategy is tested against them (orchestrator.analyze.reference)."""

    layouts: int = checked(100, integer(minimum=0, maximum=10_000))  # a typo for 100 is one line, not an hour
    recovered: int = checked(10, integer(minimum=0))

    def check_together(self) -> None:
        from orchestrator.analyze.reference import MIN_LAYOUTS, MIN_RECOVERED

        if self.layouts < MIN_LAYOUTS:
            raise SpecError(f"layouts: {self.layouts} is fewer than a test needs; use at least "
                            f"{MIN_LAYOUTS} (or random_reference: null for none)")
        if self.recovered > self.layouts:
            raise SpecError(f"recovered: {self.recovered} is more than the {self.layouts} layouts; "
                            f"use 0 to {self.layouts}")
        if 0 < self.recovered < MIN_RECOVERED:
            raise SpecError(f"recovered: {self.recovered} is fewer than a test needs; use 0 (no "
                            f"recovered verdicts) or at least {MIN_RECOVERED}")


@dataclass(frozen=True)
class Resources:
    cpu: float = 1.0
    gpu: float = 0.0  # fractional: 0.5 packs two trials on one GPU


# The TrialSpec fields an experiment sets once for every cell (top-level keys of the YAML). Their rules and defaults
# are the trial contract's (sentinel.trial.TrialSpec); the experiment keeps them as plain data and builds each cell
# with TrialSpec.from_dict, so a field is declared, defaulted and checked in one place.
TRIAL_FIELDS = ("data", "finetune", "method", "compensate", "policy", "task", "min_heads_per_layer", "device", "bf16",
                "measure_speed", "generation", "extra_tasks")


@dataclass(frozen=True)
class ExperimentSpec:
    """The grid (models x strategies x seeds x levels), the fields every trial shares, and how Ray runs them."""

    experiment: str
    models: tuple[ModelEntry, ...]
    strategies: tuple[StrategyEntry, ...]
    levels: tuple[float, ...]
    seeds: tuple[int, ...] = (0,)
    trial: Mapping[str, Any] = field(default_factory=dict)  # TRIAL_FIELDS -> value, as TrialSpec.from_dict reads them
    resources: Resources = field(default_factory=Resources)
    max_concurrent_trials: int | None = None  # None: as many as the resources allow
    max_failures: int = 1
    storage_path: str | None = None  # None: <output>/<experiment>/tune
    output: str = "results"
    # Where Ray assigns a GPU but CUDA is absent (logical GPUs in tests), run on CPU and record the GPU the
    # trial would have used, instead of failing the trial.
    gpu_dry_run: bool = False
    pending_report_s: float = 300.0  # a trial waiting this long for resources is reported (a cluster short of them)
    random_reference: RandomReference | None = None  # None: strategies are paired by seed with `random` trials

    @property
    def size(self) -> int:
        """How many cells the grid holds, counted without building them (the reference's layouts included)."""
        total = 0
        for model in self.models:
            strategies = sum(1 for s in self.strategies if not s.models or model.name in s.models)
            levels = len(model.levels or self.levels)
            total += strategies * len(model.seeds or self.seeds) * levels
            total += levels * (self.random_reference.layouts if self.random_reference else 0)
        return total

    @functools.cached_property
    def cells(self) -> list[TrialSpec]:
        """The grid as validated TrialSpecs, model-major order (built once: parse_spec validates them all, the runner
        reuses them). A cell the trial contract refuses (a seq_len beyond one model's context, options one strategy
        rejects) is a SpecError naming the entries."""
        cells = []
        for i, model in enumerate(self.models):
            finetune = self.trial.get("finetune")
            if finetune is not None and model.finetune:  # this model's overrides of the section, checked as such
                finetune = FinetuneConfig.from_dict({**finetune, **model.finetune}, f"models[{i}].finetune").to_dict()
            for strategy in self.strategies:
                if strategy.models and model.name not in strategy.models:
                    continue
                shared = {**self.trial, "finetune": finetune, "model": model.name, "model_options": dict(model.options),
                          "strategy": strategy.name, "strategy_options": dict(strategy.options)}
                if strategy.policy is not None:
                    shared["policy"] = strategy.policy
                if model.extra_tasks is not None:
                    shared["extra_tasks"] = list(model.extra_tasks)
                if strategy.compensate is not None:
                    shared["compensate"] = strategy.compensate
                for seed in model.seeds or self.seeds:
                    for level in model.levels or self.levels:
                        try:
                            cells.append(TrialSpec.from_dict({**shared, "seed": seed, "level": level}))
                        except SpecError as exc:
                            raise SpecError(f"{exc} (models[{i}] {model.name!r}, strategies {strategy.name!r})") from None
            cells += self._reference_cells(model, finetune)
        return cells

    def _reference_cells(self, model: ModelEntry, finetune: Mapping[str, Any] | None) -> list[TrialSpec]:
        """The random reference's layouts of one model: draw d at each level is a cell of strategy random with seed d
        (its heads from reference_seed(d)), recovered with the model's recipe for the first `recovered` draws; no
        speed, generation or extra evaluations (a property of the strategies' layouts, not of the reference)."""
        if self.random_reference is None:
            return []
        base = {**self.trial, "model": model.name, "model_options": dict(model.options), "strategy": REFERENCE_STRATEGY,
                "strategy_options": {}, "reference": True, "compensate": False, "measure_speed": False,
                "generation": None, "extra_tasks": []}
        return [TrialSpec.from_dict({**base, "seed": draw, "level": level,
                                     "finetune": finetune if draw < self.random_reference.recovered else None})
                for level in model.levels or self.levels for draw in range(self.random_reference.layouts)]

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec as plain data, in the config's own shape (written next to the results as config.yaml)."""
        d = dataclasses.asdict(self)
        d.update(d.pop("trial"))
        d["random_reference"] = None if self.random_reference is None else self.random_reference.to_dict()
        d["models"] = [_entry_dict(e) for e in self.models]
        d["strategies"] = [_entry_dict(e) for e in self.strategies]
        return json.loads(json.dumps(d, default=_plain))

    @property
    def output_dir(self) -> str:
        """Where the Parquet tables go: `<output>/<experiment>` (a local path or a URI)."""
        return join(absolute(self.output), self.experiment)

    @property
    def tune_location(self) -> tuple[str, str]:
        """(storage_path, name) for Tune's RunConfig; the Tune experiment folder is their join."""
        if self.storage_path is None:
            return self.output_dir, "tune"
        return absolute(self.storage_path), self.experiment


def _entry_dict(entry: ModelEntry | StrategyEntry) -> dict[str, Any]:
    """An entry in the config's own shape: its name, the fields it always lists, and the others it sets."""
    out = {"name": entry.name}
    for f in dataclasses.fields(entry)[1:]:
        value = getattr(entry, f.name)
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if f.metadata["always"] or value != default:
            out[f.name] = value
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{value!r} is not plain data")


# ---------------------------------------------------------------------------------------------- loading


def load_spec(path: str | os.PathLike, overrides: Sequence[str] = ()) -> ExperimentSpec:
    """Reads a YAML experiment file, applies `key=value` overrides, and validates everything.

    Args:
        path: the YAML file.
        overrides: `dotted.key=value` strings; values are parsed as YAML (`levels=[0.1,0.2]`, `bf16=true`).
    Returns:
        The validated spec.
    Raises:
        SpecError: one line naming the field, the value and what is allowed.
    """
    path = Path(path)
    raw = read_config(path)
    raw.setdefault("experiment", path.stem)
    return parse_spec(apply_overrides(raw, overrides))


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Returns a copy of `raw` with each `dotted.key=value` set (values parsed as YAML scalars or lists)."""
    raw = json.loads(json.dumps(raw, default=str))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set: {item!r} is not key=value (e.g. --set finetune.steps=10)")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise SpecError(f"--set {key}: {text!r} is not a valid YAML value") from None
        node = raw
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise SpecError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a mapping")
            node = node[part]
        node[parts[-1]] = value
    return raw


TOP_LEVEL = tuple(f.name for f in dataclasses.fields(ExperimentSpec) if f.name != "trial") + TRIAL_FIELDS
# what a config that leaves a field out gets: the dataclass's own defaults, declared once there
DEFAULTS = {f.name: f.default for f in dataclasses.fields(ExperimentSpec) if f.default is not dataclasses.MISSING}


def parse_spec(raw: Mapping[str, Any]) -> ExperimentSpec:
    """Validates a plain mapping (the parsed YAML) into an ExperimentSpec. Raises SpecError.

    Trial fields are checked by the trial contract's own rules (sentinel.trial): every grid cell is built as a
    TrialSpec here, so what a worker would refuse is refused now. This module adds the YAML shape (lists of
    entries, per-model overrides) and the Ray-only fields (resources, concurrency, retries, storage).
    """
    problems: list[str] = []

    def checked_field(make: Callable[[], Any]) -> Any:
        """A field's value, or None with its one-line problem kept: every field is checked before any is reported."""
        try:
            return make()
        except SpecError as exc:
            problems.append(str(exc))
            return None

    checked_field(lambda: _known_keys(raw, TOP_LEVEL, "config"))
    for required in ("models", "strategies", "levels"):
        if raw.get(required) in (None, [], ""):
            problems.append(f"{required}: is required (a non-empty list)")
    fields = dict(
        experiment=checked_field(lambda: _experiment_name(raw.get("experiment"))),
        models=checked_field(lambda: tuple(_entries(raw["models"], "models", ModelEntry, model_name,
                                                    options_rule=model_options)) if raw.get("models") else ()),
        strategies=checked_field(lambda: tuple(_entries(raw["strategies"], "strategies", StrategyEntry, strategy_name))
                                 if raw.get("strategies") else ()),
        levels=checked_field(lambda: tuple(_levels(raw["levels"])) if raw.get("levels") else ()),
        seeds=checked_field(lambda: tuple(_seeds(raw.get("seeds", list(DEFAULTS["seeds"]))))),
        trial=checked_field(lambda: _trial_fields(raw)),
        resources=checked_field(lambda: _resources(raw.get("resources") or {})),
        max_concurrent_trials=checked_field(lambda: None if raw.get("max_concurrent_trials") is None
                                            else integer(minimum=1)(raw["max_concurrent_trials"],
                                                                    "max_concurrent_trials")),
        max_failures=checked_field(lambda: integer(minimum=0)(raw.get("max_failures", DEFAULTS["max_failures"]),
                                                               "max_failures")),
        storage_path=checked_field(lambda: None if raw.get("storage_path") is None
                                   else _path(raw["storage_path"], "storage_path")),
        output=checked_field(lambda: _path(raw.get("output", DEFAULTS["output"]), "output")),
        gpu_dry_run=checked_field(lambda: boolean(raw.get("gpu_dry_run", DEFAULTS["gpu_dry_run"]), "gpu_dry_run")),
        pending_report_s=checked_field(lambda: number(above=0)(raw.get("pending_report_s",
                                                                       DEFAULTS["pending_report_s"]),
                                                               "pending_report_s")),
        random_reference=checked_field(lambda: None if raw.get("random_reference") is None
                                       else RandomReference.from_dict(raw["random_reference"], "random_reference")),
    )
    if problems:  # every field's problem in the one line: a user fixes a config in one pass, not one per run
        raise SpecError(problems[0] if len(problems) == 1 else
                        f"{len(problems)} problems in the config: " + "; ".join(problems))
    spec = ExperimentSpec(**fields)
    names = [m.name for m in spec.models]
    for j, strategy in enumerate(spec.strategies):  # options named as the YAML has them, before the grid
        STRATEGIES.get(strategy.name).resolve(strategy.options, where=f"strategies[{j}].options")
        for name in strategy.models:
            if name not in names:
                raise SpecError(f"strategies[{j}].models: {name!r} is not one of the experiment's models "
                                f"({', '.join(names)})")
    if spec.size > MAX_CELLS:  # before a single cell is built: a typo (layouts: 1000000) is one line, not minutes
        raise SpecError(f"grid: {spec.size:,} cells (models x strategies x seeds x levels, plus the random "
                        f"reference's layouts per level); at most {MAX_CELLS:,} per experiment: split it, or check "
                        "seeds, levels and random_reference.layouts")
    spec.cells  # every cell through the trial contract (per-model finetune, strategy options, context length)
    _same_model_once(spec.models)
    device = spec.trial["device"]
    for i, model in enumerate(spec.models):
        if model.options.get("dtype") == "float16" and device == "auto" and spec.resources.gpu == 0:
            raise SpecError(f"models[{i}].options.dtype: 'float16' with no GPU per trial (resources.gpu: 0), so on "
                            "CPU, where half-precision kernels are slow or missing; use float32 or bfloat16")
    if device == "cuda" and spec.resources.gpu <= 0:
        raise SpecError("resources.gpu: 0 with device 'cuda'; give each trial a GPU share (e.g. 0.5) or use device auto")
    return spec


def defaults_yaml() -> str:
    """Every key of a config with the value it takes when the config does not set it, as YAML a user can start from
    (`sentinel-bench config --defaults`, docs/CONFIG.md). The four required keys show what they take."""
    import yaml

    spec = parse_spec({"experiment": "my_experiment", "models": ["sentinel/tiny-gpt2"], "strategies": ["magnitude"],
                       "levels": [0.3]})
    resolved = spec.to_dict()
    resolved.update(experiment="<a name: the results folder's>",
                    models=["<a shipped model, a folder, a .gguf file or a hub name>"],
                    strategies=["<a strategy name, or {name: ..., options: {...}}>"],
                    levels=["<fractions of heads to prune, e.g. 0.3>"], output=DEFAULTS["output"])
    return ("# Every key with its default (`sentinel-bench config --defaults`); experiment, models, strategies and\n"
            "# levels are required. Per-model overrides:\n"
            "# models: [{name: ..., finetune: {...}, levels: [...], seeds: [...]}].\n"
            + yaml.safe_dump(resolved, sort_keys=False))


# ------------------------------------------------------------------------------------------ field checks


def check_local_run(spec: ExperimentSpec, cpus: int | None = None, gpus: int | None = None) -> None:
    """For a run on this machine (no --address), what the spec alone cannot tell: one trial must fit on the
    machine (or Ray would wait forever), and every hub model must be in the local cache or the hub reachable
    (or every trial would fail). A cluster may differ on both, so `submit` does not check them here.

    Args:
        cpus, gpus: what this machine has (default: os.cpu_count() and torch.cuda.device_count()); with
            gpu_dry_run, logical GPUs stand in for absent ones and are not checked.
    """
    cpus = (os.cpu_count() or 1) if cpus is None else cpus
    if spec.resources.cpu > cpus:
        raise SpecError(f"resources.cpu: {spec.resources.cpu:g} per trial, but this machine has {cpus} CPU(s); "
                        f"use at most {cpus}, or --address to run on a cluster that has them")
    if spec.resources.gpu > 0 and not spec.gpu_dry_run:
        if gpus is None:
            import torch

            gpus = torch.cuda.device_count()
        if spec.resources.gpu > gpus:
            raise SpecError(f"resources.gpu: {spec.resources.gpu:g} per trial, but this machine has {gpus} GPU(s); "
                            "use 0, or --address to run on a cluster with GPUs")
    for at, where in (("output", spec.output), ("storage_path", spec.storage_path)):
        if where is not None and is_uri(where):
            check_storage(where, at)
    from sentinel import zero_shot
    from sentinel.models import loading
    from sentinel.models.hub import hub_reachable

    hub_tasks = sorted({t for c in spec.cells for t in c.extra_tasks if t.startswith(zero_shot.PREFIX)
                        and zero_shot.needs_hub(t)})
    if hub_tasks and not hub_reachable():
        raise SpecError(f"extra_tasks: {hub_tasks[0]!r} reads its data from the hub, which is not reachable; offline, "
                        f"use {', '.join(zero_shot.PREFIX + t for t in zero_shot.LOCAL_TASKS)}")
    for i, model in enumerate(spec.models):
        if loading.local_model_type(model.name) is None:  # a hub name (local ones were checked by the contract)
            try:
                loading.check_reachable(model.name, model.options.get("gguf_file"),
                                        bool(model.options.get("trust_remote_code", False)))
            except ValueError as exc:
                raise SpecError(f"models[{i}]: {str(exc).removeprefix('model: ')}".splitlines()[0]) from None


STORAGE_TIMEOUT_S = 15.0


def store_endpoint(uri: str) -> tuple[str, int] | None:
    """The host and port an object-store URI names itself (`endpoint_override=` in its query, or AWS_ENDPOINT_URL(_S3)
    for s3://); None where the store's own default endpoint is meant."""
    from urllib.parse import parse_qs, urlparse

    parsed = urlparse(uri)
    query = parse_qs(parsed.query)
    endpoint = (query.get("endpoint_override") or [None])[0]
    if endpoint is None and parsed.scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return None
    scheme = (query.get("scheme") or ["https"])[0]
    target = urlparse(endpoint if "://" in endpoint else f"{scheme}://{endpoint}")
    port = port_of(target, 443 if target.scheme == "https" else 80)
    if not target.hostname or port is None:
        return None  # not host:port: the store's client says what is wrong with it
    return target.hostname, port


def check_storage(uri: str, at: str, timeout_s: float = STORAGE_TIMEOUT_S) -> None:
    """An object-store output must answer (credentials, endpoint, bucket) before Ray starts: one listing of its
    prefix, given `timeout_s` (pyarrow's S3 client retries for minutes on an unreachable endpoint). An endpoint the
    URI names is first dialled once: a refused connection is said at once, not after the client's retries (6 s)."""
    import threading

    import pyarrow.fs as pafs

    endpoint = store_endpoint(uri)
    reason = dial(*endpoint, min(5.0, timeout_s)) if endpoint is not None else None
    if reason is not None:
        raise SpecError(f"{at}: {uri!r} cannot be reached (its endpoint {endpoint[0]}:{endpoint[1]}: {reason})")

    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            fs, inner = pafs.FileSystem.from_uri(uri)
            fs.get_file_info(inner)
            outcome.append(None)
        except BaseException as exc:  # pyarrow raises OSError / ArrowInvalid with the store's message
            outcome.append(exc)

    thread = threading.Thread(target=probe, daemon=True)  # a daemon: a hung client does not hold the exit
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        raise SpecError(f"{at}: {uri!r} did not answer within {timeout_s:g}s (endpoint, network or credentials)")
    if outcome[0] is not None:
        raise SpecError(f"{at}: {uri!r} cannot be reached ({str(outcome[0]).strip().splitlines()[0][:200]})")


def _known_keys(d: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    for key in d:
        if key not in allowed:
            prefix = "" if where == "config" else f"{where}."
            raise SpecError(f"{prefix}{key}: unknown key in {where}; allowed: {', '.join(allowed)}")


MAX_CELLS = 100_000  # ten times the largest grid the orchestration is measured at (benchmarks/scale.py)
MAX_EXPERIMENT_NAME = 100  # folder and file names derive from it (run ids, parts): well inside NAME_MAX (255)


def _experiment_name(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
        raise SpecError(f"experiment: {value!r} is not a folder name (letters, digits, '.', '_', '-')")
    if len(value) > MAX_EXPERIMENT_NAME:
        raise SpecError(f"experiment: a name of {len(value)} characters; use at most {MAX_EXPERIMENT_NAME}")
    return value


def _model_names(value: Any, at: str) -> tuple[str, ...]:
    """A strategy entry's `models`: a non-empty list of the experiment's model names (checked against them later)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise SpecError(f"{at}: {value!r} is not a list of model names from `models`")
    return tuple(value)


def _entries(value: Any, where: str, kind: type, check: Callable[[Any, str], Any],
             options_rule: Callable[[Any, str], Any] | None = None) -> list:
    """The entries of `models` or `strategies`: a name, or a mapping of `kind`'s fields, each checked by its rule
    (messages name the entry: models[1].levels); the same entry twice is refused (duplicate grid cells)."""
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, list):
        raise SpecError(f"{where}: {value!r} is not a list of names or {{name, options}} mappings")
    fields = {f.name: f for f in dataclasses.fields(kind)}
    entries, seen = [], set()
    for i, raw in enumerate(value):
        at = f"{where}[{i}]"
        item = raw if isinstance(raw, dict) else {"name": raw}
        _known_keys(item, tuple(fields), at)
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise SpecError(f"{at}: {raw!r} has no name (a string, or a mapping with 'name')")
        check(name, at)
        given = {key: fields[key].metadata["rule"](v, f"{at}.{key}") for key, v in item.items() if key != "name"}
        if options_rule is not None and "options" in given:  # typed here, so the message names the entry
            given["options"] = options_rule(given["options"], f"{at}.options")
        entry = kind(name=name, **given)
        if entry.key() in seen:
            raise SpecError(f"{where}: {name!r} appears twice with the same options (duplicate grid cells)")
        seen.add(entry.key())
        entries.append(entry)
    return entries


def _same_model_once(models: Sequence[ModelEntry]) -> None:
    """One model under two names (a hub name and its shipped alias, a path and a symlink to it) would run every
    cell twice under two labels: refused, naming both entries."""
    from sentinel.models import loading

    seen: dict[str, int] = {}
    for i, model in enumerate(models):
        source = loading.resolve_source(model.name)
        where = os.path.realpath(os.path.expanduser(source)) if os.path.exists(os.path.expanduser(source)) else source
        key = json.dumps([where, dict(model.options), dict(model.finetune), model.levels, model.seeds],
                         sort_keys=True, default=str)
        if key in seen:
            j = seen[key]
            raise SpecError(f"models[{i}]: {model.name!r} is the same model as models[{j}] {models[j].name!r} "
                            f"({where}) with the same options; list it once")
        seen[key] = i


def _levels(value: Any, at: str = "levels") -> list[float]:
    if not isinstance(value, list):
        value = [value]
    if not value:
        raise SpecError(f"{at}: is empty; give at least one fraction in [0, 1)")
    levels = []
    for i, level in enumerate(value):
        level = LEVEL(level, f"{at}[{i}]")  # the trial contract's rule for `level`
        if float(level) in levels:
            raise SpecError(f"{at}: {level!r} appears twice (duplicate grid cells)")
        levels.append(float(level))
    return levels


def _seeds(value: Any, at: str = "seeds") -> list[int]:
    if not isinstance(value, list):
        value = [value]
    if not value:
        raise SpecError(f"{at}: is empty; give at least one integer seed")
    seeds = []
    for i, seed in enumerate(value):
        seed = SEED(seed, f"{at}[{i}]")  # the trial contract's rule for `seed`
        if seed in seeds:
            raise SpecError(f"{at}: {seed!r} appears twice (duplicate grid cells)")
        seeds.append(seed)
    return seeds


def _trial_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The TRIAL_FIELDS of a config as plain data: the trial contract's defaults overlaid with the config's values,
    `data` and `finetune` resolved (checked here with their paths; every cell is checked again when built)."""
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(TrialSpec) if f.name in TRIAL_FIELDS}
    trial = {**defaults, **{key: raw[key] for key in TRIAL_FIELDS if key in raw}}
    data = DataSpec.from_dict(raw.get("data") or {}, "data")
    trial["data"] = data.to_dict()
    trial["finetune"] = _finetune(raw.get("finetune", {}), data)
    device = device_name(trial["device"], "device")
    if device.startswith("cuda:"):
        raise SpecError(f"device: {device!r} pins one GPU, but in a grid Ray assigns each trial its GPU; use cuda or auto")
    return trial


def _finetune(value: Any, data: DataSpec) -> dict[str, Any] | None:
    """The finetune section as plain data (null: no recovery fine-tuning); an unset batch_size means the scoring
    batches'."""
    if value is None or value is False:
        return None
    if isinstance(value, dict) and "batch_size" not in value:
        value = {**value, "batch_size": data.batch_size}
    return FinetuneConfig.from_dict(value, "finetune").to_dict()


RAY_SMALLEST_SHARE = 1e-4  # Ray's resource granularity


def _resources(value: Any) -> Resources:
    if not isinstance(value, dict):
        raise SpecError(f"resources: {value!r} is not a mapping with cpu and gpu")
    _known_keys(value, ("cpu", "gpu"), "resources")
    out = {}
    for key in ("cpu", "gpu"):
        item = value.get(key, getattr(Resources, key))
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item) or item < 0:
            raise SpecError(f"resources.{key}: {item!r} is not a finite number >= 0")
        out[key] = float(item)
    for key in ("cpu", "gpu"):
        if 0 < out[key] < RAY_SMALLEST_SHARE:  # Ray refuses it after starting, in a 64-line error
            raise SpecError(f"resources.{key}: {out[key]!r} is below the smallest share Ray schedules "
                            f"({RAY_SMALLEST_SHARE:g}); use 0 or at least {RAY_SMALLEST_SHARE:g}")
    if out["gpu"] > 1 and out["gpu"] != int(out["gpu"]):
        raise SpecError(f"resources.gpu: {out['gpu']!r}; a share above 1 must be a whole number of GPUs")
    if out["cpu"] == 0 and out["gpu"] == 0:
        raise SpecError("resources: cpu and gpu are both 0; a trial needs some resource")
    return Resources(**out)


def _path(value: Any, at: str) -> str:
    """A local folder that exists or can be created and written, or a remote URI (s3://...)."""
    if not isinstance(value, str) or not value:
        raise SpecError(f"{at}: {value!r} is not a path")
    scheme = urlparse(value).scheme
    if scheme in REMOTE_SCHEMES:
        if not urlparse(value).netloc:
            raise SpecError(f"{at}: {value!r} has no bucket (expected {scheme}://bucket/prefix)")
        return value
    if scheme and len(scheme) > 1 and scheme != "file":  # "C:" style drive letters are not schemes
        raise SpecError(f"{at}: scheme {scheme!r} of {value!r} is not one of file, {', '.join(REMOTE_SCHEMES)}")
    path = Path(value.removeprefix("file://")).expanduser().absolute()
    reason = unwritable(str(path))
    if reason:
        raise SpecError(f"{at}: {value!r} is not writable ({reason})")
    return str(path)
