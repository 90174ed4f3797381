"""Head scoring strategies (registered by name), head selection, and the seed's entropy/magnitude API.

Every strategy returns HeadScores whose `scores` are HIGHER for MORE important heads.
"""
from sentinel.pruning.base import STRATEGIES, HeadScores, Strategy, score_heads

# importing a strategy module registers it
from sentinel.pruning import (ablation, activation, attention_drop, baseline, dynamic, entropy, gradient, hybrid,  # noqa: E402,F401  isort:skip
                              iterative, l0, magnitude, redundancy, taylor)
from sentinel.pruning.entropy import AttentionStats  # noqa: E402
from sentinel.pruning.selection import Selection, select_heads  # noqa: E402
from sentinel.pruning.weights import LayerHeadWeights, layer_head_weights  # noqa: E402

__all__ = [
    "STRATEGIES",
    "AttentionStats",
    "HeadScores",
    "LayerHeadWeights",
    "Selection",
    "Strategy",
    "layer_head_weights",
    "score_heads",
    "select_heads",
]
