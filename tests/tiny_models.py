"""Tiny random-init transformers models, built from configs (no download), one per supported type."""
from __future__ import annotations

import torch
import transformers

VOCAB = 97

CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4),
    "bert": lambda: transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64,
    ),
    "roberta": lambda: transformers.RobertaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=70, pad_token_id=1,
    ),
    "xlm-roberta": lambda: transformers.XLMRobertaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=70, pad_token_id=1,
    ),
    "distilbert": lambda: transformers.DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64
    ),
    "llama": lambda: transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    ),
    "mistral": lambda: transformers.MistralConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, sliding_window=None,
    ),
    "qwen2": lambda: transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    ),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, rotary_pct=0.5,
    ),
    "opt": lambda: transformers.OPTConfig(
        vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, word_embed_proj_dim=32,
    ),
}

CAUSAL = {"gpt2", "gpt_neox", "llama", "mistral", "qwen2", "opt"}
GQA = {"llama", "mistral", "qwen2"}


def tiny_model(model_type: str, attn_implementation: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    """A random-init model in eval mode; causal LMs get their LM head, encoders are bare."""
    torch.manual_seed(seed)
    config = CONFIGS[model_type]()
    config._attn_implementation = attn_implementation
    cls = transformers.AutoModelForCausalLM if model_type in CAUSAL else transformers.AutoModel
    model = cls.from_config(config, attn_implementation=attn_implementation)
    return model.eval()


def padded_batch(seed: int = 0, batch: int = 3, length: int = 12) -> dict[str, torch.Tensor]:
    """Token ids with right padding of different lengths (attention_mask 0 on padding)."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(1, batch):
        mask[row, length - 3 * row :] = 0
    input_ids = input_ids.masked_fill(mask == 0, 1)
    return {"input_ids": input_ids, "attention_mask": mask}


def outputs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits for LMs, last hidden state for encoders; zeroed on padding positions."""
    with torch.no_grad():
        out = model(**batch)
    value = out.logits if hasattr(out, "logits") else out.last_hidden_state
    return value * batch["attention_mask"][..., None]
