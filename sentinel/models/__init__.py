"""Architecture adapters, head masking, physical head removal, and pruned-model I/O."""
from sentinel.models.adapters import ADAPTERS, AttentionAdapter, get_adapter, is_causal_lm, supported_model_types
from sentinel.models.activations import output_means
from sentinel.models.layout import (HeadLayout, attention_modules, find_pruneable_heads_and_indices, head_layout, head_slices,
                                    validate_request)
from sentinel.models.masking import HeadMask, mask_heads
from sentinel.models.removal import check_compensable, kept_heads, prune_heads, pruned_heads_v4
from sentinel.models import fallback, t5  # noqa: F401,E402  (the generic fallback for get_adapter; T5's adapter)
from sentinel.models.io import is_pruned_checkpoint, load_pruned, save_pruned
from sentinel.models.loading import load_model

__all__ = [
    "ADAPTERS",
    "AttentionAdapter",
    "HeadLayout",
    "HeadMask",
    "attention_modules",
    "check_compensable",
    "find_pruneable_heads_and_indices",
    "head_slices",
    "get_adapter",
    "head_layout",
    "is_causal_lm",
    "is_pruned_checkpoint",
    "kept_heads",
    "load_model",
    "load_pruned",
    "mask_heads",
    "output_means",
    "prune_heads",
    "pruned_heads_v4",
    "save_pruned",
    "supported_model_types",
    "validate_request",
]
