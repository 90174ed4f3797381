"""Brute-force references for the pruning tests: explicit loops and explicit weight slices, written
independently of sentinel.pruning (module paths spelled out per family, not read from the adapters)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# per family: layer -> (attention parent, q, k, v, o) modules, spelled out by hand
PATHS = {
    "gpt2": lambda m, l: (m.transformer.h[l].attn.c_attn, m.transformer.h[l].attn.c_proj),
    "bert": lambda m, l: _qkvo(m.encoder.layer[l].attention.self, "query", "key", "value", m.encoder.layer[l].attention.output.dense),
    "roberta": lambda m, l: _qkvo(m.encoder.layer[l].attention.self, "query", "key", "value", m.encoder.layer[l].attention.output.dense),
    "xlm-roberta": lambda m, l: _qkvo(m.encoder.layer[l].attention.self, "query", "key", "value", m.encoder.layer[l].attention.output.dense),
    "distilbert": lambda m, l: _qkvo(m.transformer.layer[l].attention, "q_lin", "k_lin", "v_lin", m.transformer.layer[l].attention.out_lin),
    "llama": lambda m, l: _qkvo(m.model.layers[l].self_attn, "q_proj", "k_proj", "v_proj", m.model.layers[l].self_attn.o_proj),
    "mistral": lambda m, l: _qkvo(m.model.layers[l].self_attn, "q_proj", "k_proj", "v_proj", m.model.layers[l].self_attn.o_proj),
    "qwen2": lambda m, l: _qkvo(m.model.layers[l].self_attn, "q_proj", "k_proj", "v_proj", m.model.layers[l].self_attn.o_proj),
    "gpt_neox": lambda m, l: (m.gpt_neox.layers[l].attention.query_key_value, m.gpt_neox.layers[l].attention.dense),
    "opt": lambda m, l: _qkvo(m.model.decoder.layers[l].self_attn, "q_proj", "k_proj", "v_proj", m.model.decoder.layers[l].self_attn.out_proj),
}


def _qkvo(parent, q, k, v, o):
    return getattr(parent, q), getattr(parent, k), getattr(parent, v), o


def o_proj(model, model_type: str, layer: int):
    return PATHS[model_type](model, layer)[-1]


def mean_entropy(model, batches, causal: bool, normalize: bool = False) -> torch.Tensor:
    """[L, H] mean entropy from output_attentions=True under eager attention, one position at a time."""
    sums, counts = None, 0
    for batch in batches:
        with torch.no_grad():
            maps = model(**batch, output_attentions=True).attentions  # L x [B, H, T, T]
        probs = torch.stack(maps, 0).double()  # [L, B, H, T, T]
        if sums is None:
            sums = torch.zeros(probs.shape[0], probs.shape[2], dtype=torch.float64)
        mask = batch["attention_mask"]
        for b in range(mask.shape[0]):
            for t in range(mask.shape[1]):
                if not mask[b, t]:
                    continue
                keys = int(mask[b, : t + 1].sum()) if causal else int(mask[b].sum())
                if normalize and keys <= 1:
                    continue
                p = probs[:, b, :, t, :]  # [L, H, T]
                h = -(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum(-1)  # [L, H]
                sums += h / math.log(keys) if normalize else h
                counts += 1
    return (sums / counts).float()


def head_norms(model, model_type: str, layer: int, heads: int, kv_heads: int) -> torch.Tensor:
    """||Q_h|| + ||K_g(h)|| + ||V_g(h)|| + ||O_h|| from weights sliced by hand."""
    mods = PATHS[model_type](model, layer)
    group = heads // kv_heads
    out = []
    if model_type == "gpt2":
        c_attn, c_proj = mods  # Conv1D: weight [in, out]; c_attn outputs are [q | k | v] columns
        E = c_attn.weight.shape[1] // 3
        d = E // heads
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            q = c_attn.weight[:, cols]
            k = c_attn.weight[:, E + h * d : E + (h + 1) * d]
            v = c_attn.weight[:, 2 * E + h * d : 2 * E + (h + 1) * d]
            o = c_proj.weight[cols, :]  # inputs of c_proj are its rows
            out.append(sum(float(torch.linalg.norm(w.detach())) for w in (q, k, v, o)))
        return torch.tensor(out)
    if model_type == "gpt_neox":
        qkv, dense = (m.weight for m in mods)  # Linear [out, in]; outputs grouped per head: [q_h | k_h | v_h]
        d = qkv.shape[0] // (3 * heads)
        for h in range(heads):
            base = 3 * d * h
            parts = (qkv[base: base + d], qkv[base + d: base + 2 * d], qkv[base + 2 * d: base + 3 * d],
                     dense[:, h * d: (h + 1) * d])
            out.append(sum(float(torch.linalg.norm(w.detach())) for w in parts))
        return torch.tensor(out)
    q, k, v, o = (m.weight for m in mods)  # Linear: [out, in]
    d = q.shape[0] // heads
    for h in range(heads):
        g = h // group
        parts = (q[h * d : (h + 1) * d], k[g * d : (g + 1) * d], v[g * d : (g + 1) * d], o[:, h * d : (h + 1) * d])
        out.append(sum(float(torch.linalg.norm(w.detach())) for w in parts))
    return torch.tensor(out)


def gate_gradients(model, model_type: str, batches, lm: bool, seed: int = 0) -> torch.Tensor:
    """Mean over batches of |dL/dgate| with hand-made multiplicative gates (own pre-hooks)."""
    layers = model.config.num_hidden_layers
    heads = model.config.num_attention_heads
    gates = [torch.ones(heads, requires_grad=True) for _ in range(layers)]
    handles = []
    for l in range(layers):
        def gate_hook(module, args, l=l):
            x = args[0]  # [B, T, H * d]
            return (x.view(*x.shape[:-1], heads, -1) * gates[l][:, None]).view(x.shape),
        handles.append(o_proj(model, model_type, l).register_forward_pre_hook(gate_hook))
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(layers, heads, dtype=torch.float64)
    try:
        for batch in batches:
            mask = batch["attention_mask"]
            if lm:
                logits = model(**batch).logits  # [B, T, V]
                targets = batch["input_ids"][:, 1:].masked_fill(mask[:, 1:] == 0, -100)
                loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=-100)
            else:
                hidden = model(**batch).last_hidden_state  # [B, T, D]
                pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
                r = torch.randn(pooled.shape, generator=generator)
                loss = (pooled * r).sum(-1).mean()
            grads = torch.autograd.grad(loss, gates)
            total += torch.stack([g.abs() for g in grads]).double()
    finally:
        for h in handles:
            h.remove()
    return (total / len(batches)).float()

