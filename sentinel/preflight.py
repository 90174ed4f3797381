"""The checks a trial spec runs against local files before anything expensive starts: a text source's documents,
a local model's config, causal head, context length and pruned-folder sidecar (its architecture on the meta
device), a LoRA target among its modules, an lm-eval task in lm-eval's index, llama.cpp's bindings installed.
Each reader is cached per input, so a grid of 10,000 cells reads a model's files once. sentinel.trial's rules and
`TrialSpec.check_together` call them; what needs the network or the machine is the orchestrator's pre-flight.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

from sentinel.contract import SpecError
from sentinel.export.formats import FAMILIES as GGUF_FAMILIES
from sentinel.models.adapters import ADAPTERS
from sentinel.pruning import STRATEGIES
from sentinel.tasks import TASKS

TrialSpec = Any  # a sentinel.trial.TrialSpec (which calls these checks: importing it here would be a cycle)

LORA_LAYERS = ("Linear", "Conv1D", "Embedding")  # the module types peft's LoRA adapts (a block is not one)


@functools.lru_cache(maxsize=32)
def local_text_problem(path: str, mtime_ns: int, size: int) -> str | None:
    """Why a local file or folder cannot be a text source (not UTF-8 text, empty, too short to split into
    train / score / eval), or None. Read once per file version."""
    from sentinel.data import load_documents, split_documents

    try:
        docs = load_documents(path)
    except UnicodeDecodeError as exc:
        return f"is not UTF-8 text (byte {exc.start} of a file)"
    except (ValueError, OSError) as exc:
        return str(exc).removeprefix("source: ").split(": ", 1)[-1].splitlines()[0]
    if any("\x00" in d.text for d in docs):
        return "holds NUL bytes: a binary file, not text"
    if not any(d.text.strip() for d in docs):
        return "is empty"
    try:
        split_documents([d for d in docs if d.text.strip()])
    except ValueError:
        return "is too short to split into train / score / eval text (a few hundred lines at least)"
    return None


@functools.lru_cache(maxsize=16)
def split_sizes(source: str, eval_source: str | None, split_seed: int) -> tuple[int, int] | None:
    """(documents in the score split, characters in the eval split) of a bundled or local source; None for a
    `datasets` name (not loaded before a trial does)."""
    from sentinel.data import BUNDLED, load_documents, split_documents

    def local(name: str) -> bool:
        return name in BUNDLED or Path(name).expanduser().exists()

    if not local(source) or (eval_source is not None and not local(eval_source)):
        return None
    try:
        splits = split_documents(load_documents(source), seed=split_seed)
        eval_docs = splits.eval if eval_source is None else split_documents(load_documents(eval_source), seed=split_seed).eval
    except (ValueError, OSError, UnicodeDecodeError):
        return None  # data_source says why
    return len(splits.score), sum(len(d.text) for d in eval_docs)


@functools.lru_cache(maxsize=256)
def local_model(model: str) -> tuple[str | None, int | None]:
    """(model_type, context length) of a shipped or local model, read from its files; (None, None) for hub names."""
    from sentinel.models import loading

    model_type = loading.local_model_type(model)
    return model_type, (loading.context_length(model) if model_type else None)


@functools.lru_cache(maxsize=64)
def local_causal(model: str) -> bool | None:
    from sentinel.models import loading

    return loading.local_is_causal(model)


@functools.lru_cache(maxsize=16)
def meta_model(model: str):
    """The local model's architecture on the meta device (sentinel.models.loading.local_meta_model); None for a hub
    name. A bad pruned folder (its sidecar) is one SpecError line here, before Ray."""
    from sentinel.models import loading

    try:
        return loading.local_meta_model(model)
    except ValueError as exc:
        raise SpecError(f"model: {str(exc).splitlines()[0]}") from None


@functools.lru_cache(maxsize=64)
def check_fallback(model: str) -> None:
    from sentinel.models import loading

    loading.check_fallback(model)


@functools.lru_cache(maxsize=64)
def lm_eval_task(task: str) -> str:
    from sentinel import zero_shot

    return zero_shot.check_task(task)


def check_against_model(spec: TrialSpec, limit: int | None) -> None:
    """What a local model's own files decide, before Ray: the tasks fit it (a perplexity needs a causal LM, STS-B
    an encoder, lm-eval's tasks a causal LM), a generation fits its context, a gguf_file is in its folder, a pruned
    folder's sidecar matches its config."""
    from sentinel.models import loading
    from sentinel.zero_shot import PREFIX

    gguf_file = spec.model_options.get("gguf_file")
    if gguf_file:
        folder = Path(spec.model).expanduser()
        if folder.suffix == ".gguf" or not (folder / gguf_file).is_file():
            raise SpecError(f"model_options.gguf_file: {gguf_file!r} is not a file in {spec.model!r} (gguf_file "
                            "names a .gguf inside a folder model; a .gguf path needs none)")
    if loading.is_pruned_checkpoint(Path(spec.model).expanduser()):
        meta_model(spec.model)  # checks the sidecar against the config's architecture
    causal = local_causal(spec.model)
    if causal is None:
        return
    kind = "a causal LM" if causal else "an encoder (no LM head)"
    for field, task in [("task", spec.task)] + [(f"extra_tasks[{i}]", t) for i, t in enumerate(spec.extra_tasks)]:
        fits = causal if task.startswith(PREFIX) else task == "auto" or TASKS.get(task).causal == causal
        if not fits:
            fitting = [t for t in TASKS.names() if TASKS.get(t).causal == causal] + ([f"{PREFIX}<task>"] if causal else [])
            raise SpecError(f"{field}: {task!r} does not fit {spec.model!r}, {kind}; tasks that fit: "
                            f"{', '.join(fitting)}")
    if spec.finetune is not None and spec.finetune.objective == "cross_entropy" and not causal:
        raise SpecError(f"finetune.objective: 'cross_entropy' needs an LM head, and {spec.model!r} is {kind}; "
                        "encoders recover with 'distill' (or 'auto')")
    g = spec.generation
    if g is not None and causal and limit is not None and g.prompt_tokens + g.new_tokens > limit:
        raise SpecError(f"generation: prompt_tokens + new_tokens = {g.prompt_tokens + g.new_tokens} is longer than "
                        f"{spec.model!r} accepts ({limit} positions)")


def check_llamacpp(spec: TrialSpec, model_type: str | None) -> None:
    """generation.engine llama.cpp: a physically pruned model of a family the GGUF export takes, and the bindings
    installed, all said before any trial starts."""
    if spec.method != "remove":
        raise SpecError(f"generation.engine: 'llama.cpp' runs a GGUF export of the pruned model, which needs method "
                        f"'remove'; got {spec.method!r}")
    if model_type is not None and model_type not in GGUF_FAMILIES:
        raise SpecError(f"generation.engine: 'llama.cpp' takes the Llama family ({', '.join(GGUF_FAMILIES)}); "
                        f"{spec.model!r} is a {model_type!r} model")
    if importlib.util.find_spec("llama_cpp") is None:
        raise SpecError("generation.engine: 'llama.cpp' needs llama.cpp's Python bindings: run "
                        "scripts/install_llamacpp.sh")


def check_lora(spec: TrialSpec) -> None:
    """LoRA recovery: physical removal only, and (for a local model) every target names one of its modules."""
    if spec.method != "remove":
        raise SpecError("finetune.method: 'lora' needs method 'remove' (adapters on a masked model would read the "
                        "masked heads)")
    if STRATEGIES.get(spec.strategy).during_finetune:
        raise SpecError(f"finetune.method: 'lora' trains adapters, while strategy {spec.strategy!r} prunes by gates "
                        "on the full weights during fine-tuning; use finetune.method 'full' with it")
    model_type, _ = local_model(spec.model)
    meta = meta_model(spec.model) if model_type is not None else None
    if meta is None:
        return  # a hub model: checked when the trial loads it
    modules = dict(meta.named_modules())
    names = tuple(modules)
    adapter = ADAPTERS.get(model_type) if model_type in ADAPTERS else None
    targets = list(spec.finetune.lora_targets) or ([*adapter.projections(), adapter.o] if adapter else [])
    for target in targets:
        matched = [name for name in names if name == target or name.endswith("." + target)]
        if not matched:
            raise SpecError(f"finetune.lora_targets: {target!r} matches no module of {spec.model!r} (module names "
                            f"end in e.g. {', '.join(sorted({n.split('.')[-1] for n in names if n and not n.split('.')[-1].isdigit()})[:12])})")
        blocks = sorted({type(modules[name]).__name__ for name in matched} - set(LORA_LAYERS))
        if blocks:
            raise SpecError(f"finetune.lora_targets: {target!r} names a {blocks[0]} of {spec.model!r}, not a layer "
                            f"LoRA adapts ({', '.join(LORA_LAYERS)}); name its projections, e.g. "
                            f"{', '.join(adapter.projections()) if adapter else 'q_proj'}")
