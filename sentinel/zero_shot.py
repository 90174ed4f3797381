"""Zero-shot evaluation through lm-eval-harness (the optional extra `lmeval`): `lm_eval:<task>`.

The pruned model object and its tokenizer go to lm-eval's HF wrapper (`HFLM(pretrained=model, tokenizer=...)`), and
`lm_eval.simple_evaluate` runs the task on it: nothing is saved or reloaded. With a hub, any lm-eval task name works
(`arc_easy`, `piqa`, `hellaswag`, ...). Offline, the tasks of ours below run through lm-eval as local tasks (a task
config over a local JSON file), built from bundled text:

- `gutenberg_cloze`: a LAMBADA-style last-word cloze (Paperno et al. 2016, lm-eval's `lambada_openai` protocol:
  loglikelihood of " " + the last word given the passage before it; `acc` = the word is the greedy continuation,
  `perplexity` of the target words). Passages come from the held-out (eval) split of the bundled Gutenberg books
  (`sentinel.data.split_documents`, seed 0): paragraphs of 40-150 words whose last sentence ends in a word of at
  least 3 letters; the word is the target, the punctuation after it dropped. Every `stride`-th such paragraph is
  taken, up to `CLOZE_ITEMS`, in document order: deterministic, no model involved in the choice (LAMBADA filtered
  by human guessability; this one does not, so it is easier to guess from local context).

A result row per metric lm-eval reports (`acc`, `acc_norm`, `perplexity`, ...), with its stderr and lm-eval's version.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from sentinel.files import write_file

PREFIX = "lm_eval:"
CLOZE_ITEMS = 200
EXTRA = "lmeval"  # the optional dependency group that installs lm-eval


def _lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise ValueError(f"lm-eval is not installed; install the extra: pip install 'sentinel-bench[{EXTRA}]'") from None
    return lm_eval


def cloze_items(limit: int = CLOZE_ITEMS) -> list[dict[str, str]]:
    """The gutenberg_cloze items: {"text": passage ending in its target word, "target": the word, "source": book}."""
    from sentinel.data import load_documents, split_documents

    candidates = []
    for doc in split_documents(load_documents("gutenberg"), seed=0).eval:
        for paragraph in re.split(r"\n\s*\n", doc.text):
            words = paragraph.split()
            if not 40 <= len(words) <= 150:
                continue
            last = re.fullmatch(r"([A-Za-z]{3,})[.!?]['\"]?", words[-1])
            if last is None:
                continue
            candidates.append({"text": " ".join(words[:-1] + [last.group(1)]), "target": last.group(1),
                               "source": doc.name})
    stride = max(1, len(candidates) // limit)
    return candidates[::stride][:limit]


@functools.lru_cache(maxsize=1)
def _cloze_file() -> str:
    """The items as a JSON-lines file, named by its content in one temp folder per user: every process of every run
    shares it, so workers leave no folder each behind (the file is rewritten atomically, to the same bytes)."""
    text = "\n".join(json.dumps(item) for item in cloze_items()) + "\n"
    folder = Path(tempfile.gettempdir()) / f"sentinel-cloze-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.is_symlink() or folder.stat().st_uid != os.getuid():  # someone else's folder under our name
        folder = Path(tempfile.mkdtemp(prefix="sentinel-cloze-"))
    path = folder / f"gutenberg_cloze-{hashlib.sha256(text.encode()).hexdigest()[:12]}.jsonl"
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        write_file(path, text.encode("utf-8"))
    return str(path)


def _gutenberg_cloze() -> dict[str, Any]:
    return {
        "task": "gutenberg_cloze", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": _cloze_file()}},
        "output_type": "loglikelihood", "test_split": "test",
        "doc_to_text": "{{text.split(' ')[:-1]|join(' ')}}", "doc_to_target": "{{' '+text.split(' ')[-1]}}",
        "metric_list": [{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                        {"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0, "source": "bundled Gutenberg books, eval split (sentinel.zero_shot)"},
    }


LOCAL_TASKS = {"gutenberg_cloze": _gutenberg_cloze}  # what runs offline


@functools.lru_cache(maxsize=1)
def _task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager()  # indexes lm-eval's task configs once per process (seconds)


def check_task(name: str) -> str:
    """A ValueError unless `lm_eval:<task>` names a local task or one lm-eval knows (lm-eval installed)."""
    task = name.removeprefix(PREFIX)
    _lm_eval()
    if task in LOCAL_TASKS:
        return name
    if not task or task not in _task_manager().all_tasks:
        raise ValueError(f"{name!r} is not an lm-eval task (offline tasks of ours: {', '.join(LOCAL_TASKS)}; with a "
                         "hub, any name lm-eval lists)")
    return name


def needs_hub(name: str) -> bool:
    """Whether the task's data comes from the hub (every lm-eval task but ours)."""
    return name.removeprefix(PREFIX) not in LOCAL_TASKS


def evaluate_lm_eval(model: nn.Module, tokenizer: Any, name: str, *, batch_size: int = 8) -> list[dict[str, Any]]:
    """Runs `lm_eval:<task>` on the model object. Returns one row per metric lm-eval reports: {task, metric, value,
    stderr, higher_is_better, protocol}."""
    lm_eval = _lm_eval()
    from lm_eval.models.huggingface import HFLM

    task = name.removeprefix(PREFIX)
    spec = LOCAL_TASKS[task]() if task in LOCAL_TASKS else task
    training = model.training
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    # lm-eval bootstraps a perplexity's stderr in a forked multiprocessing Pool unless DISABLE_MULTIPROC is set; a
    # fork of a process running torch's and Ray's threads can inherit a held lock and hang (it did, in a Ray worker
    # and in the test suite). In-process it draws the same seeded chunks: the same stderr.
    previous = os.environ.get("DISABLE_MULTIPROC")
    os.environ["DISABLE_MULTIPROC"] = "1"
    try:
        out = lm_eval.simple_evaluate(model=lm, tasks=[spec], task_manager=_task_manager(), log_samples=False,
                                      bootstrap_iters=1000, random_seed=0, numpy_random_seed=0, torch_random_seed=0)
    finally:
        model.train(training)
        if previous is None:
            os.environ.pop("DISABLE_MULTIPROC", None)
        else:
            os.environ["DISABLE_MULTIPROC"] = previous
    rows = []
    for reported, results in out["results"].items():
        higher = out.get("higher_is_better", {}).get(reported, {})
        for key, value in results.items():
            metric, _, flt = key.partition(",")
            if not flt or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = results.get(f"{metric}_stderr,{flt}")
            rows.append({
                "task": f"{PREFIX}{reported}", "metric": metric, "value": float(value),
                "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                "higher_is_better": bool(higher.get(metric, True)),
                "protocol": {"task": reported, "lm_eval": lm_eval.__version__ if hasattr(lm_eval, "__version__")
                             else out.get("lm_eval_version"), "samples": out.get("n-samples", {}).get(reported),
                             "filter": flt, "local": task in LOCAL_TASKS, "batch_size": batch_size},
            })
    return rows
