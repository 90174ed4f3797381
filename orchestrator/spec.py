"""Experiment specs: a YAML file (plus `--set` overrides) -> a validated, frozen `ExperimentSpec`.

Everything a user can get wrong is checked here, before Ray starts and before any file is written, and
reported as one `SpecError` line that names the field, the value and what is allowed.

    experiment: default            # folder name under `output`
    models: [sentinel/tiny-gpt2, {name: gpt2, options: {...}, levels: [0.3], seeds: [0, 1, 2], finetune: {steps: 5}}]
    strategies: [entropy, {name: random, options: {}}]
    levels: [0.1, 0.3, 0.5]        # fractions of heads to prune, each in (0, 1)
    seeds: [0, 1]
    data: {source: gutenberg, seq_len: 64, ...}        # sentinel.pipeline.DataSpec
    finetune: {steps: 20, lr: 5.0e-5, ...}             # sentinel.finetune.FinetuneConfig, or null
    method: remove                 # remove | mask
    policy: global                 # global | per_layer
    device: auto                   # cpu | cuda | auto (a trial with a GPU assigned uses it)
    resources: {cpu: 1, gpu: 0}    # per trial; gpu may be fractional (0.5 = two trials per GPU)
    max_concurrent_trials: 2
    max_failures: 1                # retries of a failing trial
    storage_path: null             # Tune state: local folder, NFS path or s3://bucket/prefix
    output: results                # Parquet tables go to <output>/<experiment>/
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlparse

import yaml

METHODS = ("remove", "mask")
POLICIES = ("global", "per_layer")
DEVICES = ("cpu", "cuda", "auto")
REMOTE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss")  # storage handled by pyarrow.fs
BUNDLED_SOURCES = ("gutenberg", "wikitext-2", "wikitext-2-raw")
# FinetuneConfig fields as documented, used only if sentinel.finetune cannot be imported
FINETUNE_FIELDS = ("steps", "lr", "warmup_steps", "weight_decay", "max_grad_norm", "batch_size", "eval_every", "seed")


class SpecError(ValueError):
    """A bad experiment spec. The message is one line naming the field, the value and what is allowed."""


@dataclass(frozen=True)
class Entry:
    """A model or a strategy: a name plus options (model options go to load_model, strategy options to score)."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    finetune: Mapping[str, Any] = field(default_factory=dict)  # models only: overrides of the finetune section
    levels: tuple[float, ...] = ()  # models only: this model's levels instead of the experiment's
    seeds: tuple[int, ...] = ()  # models only: this model's seeds instead of the experiment's

    def key(self) -> str:
        return json.dumps([self.name, dict(self.options), dict(self.finetune)], sort_keys=True, default=str)


@dataclass(frozen=True)
class Resources:
    cpu: float = 1.0
    gpu: float = 0.0  # fractional: 0.5 packs two trials on one GPU


@dataclass(frozen=True)
class ExperimentSpec:
    experiment: str
    models: tuple[Entry, ...]
    strategies: tuple[Entry, ...]
    levels: tuple[float, ...]
    seeds: tuple[int, ...] = (0,)
    data: Mapping[str, Any] = field(default_factory=dict)  # DataSpec keyword arguments
    finetune: Mapping[str, Any] | None = field(default_factory=dict)  # FinetuneConfig keyword arguments
    method: str = "remove"
    policy: str = "global"
    min_heads_per_layer: int = 1
    device: str = "auto"
    bf16: bool = False
    measure_speed: bool = True
    resources: Resources = field(default_factory=Resources)
    max_concurrent_trials: int | None = None  # None: as many as the resources allow
    max_failures: int = 1
    storage_path: str | None = None  # None: <output>/<experiment>/tune
    output: str = "results"
    # Where Ray assigns a GPU but CUDA is absent (logical GPUs in tests), run on CPU and record the GPU the
    # trial would have used, instead of failing the trial.
    gpu_dry_run: bool = False

    def cells(self) -> list[dict[str, Any]]:
        """The grid as TrialSpec dicts (`sentinel.pipeline.TrialSpec.from_dict`), model-major order."""
        cells = []
        for model in self.models:
            for strategy in self.strategies:
                for seed in model.seeds or self.seeds:
                    for level in model.levels or self.levels:
                        cells.append({
                            "model": model.name, "model_options": dict(model.options),
                            "strategy": strategy.name, "strategy_options": dict(strategy.options),
                            "level": level, "seed": seed, "policy": self.policy,
                            "min_heads_per_layer": self.min_heads_per_layer, "method": self.method,
                            "data": dict(self.data),
                            "finetune": None if self.finetune is None else {**self.finetune, **model.finetune},
                            "device": self.device, "bf16": self.bf16, "measure_speed": self.measure_speed,
                        })
        return cells

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec as plain data (written next to the results as config.yaml)."""
        d = dataclasses.asdict(self)
        d["models"] = [{"name": e.name, "options": dict(e.options), "finetune": dict(e.finetune),
                        "levels": list(e.levels), "seeds": list(e.seeds)} for e in self.models]
        d["strategies"] = [{"name": e.name, "options": dict(e.options)} for e in self.strategies]
        return json.loads(json.dumps(d, default=_plain))

    @property
    def output_dir(self) -> str:
        """Where the Parquet tables go: `<output>/<experiment>` (a local path or a URI)."""
        return _join(_absolute(self.output), self.experiment)

    @property
    def tune_location(self) -> tuple[str, str]:
        """(storage_path, name) for Tune's RunConfig; the Tune experiment folder is their join."""
        if self.storage_path is None:
            return self.output_dir, "tune"
        return _absolute(self.storage_path), self.experiment


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{value!r} is not plain data")


def _is_uri(path: str) -> bool:
    return urlparse(path).scheme in REMOTE_SCHEMES


def _absolute(path: str) -> str:
    return path if _is_uri(path) else os.path.abspath(os.path.expanduser(path))


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name if _is_uri(base) else os.path.join(base, name)


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
    if not path.is_file():
        raise SpecError(f"config: {str(path)!r} is not a file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"config: {str(path)!r} is not valid YAML{where}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError(f"config: {str(path)!r} must hold a mapping of keys, not {type(raw).__name__}")
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


TOP_LEVEL = tuple(f.name for f in dataclasses.fields(ExperimentSpec))


def parse_spec(raw: Mapping[str, Any]) -> ExperimentSpec:
    """Validates a plain mapping (the parsed YAML) into an ExperimentSpec. Raises SpecError."""
    _known_keys(raw, TOP_LEVEL, "config")
    for required in ("models", "strategies", "levels"):
        if raw.get(required) in (None, [], ""):
            raise SpecError(f"{required}: is required (a non-empty list)")
    spec = ExperimentSpec(
        experiment=_experiment_name(raw.get("experiment")),
        models=tuple(_entries(raw["models"], "models", _check_model, extra_keys=("finetune", "levels", "seeds"))),
        strategies=tuple(_entries(raw["strategies"], "strategies", _check_strategy)),
        levels=tuple(_levels(raw["levels"])),
        seeds=tuple(_seeds(raw.get("seeds", [0]))),
        data=(data := _data(raw.get("data") or {})),
        finetune=_finetune(raw.get("finetune", {}), data),
        method=_choice(raw.get("method", "remove"), METHODS, "method"),
        policy=_choice(raw.get("policy", "global"), POLICIES, "policy"),
        min_heads_per_layer=_int(raw.get("min_heads_per_layer", 1), "min_heads_per_layer", minimum=1),
        device=_choice(raw.get("device", "auto"), DEVICES, "device"),
        bf16=_bool(raw.get("bf16", False), "bf16"),
        measure_speed=_bool(raw.get("measure_speed", True), "measure_speed"),
        resources=_resources(raw.get("resources") or {}),
        max_concurrent_trials=None if raw.get("max_concurrent_trials") is None
        else _int(raw["max_concurrent_trials"], "max_concurrent_trials", minimum=1),
        max_failures=_int(raw.get("max_failures", 1), "max_failures", minimum=0),
        storage_path=None if raw.get("storage_path") is None else _path(raw["storage_path"], "storage_path"),
        output=_path(raw.get("output", "results"), "output"),
        gpu_dry_run=_bool(raw.get("gpu_dry_run", False), "gpu_dry_run"),
    )
    if spec.finetune is not None:  # per-model fine-tuning overrides, checked merged over the section
        for i, model in enumerate(spec.models):
            if model.finetune:
                _finetune({**spec.finetune, **model.finetune}, spec.data, where=f"models[{i}].finetune")
    _check_context(spec)
    if spec.device == "cuda" and spec.resources.gpu <= 0:
        raise SpecError("resources.gpu: 0 with device 'cuda'; give each trial a GPU share (e.g. 0.5) or use device auto")
    return spec


# ------------------------------------------------------------------------------------------ field checks


def _check_context(spec: ExperimentSpec) -> None:
    """data.seq_len must fit every local model's context (hub models are checked when their trial loads them)."""
    from sentinel.models.loading import context_length

    seq_len = spec.data.get("seq_len", 128)
    for i, model in enumerate(spec.models):
        limit = context_length(model.name)
        if limit is not None and seq_len > limit:
            raise SpecError(f"data.seq_len: {seq_len} is longer than models[{i}] {model.name!r} accepts "
                            f"({limit} positions); use at most {limit}")


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
    from sentinel.models import loading

    for i, model in enumerate(spec.models):
        if _model_folder(model.name, f"models[{i}]") is None:
            try:
                loading.check_reachable(model.name, model.options.get("gguf_file"),
                                        bool(model.options.get("trust_remote_code", False)))
            except ValueError as exc:
                raise SpecError(f"models[{i}]: {str(exc).removeprefix('model: ')}".splitlines()[0]) from None


def _known_keys(d: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    for key in d:
        if key not in allowed:
            prefix = "" if where == "config" else f"{where}."
            raise SpecError(f"{prefix}{key}: unknown key in {where}; allowed: {', '.join(allowed)}")


def _experiment_name(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
        raise SpecError(f"experiment: {value!r} is not a folder name (letters, digits, '.', '_', '-')")
    return value


def _entries(value: Any, where: str, check, extra_keys: Sequence[str] = ()) -> list[Entry]:
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, list):
        raise SpecError(f"{where}: {value!r} is not a list of names or {{name, options}} mappings")
    entries, seen = [], set()
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        levels: tuple[float, ...] = ()
        seeds: tuple[int, ...] = ()
        if isinstance(item, dict):
            _known_keys(item, ("name", "options", *extra_keys), at)
            name, options, finetune = item.get("name"), item.get("options") or {}, item.get("finetune") or {}
            if item.get("levels") is not None:
                levels = tuple(_levels(item["levels"], f"{at}.levels"))
            if item.get("seeds") is not None:
                seeds = tuple(_seeds(item["seeds"], f"{at}.seeds"))
        else:
            name, options, finetune = item, {}, {}
        if not isinstance(name, str) or not name:
            raise SpecError(f"{at}: {item!r} has no name (a string, or a mapping with 'name')")
        for key, mapping in (("options", options), ("finetune", finetune)):
            if not isinstance(mapping, dict):
                raise SpecError(f"{at}.{key}: {mapping!r} is not a mapping")
        check(name, at)
        entry = Entry(name, options, finetune, levels, seeds)
        if entry.key() in seen:
            raise SpecError(f"{where}: {name!r} appears twice with the same options (duplicate grid cells)")
        seen.add(entry.key())
        entries.append(entry)
    return entries


def _check_strategy(name: str, at: str) -> None:
    from sentinel.pruning import STRATEGIES

    if name not in STRATEGIES:
        raise SpecError(f"{at}: {STRATEGIES.unknown_message(name)}")


def _check_model(name: str, at: str) -> None:
    """Shipped names and local folders must hold a supported model type; hub names are checked at run time."""
    from sentinel.models import supported_model_types

    folder = _model_folder(name, at)
    if folder is None:
        return
    if folder.suffix == ".gguf":  # a GGUF file (or the shipped SmolLM2): its header names the architecture
        from sentinel.models.loading import gguf_architecture

        try:
            model_type = gguf_architecture(folder)
        except Exception as exc:  # not a GGUF file, gguf not installed
            raise SpecError(f"{at}: {name!r} is not a readable GGUF file ({type(exc).__name__}: {exc})".splitlines()[0]) from None
        if model_type not in supported_model_types():
            raise SpecError(f"{at}: GGUF architecture {model_type!r} of {name!r} is not one of "
                            f"{', '.join(sorted(supported_model_types()))}")
        return
    config = folder / "config.json"
    if not config.is_file():
        raise SpecError(f"{at}: {name!r} is a folder without config.json (not a transformers model)")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise SpecError(f"{at}: {str(config)!r} is not valid JSON") from None
    allowed = supported_model_types()
    if model_type not in allowed:
        raise SpecError(f"{at}: model_type {model_type!r} of {name!r} is not one of {', '.join(sorted(allowed))}")


def _model_folder(name: str, at: str) -> Path | None:
    """The local folder a model name refers to: a path, or a shipped `sentinel/...` name; None for hub names."""
    from sentinel.models import loading

    if name in loading.KNOWN or name in loading.MINILM_ALIASES or Path(name).expanduser().exists():
        try:
            return Path(loading.resolve_source(name))  # the loader's own name -> folder rule, and its messages
        except ValueError as exc:
            raise SpecError(f"{at}: {str(exc).removeprefix('model: ')}".splitlines()[0]) from None
    if name.startswith("sentinel/"):
        raise SpecError(f"{at}: {name!r} is not a shipped model; shipped: {', '.join(loading.KNOWN)}")
    return None  # a hub name: load_model resolves it (cache or download) when the trial runs


def _levels(value: Any, at: str = "levels") -> list[float]:
    if not isinstance(value, list):
        value = [value]
    if not value:
        raise SpecError(f"{at}: is empty; give at least one fraction in (0, 1)")
    levels = []
    for i, level in enumerate(value):
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
            raise SpecError(f"{at}[{i}]: {level!r} is not a fraction in (0, 1)")
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
        seed = _int(seed, f"{at}[{i}]", minimum=0)
        if seed in seeds:
            raise SpecError(f"{at}: {seed!r} appears twice (duplicate grid cells)")
        seeds.append(seed)
    return seeds


def _dataclass_fields(cls) -> dict[str, Any]:
    """name -> default for each field of a dataclass."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
        else:
            out[f.name] = None
    return out


def _typed_section(value: Any, defaults: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Checks keys against `defaults` and each value's type against its default's type."""
    if not isinstance(value, dict):
        raise SpecError(f"{where}: {value!r} is not a mapping")
    _known_keys(value, tuple(defaults), where)
    out = {}
    for key, item in value.items():
        default, at = defaults[key], f"{where}.{key}"
        if isinstance(default, bool):
            item = _bool(item, at)
        elif isinstance(default, int):
            item = _int(item, at)
        elif isinstance(default, float):
            item = _float(item, at)
        elif isinstance(default, str) and not isinstance(item, str):
            raise SpecError(f"{at}: {item!r} is not a string")
        out[key] = item
    return out


def _data(value: Any) -> dict[str, Any]:
    from sentinel.pipeline import DataSpec

    defaults = _dataclass_fields(DataSpec)
    data = _typed_section(value, defaults, "data")
    for key in ("seq_len", "stride", "batch_size", "score_batches"):
        if key in data and data[key] < 1:
            raise SpecError(f"data.{key}: {data[key]!r} must be >= 1")
    seq_len, stride = data.get("seq_len", defaults["seq_len"]), data.get("stride", defaults["stride"])
    if "stride" not in data and stride > seq_len:
        data["stride"] = stride = seq_len  # a short window without a stride: disjoint windows
    if stride > seq_len:
        raise SpecError(f"data.stride: {stride!r} must be in (0, seq_len={seq_len}] (set data.stride too)")
    for key in ("source", "eval_source"):
        if data.get(key) is not None or key == "source":
            _check_source(data.get(key, defaults["source"]), f"data.{key}")
    return data


def _check_source(source: Any, at: str) -> None:
    if not isinstance(source, str) or not source:
        raise SpecError(f"{at}: {source!r} is missing; give {', '.join(BUNDLED_SOURCES)}, a file or folder, "
                        "or a datasets name as path:name:split")
    if source in BUNDLED_SOURCES or Path(source).expanduser().exists():
        return
    if ":" in source and not source.startswith((".", "/", "~")):
        return  # a `datasets` name (path:name:split), resolved when the trial loads it
    raise SpecError(f"{at}: {source!r} does not exist and is not one of {', '.join(BUNDLED_SOURCES)} "
                    "or a datasets name as path:name:split")


def _finetune(value: Any, data: Mapping[str, Any], where: str = "finetune") -> dict[str, Any] | None:
    from sentinel.finetune import FinetuneConfig

    if value is None or value is False:
        return None  # no recovery fine-tuning
    section = _typed_section(value, _dataclass_fields(FinetuneConfig), where)
    section.setdefault("batch_size", data.get("batch_size", 8))  # unset: the same batches as scoring
    try:
        FinetuneConfig(**section)
    except ValueError as exc:
        raise SpecError(f"{where}.{exc}".splitlines()[0]) from None
    return section


def _resources(value: Any) -> Resources:
    if not isinstance(value, dict):
        raise SpecError(f"resources: {value!r} is not a mapping with cpu and gpu")
    _known_keys(value, ("cpu", "gpu"), "resources")
    out = {}
    for key in ("cpu", "gpu"):
        item = value.get(key, getattr(Resources, key))
        if isinstance(item, bool) or not isinstance(item, (int, float)) or item < 0:
            raise SpecError(f"resources.{key}: {item!r} is not a number >= 0")
        out[key] = float(item)
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
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise SpecError(f"{at}: {value!r} is not writable ({str(probe)!r} is a file)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise SpecError(f"{at}: {value!r} is not writable (no write permission on {str(probe)!r})")
    try:  # permissions do not tell everything (/proc, read-only mounts): try, and leave nothing behind
        tempfile.TemporaryDirectory(dir=probe, prefix=".sentinel-probe-").cleanup()
    except OSError as exc:
        raise SpecError(f"{at}: {value!r} is not writable ({str(probe)!r}: {exc.strerror or exc})") from None
    return str(path)


def _choice(value: Any, allowed: Sequence[str], at: str) -> str:
    if value not in allowed:
        raise SpecError(f"{at}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _bool(value: Any, at: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"{at}: {value!r} is not true or false")
    return value


def _float(value: Any, at: str) -> float:
    # PyYAML reads `1e-3` (no dot) as a string, per YAML 1.1: accept the numbers people write
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{at}: {value!r} is not a number")
    return float(value)


def _int(value: Any, at: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{at}: {value!r} is not an integer")
    if minimum is not None and value < minimum:
        raise SpecError(f"{at}: {value!r} must be >= {minimum}")
    return value
