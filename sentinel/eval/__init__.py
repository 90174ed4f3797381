"""Evaluation: perplexity (sliding window), STS-B Spearman and embedding fidelity, speed and size.

Every quality metric returns a `Metric` (value + direction + the protocol that produced it).
The exact protocols are written down in docs/METRICS.md.
"""
from sentinel.eval.metric import Metric
from sentinel.models.device import autocast, mean_pool, model_device, resolve_device  # re-exported
from sentinel.eval.perplexity import perplexity, window_perplexity, windows
from sentinel.eval.sentence import (
    cosine_pairs,
    embedding_fidelity,
    encode,
    load_stsb,
    sample_pairs,
    sts_spearman,
)
from sentinel.eval.speed import (Stopwatch, compare_throughput, count_parameters, every_core, forward_flops, throughput,
                                 timed)

__all__ = [
    "Metric",
    "Stopwatch",
    "autocast",
    "cosine_pairs",
    "count_parameters",
    "embedding_fidelity",
    "forward_flops",
    "encode",
    "every_core",
    "load_stsb",
    "mean_pool",
    "model_device",
    "perplexity",
    "window_perplexity",
    "resolve_device",
    "sample_pairs",
    "sts_spearman",
    "compare_throughput",
    "throughput",
    "timed",
    "windows",
]
