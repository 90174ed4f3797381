"""sentinel: attention-head scoring, masking and removal for transformers models (no Ray)."""
from sentinel.models import head_layout, load_model, load_pruned, mask_heads, prune_heads, save_pruned
from sentinel.pruning import score_heads, select_heads

__version__ = "0.1.0"

__all__ = [
    "head_layout",
    "load_model",
    "load_pruned",
    "mask_heads",
    "prune_heads",
    "save_pruned",
    "score_heads",
    "select_heads",
    "__version__",
]
