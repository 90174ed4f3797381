"""The trial contract: what one grid cell is (`TrialSpec`, with its `DataSpec`, `FinetuneConfig` and
`GenerationSpec`); what it produces is sentinel.result's (`TrialResult`, `TrialRecord`), a refused cell's included
(`failed_record`).

Every field carries its rule (sentinel.contract), so a spec is valid wherever it exists: parsed from YAML by
the orchestrator, built by a library user, or rebuilt from JSON inside a Ray worker. Rules that read local files
(a source's documents, a shipped model's type and context length) call sentinel.preflight; what needs the
network or the machine (is the hub reachable, are there enough CPUs) is the orchestrator's pre-flight.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from sentinel.contract import (  # LEVEL and SEED: re-exported with the contract
    LEVEL,
    SEED,
    Contract,
    SpecError,
    boolean,
    checked,
    integer,
    mapping,
    nested,
    one_of,
    optional,
    text,
)
from sentinel.finetune import FinetuneConfig
from sentinel.models.adapters import ADAPTERS
from sentinel.models.removal import EMPTY_LAYER_FAMILIES
from sentinel.pruning import STRATEGIES
from sentinel.pruning.selection import POLICIES
from sentinel import preflight
from sentinel.export.formats import DTYPES as GGUF_DTYPES
from sentinel.result import TrialRecord, TrialResult, digest, identity
from sentinel.tasks import TASKS

METHODS = ("remove", "mask")
ENGINES = ("transformers", "llama.cpp")  # where generation speed is measured
REFERENCE_STRATEGY = "random"  # what draws the layouts of the random reference


def reference_seed(draw: int) -> int:
    """The seed of reference layout `draw`: a stream apart from the grid's seeds (a digest, not draw + offset), so
    the `random` strategy's seed s and reference draw s are different layouts and a test of one against the other
    never compares a layout with itself."""
    return int(digest(["random_reference", draw]), 16)


# ---------------------------------------------------------------------------------------------- rules


def data_source(value: Any, name: str) -> str:
    """A bundled corpus, an existing file or folder, or a `datasets` name as path:name:split."""
    from sentinel.data import BUNDLED

    if isinstance(value, str) and value:
        if value in BUNDLED:
            return value
        path = Path(value).expanduser()
        if path.exists():
            stat = path.stat()
            problem = preflight.local_text_problem(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
            if problem:
                raise SpecError(f"{name}: {value!r} {problem}")
            return value
        if ":" in value and not value.startswith((".", "/", "~")):
            return value  # a `datasets` name, resolved when a trial loads it
    raise SpecError(f"{name}: {value!r} does not exist and is not one of {', '.join(BUNDLED)} "
                    "or a datasets name as path:name:split")


CALIBRATIONS = ("resample", "fixed")


def bos_rule(value: Any, name: str) -> str:
    """auto | true | false; YAML's true and false are accepted as themselves."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return one_of(("auto", "true", "false"))(value, name)


def device_name(value: Any, name: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise SpecError(f"{name}: {value!r} is not one of auto, cpu, cuda, cuda:N")
    return value


def model_name(value: Any, name: str) -> str:
    """A hub name (checked when its trial loads it), or a shipped/local model of a supported type."""
    from sentinel.models import supported_model_types

    value = text(value, name)
    try:
        model_type, _ = preflight.local_model(value)
    except ValueError as exc:
        raise SpecError(f"{name}: {str(exc).removeprefix('model: ')}".splitlines()[0]) from None
    if model_type is not None and model_type not in supported_model_types():
        try:  # not registered: the generic fallback must find and verify an adapter (a 2-layer random model)
            preflight.check_fallback(value)
        except ValueError as exc:
            raise SpecError(f"{name}: {str(exc).splitlines()[0]} (registered: "
                            f"{', '.join(sorted(supported_model_types()))})") from None
    return value


def strategy_name(value: Any, name: str) -> str:
    if value not in STRATEGIES:
        raise SpecError(f"{name}: {STRATEGIES.unknown_message(value)}")
    return value


def task_name(value: Any, name: str) -> str:
    return one_of(("auto", *TASKS.names()))(value, name)


def extra_task_names(value: Any, name: str) -> tuple[str, ...]:
    """Extra evaluations: registered task names (sentinel.tasks) and `lm_eval:<task>` (lm-eval-harness, checked
    against lm-eval's task index and our offline tasks), each once."""
    from sentinel import zero_shot

    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise SpecError(f"{name}: {value!r} is not a list of task names")
    for i, task in enumerate(value):
        if not isinstance(task, str) or not task:
            raise SpecError(f"{name}[{i}]: {task!r} is not a task name")
        if task.startswith(zero_shot.PREFIX):
            try:
                preflight.lm_eval_task(task)
            except ValueError as exc:
                raise SpecError(f"{name}[{i}]: {exc}") from None
        elif task not in TASKS:
            raise SpecError(f"{name}[{i}]: {task!r} is not a registered task ({', '.join(TASKS.names())}) or "
                            "lm_eval:<task>")
    if len(set(value)) != len(value):
        raise SpecError(f"{name}: {list(value)!r} names a task twice")
    return tuple(value)


DTYPES = ("float32", "float16", "bfloat16")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flex_attention")


def _gguf_file(value: Any, name: str) -> str:
    value = text(value, name)
    if not value.endswith(".gguf") or "/" in value or "\\" in value or value.startswith("."):
        raise SpecError(f"{name}: {value!r} is not a .gguf file name (a file inside the model's folder or repo)")
    return value


# The rule of each keyword of sentinel.models.load_model besides the name and the device (a test keeps this
# equal to load_model's signature). Typed, not only named: `trust_remote_code: 'false'` is a string, which
# transformers would read as true and run a model folder's own code; a bool is a YAML bool, nothing else.
MODEL_OPTIONS = {
    "dtype": optional(one_of(DTYPES)),
    "attn_implementation": one_of(ATTN_IMPLEMENTATIONS),
    "trust_remote_code": boolean,
    "gguf_file": optional(_gguf_file),
}


def model_options(value: Any, name: str) -> dict[str, Any]:
    """Keyword arguments of sentinel.models.load_model (besides the name and the device), each by its rule."""
    value = mapping(value, name)
    for key in value:
        if key not in MODEL_OPTIONS:
            raise SpecError(f"{name}.{key}: not an option of load_model; allowed: {', '.join(MODEL_OPTIONS)}")
    return {key: MODEL_OPTIONS[key](item, f"{name}.{key}") for key, item in value.items()}


# ---------------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class DataSpec(Contract):
    """Where a trial's text comes from and how it is cut. Splits are by document (sentinel.data)."""

    source: str = checked("gutenberg", data_source)  # scoring and fine-tuning text; evaluation unless eval_source
    eval_source: str | None = checked(None, optional(data_source))  # e.g. "wikitext-2" (its eval split)
    seq_len: int = checked(128, integer(minimum=1))
    stride: int | None = checked(None, optional(integer(minimum=1)))  # sliding-window stride; None: min(64, seq_len)
    batch_size: int = checked(8, integer(minimum=1))
    score_batches: int = checked(4, integer(minimum=1))  # batches of the score split used to score heads
    # evaluation tokens: windows of seq_len spread evenly over the eval split, the same for every cell (0 = the
    # whole split, sliding windows of seq_len every stride tokens)
    eval_tokens: int = checked(0, integer(minimum=0))
    split_seed: int = checked(0, integer(minimum=0))  # document split; fixed across trials: every cell sees the same data
    sts_pairs: int = checked(0, integer(minimum=0))  # encoders: a seeded random sample of STS-B test pairs (0 = all 1379)
    # scoring data: drawn per trial seed from documents spread over the score split, or one draw for every seed
    calibration: str = checked("resample", one_of(CALIBRATIONS))
    calibration_documents: int = checked(0, integer(minimum=0))  # distinct documents drawn (0: one per window)
    bos: str = checked("auto", bos_rule)  # start every window with BOS: auto (as the tokenizer does), true, false
    # the dense model on the whole eval split too, once per model (the row's dense_full): how far the sample is from it
    whole_split_reference: bool = checked(True, boolean)

    def check_together(self) -> None:
        if self.stride is None:
            object.__setattr__(self, "stride", min(64, self.seq_len))
        if self.stride > self.seq_len:
            raise SpecError(f"stride: {self.stride!r} must be in (0, seq_len={self.seq_len}]")
        sizes = preflight.split_sizes(self.source, self.eval_source, self.split_seed)
        if sizes is None:  # a datasets name: checked when a trial loads it
            return
        score_documents, eval_characters = sizes
        if self.calibration_documents > score_documents:
            raise SpecError(f"calibration_documents: {self.calibration_documents} is more than the {score_documents} "
                            f"documents of {self.source!r}'s score split")
        if self.eval_tokens > eval_characters:  # a token is at least one character: surely too many
            raise SpecError(f"eval_tokens: {self.eval_tokens} is more than the eval split holds ({eval_characters:,} "
                            "characters); use fewer, or 0 for the whole split")


@dataclass(frozen=True)
class GenerationSpec(Contract):
    """Generation speed and KV-cache memory, dense beside pruned, once per distinct pruned layout (causal LMs with an
    LM head; other models record none): greedy generation of `new_tokens` after random prompts of `prompt_tokens`,
    at batch 1 and `batch_size`, `rounds` alternating measurements (the median ratio and its spread are reported)."""

    prompt_tokens: int = checked(64, integer(minimum=1, maximum=8192))
    new_tokens: int = checked(32, integer(minimum=1, maximum=4096))
    batch_size: int = checked(8, integer(minimum=1, maximum=1024))
    rounds: int = checked(3, integer(minimum=3, maximum=20))  # a spread needs at least 3 timings
    # "llama.cpp": both models exported to GGUF (gguf_dtype) and timed in llama.cpp at batch 1 (batch_size unused)
    engine: str = checked("transformers", one_of(ENGINES))
    gguf_dtype: str = checked("f16", one_of(GGUF_DTYPES))

    LATE_DEFAULTS = {"engine": "transformers", "gguf_dtype": "f16"}


@dataclass(frozen=True)
class TrialSpec(Contract):
    """Everything that determines one cell's result. Its canonical JSON digest is the trial id."""

    model: str = checked(rule=model_name)
    strategy: str = checked(rule=strategy_name)
    level: float = checked(rule=LEVEL)
    seed: int = checked(0, SEED)
    strategy_options: Mapping[str, Any] = checked(rule=mapping, factory=dict)
    policy: str = checked("global", one_of(POLICIES))
    min_heads_per_layer: int = checked(1, integer(minimum=1))
    method: str = checked("remove", one_of(METHODS))  # "remove": physical slicing (real speedup); "mask": gates only
    data: DataSpec = nested(DataSpec, factory=DataSpec)
    finetune: FinetuneConfig | None = nested(FinetuneConfig, factory=FinetuneConfig, optional=True)
    device: str = checked("auto", device_name)  # "cpu", "cuda", "cuda:N" or "auto" (CUDA when there is one)
    bf16: bool = checked(False, boolean)  # bf16 autocast, CUDA only
    model_options: Mapping[str, Any] = checked(rule=model_options, factory=dict)  # passed to load_model
    measure_speed: bool = checked(True, boolean)
    task: str = checked("auto", task_name)  # evaluation task (sentinel.tasks); auto: the first that fits the model
    # bias compensation on removal (FLAP): removed heads' calibration means move into the output projection's bias
    compensate: bool = checked(False, boolean)
    generation: GenerationSpec | None = nested(GenerationSpec, None, optional=True)  # None: not measured
    # evaluations beside the primary task, at every stage, into metrics.parquet (verdicts stay on the primary)
    extra_tasks: tuple[str, ...] = checked((), extra_task_names)
    # a layout of the random reference (strategy random): `seed` is the draw's index, and its heads come from a
    # stream of their own (reference_seed), so no grid seed of `random` repeats a reference layout
    reference: bool = checked(False, boolean)

    # fields added after results were published, left out of the trial id while at their default, so the ids of
    # earlier cells (and resuming their runs) do not change
    LATE_DEFAULTS = {"compensate": False, "generation": None, "extra_tasks": [], "reference": False}

    def check_together(self) -> None:
        strategy = STRATEGIES.get(self.strategy)
        strategy.resolve(self.strategy_options, where="strategy_options")  # the strategy's own rules, field paths
        if self.reference and self.strategy != REFERENCE_STRATEGY:
            raise SpecError(f"reference: a reference layout is drawn by strategy {REFERENCE_STRATEGY!r}, not "
                            f"{self.strategy!r}")
        if self.finetune is not None and self.finetune.method == "lora":
            preflight.check_lora(self)
        if self.compensate and self.method != "remove":
            raise SpecError(f"compensate: bias compensation is part of physical removal (method: remove); got method "
                            f"{self.method!r}")
        model_type, _ = preflight.local_model(self.model)
        if self.compensate and model_type in ADAPTERS and ADAPTERS.get(model_type).stacks:
            raise SpecError(f"compensate: {self.model!r} is a {model_type} encoder-decoder, whose decoder layers do not "
                            "see the calibration tokens; bias compensation needs an encoder or a decoder")
        if strategy.unit == "layer" and model_type is not None and model_type not in EMPTY_LAYER_FAMILIES:
            raise SpecError(f"strategy: {self.strategy!r} removes whole attention sublayers, which only "
                            f"{', '.join(EMPTY_LAYER_FAMILIES)} models can lose; {self.model!r} is a {model_type!r} model")
        if self.compensate and strategy.during_finetune:
            raise SpecError(f"compensate: strategy {self.strategy!r} removes heads while fine-tuning; compensation "
                            "applies to a removal done at once (any other strategy)")
        if strategy.during_finetune and (self.finetune is None or self.finetune.steps < 1):
            raise SpecError(f"finetune: strategy {self.strategy!r} prunes during fine-tuning; give finetune.steps >= 1")
        if self.device == "cpu" and self.model_options.get("dtype") == "float16":
            raise SpecError("model_options.dtype: 'float16' on device 'cpu' (half-precision CPU kernels are slow or "
                            "missing); use float32 or bfloat16 there, float16 on cuda")
        if self.generation is not None and self.generation.engine == "llama.cpp":
            preflight.check_llamacpp(self, model_type)
        _, limit = preflight.local_model(self.model)
        if limit is not None and self.data.seq_len > limit:
            raise SpecError(f"data.seq_len: {self.data.seq_len} is longer than {self.model!r} accepts "
                            f"({limit} positions); use at most {limit}")
        if model_type is not None:
            preflight.check_against_model(self, limit)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), sort_keys=True, default=str))

    def trial_id(self) -> str:
        return digest(self.identity_dict(self.to_dict()))  # late fields at their defaults left out, in every part


def failed_record(cell: Mapping[str, Any], error: str) -> TrialRecord:
    """The record of a cell that produced no TrialResult (a refused spec, a worker that died): the same fields as a
    finished trial's, nothing measured."""
    try:
        spec = TrialSpec.from_dict(cell)
    except Exception:  # the cell itself is what failed: its raw JSON identifies it
        failed = TrialResult(spec=None, status="failed", error=error, node="")  # type: ignore[arg-type]
        return TrialRecord(failed._row(identity(dict(cell), digest(dict(cell)))))
    return TrialRecord(TrialResult(spec=spec, status="failed", error=error, node="").row())
