"""Head layout, masking and physical removal: one generic implementation for every adapter.

Head ids. `prune_heads` and `mask_heads` take *original* head ids by default, as transformers 4's
`prune_heads` did: head 3 of layer 0 is the head that was number 3 in the dense model, however many prunes
came before, so composed prunes cannot silently hit a different head. A head that is already gone is
ignored with a warning (v4's behaviour). `ids="current"` takes positions in the model as it is now (what
scores of an already-pruned model are indexed by). Each attention module remembers which original heads it
still holds (`sentinel_heads` / `sentinel_kv_heads`), and `config.pruned_heads` says which are gone, in v4's
format, so checkpoints load in either library.

GQA unit (Llama, Mistral, Qwen2): query head h reads KV head h // group_size (transformers'
`repeat_kv`). A removal request is honoured when every KV group that keeps any query head keeps the
*same number* of them; a group left with none is removed whole (its K/V rows go too). Removing whole
groups, or the same number of query heads from every group, both satisfy this. Anything else is a
ValueError naming the layer and the per-group counts it would leave.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D, prune_linear_layer

from sentinel.models.adapters import AttentionAdapter, get_adapter
from sentinel.models.device import eval_mode, model_device, to_device

HeadRequest = Mapping[int, Iterable[int]]
Batch = Mapping[str, torch.Tensor]  # {"input_ids": [B, T], "attention_mask": [B, T]}


@dataclass(frozen=True)
class HeadLayout:
    """The heads of a model as it is now."""

    num_layers: int
    heads: tuple[int, ...]  # query heads per layer
    kv_heads: tuple[int, ...]  # key/value heads per layer (== heads unless GQA)
    head_dim: int

    @property
    def total_heads(self) -> int:
        return sum(self.heads)

    def group_size(self, layer: int) -> int:
        return self.heads[layer] // self.kv_heads[layer] if self.kv_heads[layer] else 1  # 1 for an empty layer


# ---------------------------------------------------------------------------- locating modules


def blocks(model: nn.Module, adapter: AttentionAdapter | None = None) -> list[nn.Module]:
    """The model's layers in head-index order: one ModuleList, or (encoder-decoders) several stacks in turn,
    each block then being the submodule `suffix` of a stack's block."""
    adapter = adapter or get_adapter(model)
    if not adapter.stacks:
        return list(model.base_model.get_submodule(adapter.layers))
    return [block.get_submodule(suffix) for path, suffix in adapter.stacks for block in model.base_model.get_submodule(path)]


def attention_modules(model: nn.Module, adapter: AttentionAdapter | None = None) -> list[nn.Module]:
    """The per-layer attention modules (what returns attention probabilities under eager attention)."""
    adapter = adapter or get_adapter(model)
    return [block.get_submodule(adapter.attention) for block in blocks(model, adapter)]


def output_projections(model: nn.Module, adapter: AttentionAdapter | None = None) -> list[nn.Module]:
    adapter = adapter or get_adapter(model)
    return [block.get_submodule(adapter.o) for block in blocks(model, adapter)]


def visit_output_inputs(model: nn.Module, batches: Sequence[Batch], visit: Callable[[int, torch.Tensor], None]) -> int:
    """Runs the model over `batches` (eval mode, no gradients) and calls `visit(layer, x)` with each layer's output
    projection input at the batch's non-padding tokens, x = [N, heads * head_dim] (the heads' concatenated outputs:
    what redundancy, flap and wanda_sp read, and what bias compensation averages). Returns the number of
    non-padding tokens seen."""
    keep: list[torch.Tensor] = []  # the current batch's non-padding positions, [B, T] bool

    def capture(layer: int):
        return lambda module, args: visit(layer, args[0].detach()[keep[0]])

    handles = [proj.register_forward_pre_hook(capture(l)) for l, proj in enumerate(output_projections(model))]
    return forward_with_hooks(model, batches, handles, keep)


def forward_with_hooks(model: nn.Module, batches: Sequence[Batch], handles: list, keep: list[torch.Tensor]) -> int:
    """Runs the model over `batches` (eval mode, no gradients) with hooks already registered (`handles`, removed at
    the end, whatever happens); before each forward pass `keep[0]` is set to the batch's non-padding positions
    [B, T] for the hooks to read. Returns the number of non-padding tokens seen."""
    device, tokens = model_device(model), 0
    try:
        with eval_mode(model), torch.no_grad():
            for batch in batches:
                batch = to_device(batch, device)
                keep[:] = [batch["attention_mask"].bool()]
                tokens += int(keep[0].sum())
                model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return tokens


def output_means(model: nn.Module, batches: Sequence[Batch]) -> list[torch.Tensor]:
    """Per layer, float64 [heads * head_dim] on CPU: the mean over the non-padding tokens of `batches` of the output
    projection's input, i.e. of every head's output channels (what bias compensation puts in place of the heads
    it removes)."""
    if not batches or not any(int(b["attention_mask"].sum()) for b in batches):
        raise ValueError("compensate: the calibration batches hold no non-padding token; there is no mean to compensate with")
    layout = head_layout(model)
    sums = [torch.zeros(n * layout.head_dim, dtype=torch.float64) for n in layout.heads]

    def accumulate(layer: int, x: torch.Tensor) -> None:
        sums[layer] += x.double().sum(0).cpu()

    tokens = visit_output_inputs(model, batches, accumulate)
    return [s / tokens for s in sums]


def _out_features(module: nn.Module) -> int:
    return module.nf if isinstance(module, Conv1D) else module.out_features


def _layer_layout(block: nn.Module, adapter: AttentionAdapter) -> tuple[int, int, int]:
    head_dim = int(getattr(block.get_submodule(adapter.attention), adapter.head_dim_attr))
    if adapter.qkv:
        heads = _out_features(block.get_submodule(adapter.qkv)) // (3 * head_dim)
        return heads, heads, head_dim
    heads = _out_features(block.get_submodule(adapter.q)) // head_dim
    kv_heads = _out_features(block.get_submodule(adapter.k)) // head_dim
    return heads, kv_heads, head_dim


def head_layout(model: nn.Module, adapter: AttentionAdapter | None = None) -> HeadLayout:
    """Number of layers, query heads and KV heads per layer (as the model is now), and head_dim. Every function here
    takes the model's adapter as an optional last argument (default: get_adapter(model)), as the fallback passes
    the candidate it verifies."""
    adapter = adapter or get_adapter(model)
    per_layer = [_layer_layout(block, adapter) for block in blocks(model, adapter)]
    return HeadLayout(
        num_layers=len(per_layer),
        heads=tuple(h for h, _, _ in per_layer),
        kv_heads=tuple(kv for _, kv, _ in per_layer),
        head_dim=per_layer[0][2],
    )


# ---------------------------------------------------------------------------- validation


def validate_request(
    layout: HeadLayout, request: HeadRequest, *, allow_empty_layer: bool = False, allow_empty: bool = False
) -> dict[int, list[int]]:
    """Checks a {layer: [head, ...]} request and returns it normalised (sorted lists).

    Raises ValueError naming the layer/head and what is allowed; never changes anything.
    """
    if not isinstance(request, Mapping):
        raise ValueError(f"heads: expected a mapping {{layer: [head, ...]}}, got {type(request).__name__}")
    if not allow_empty and (
            not request or not any(list(v) if not isinstance(v, (str, bytes)) else [v] for v in request.values())):
        raise ValueError("heads: the request is empty; give at least one {layer: [head, ...]}")
    normalised: dict[int, list[int]] = {}
    for layer, heads in request.items():
        if not _is_index(layer) or not 0 <= layer < layout.num_layers:
            raise ValueError(f"layer: {layer!r} is not a layer index in [0, {layout.num_layers - 1}]")
        if isinstance(heads, (str, bytes)) or not isinstance(heads, Iterable):
            raise ValueError(f"layer {layer}: expected a list of head indices, got {heads!r}")
        heads = list(heads)
        n = layout.heads[layer]
        for head in heads:
            if not _is_index(head) or not 0 <= head < n:
                raise ValueError(f"layer {layer}: head {head!r} is not a head index in [0, {n - 1}]")
        if len(set(heads)) != len(heads):
            dupes = sorted({h for h in heads if heads.count(h) > 1})
            raise ValueError(f"layer {layer}: duplicate head indices {dupes}")
        if not allow_empty_layer and len(heads) >= n:
            raise ValueError(
                f"layer {layer}: removing all {n} heads would empty the layer; at most {n - 1} may be removed"
            )
        if heads:
            normalised[int(layer)] = sorted(int(h) for h in heads)
    return normalised


def _is_index(value: object) -> bool:
    # bool is an int subclass; True as a head index is almost certainly a bug
    return isinstance(value, int) and not isinstance(value, bool) or (
        isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point()
    )


def _kept_groups(layout: HeadLayout, layer: int, removed: list[int]) -> tuple[list[int], list[int]]:
    """Kept query heads and kept KV heads of one layer, or a ValueError for an uneven GQA request."""
    group = layout.group_size(layer)
    kept = [h for h in range(layout.heads[layer]) if h not in set(removed)]
    per_group = [sum(1 for h in kept if h // group == g) for g in range(layout.kv_heads[layer])]
    nonzero = {c for c in per_group if c}
    if len(nonzero) > 1:
        raise ValueError(
            f"layer {layer}: GQA groups of {group} query heads would keep {per_group} heads; every kept group "
            f"must keep the same number (remove whole groups, or the same number of heads from each group)"
        )
    kept_kv = [g for g, c in enumerate(per_group) if c]
    return kept, kept_kv


# ---------------------------------------------------------------------------- masking


class HeadMask:
    """Per-head gates applied by a forward pre-hook on each layer's output projection.

    `gates[layer]` is a float tensor [heads]: 1 keeps a head, 0 masks it. With requires_grad=True the
    gates are leaves that gradients reach (gradient head importance reads `gates[layer].grad`).
    `fills[layer]` (bias compensation, optional) is [heads * head_dim]: what a masked head outputs instead of 0,
    x * gate + (1 - gate) * fill, so a masked model computes what the compensated pruned one does.
    """

    def __init__(self, model: nn.Module, gates: dict[int, torch.Tensor], head_dim: int,
                 fills: Sequence[torch.Tensor] | None = None, adapter: AttentionAdapter | None = None) -> None:
        self.gates = gates
        self.fills = fills
        self._handles = []
        for layer, proj in enumerate(output_projections(model, adapter)):
            self._handles.append(proj.register_forward_pre_hook(self._hook(layer, head_dim)))

    def _hook(self, layer: int, head_dim: int):
        def apply_gate(module: nn.Module, args: tuple):
            x = args[0].unflatten(-1, (-1, head_dim))  # [..., heads, head_dim], the head outputs
            gate = self.gates[layer].to(device=x.device, dtype=x.dtype)[:, None]
            x = x * gate
            if self.fills is not None:
                x = x + (1 - gate) * self.fills[layer].to(device=x.device, dtype=x.dtype).view(-1, head_dim)
            return (x.flatten(-2), *args[1:])

        return apply_gate

    def remove(self) -> None:
        """Detaches the hooks: the model computes exactly what it did before masking."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def masked(self) -> dict[int, list[int]]:
        return {l: torch.nonzero(g == 0).flatten().tolist() for l, g in self.gates.items() if (g == 0).any()}

    def __enter__(self) -> "HeadMask":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def mask_heads(model: nn.Module, heads: HeadRequest | torch.Tensor | None = None, *, requires_grad: bool = False,
               ids: str = "original", compensate: Sequence[Batch] | None = None,
               adapter: AttentionAdapter | None = None) -> HeadMask:
    """Masks heads without changing any weight. `heads=None` installs all-ones gates (for gradients).

    Args:
        model: a transformers model with a head adapter.
        heads: {layer: [head, ...]} to mask (ids per `ids`); or a float tensor [layers, heads] (or [heads], for
            every layer) of gates in the current layout, v4's `head_mask`: head h's output is multiplied by its
            gate, values other than 0 and 1 included, and gradients reach the tensor (its rows are the gates).
        requires_grad: make the gates leaves that gradients reach (for a mapping or None).
        ids: "original" (default) or "current"; see the module docstring.
        compensate: calibration batches: a masked head outputs its mean over them instead of 0 (bias compensation,
            as `prune_heads(..., compensate=)`; masked and pruned then agree).
    Masking every head of a layer is allowed here (it ablates the attention block); removal is not.
    """
    adapter = adapter or get_adapter(model)
    layout = head_layout(model, adapter)
    if compensate is not None:
        check_compensable(model)
    fills = None if compensate is None else output_means(model, compensate)
    if isinstance(heads, torch.Tensor):
        return HeadMask(model, _tensor_gates(layout, heads), layout.head_dim, fills, adapter)
    request = {} if heads is None else _checked(layout, heads, _to_current(model, layout, heads, ids, adapter), True)
    device = next(model.parameters()).device
    gates = {}
    for layer, n in enumerate(layout.heads):
        gate = torch.ones(n, device=device)
        gate[request.get(layer, [])] = 0.0
        gates[layer] = gate.requires_grad_(requires_grad)
    return HeadMask(model, gates, layout.head_dim, fills, adapter)


def _tensor_gates(layout: HeadLayout, gates: torch.Tensor) -> dict[int, torch.Tensor]:
    if not gates.is_floating_point() or gates.ndim not in (1, 2):
        raise ValueError(f"heads: a head_mask tensor must be float [layers, heads] or [heads], got {gates.dtype} "
                         f"{tuple(gates.shape)}")
    rows = gates.expand(layout.num_layers, -1) if gates.ndim == 1 else gates
    if rows.shape[0] != layout.num_layers or any(rows.shape[1] != n for n in layout.heads):
        raise ValueError(f"heads: head_mask shape {tuple(gates.shape)} does not match the model's heads per layer "
                         f"{list(layout.heads)}; pass {{layer: [head, ...]}} for uneven layouts")
    return {layer: rows[layer] for layer in range(layout.num_layers)}


def _checked(layout: HeadLayout, asked: HeadRequest, current: HeadRequest, allow_empty_layer: bool) -> dict[int, list[int]]:
    """validate_request of the converted request; empty only when every head asked for was already gone."""
    emptied = bool(asked) and isinstance(current, Mapping) and not any(current.values()) and asked != current
    return validate_request(layout, current, allow_empty_layer=allow_empty_layer, allow_empty=emptied)


def _original_heads(model: nn.Module, layer: int, attention: nn.Module, current: int) -> int:
    provenance = getattr(attention, "sentinel_heads", None)
    if provenance is None:
        return current
    return max(int(getattr(model.config, "num_attention_heads", 0) or 0), max(provenance, default=-1) + 1)


def _to_current(model: nn.Module, layout: HeadLayout, heads: HeadRequest, ids: str,
                adapter: AttentionAdapter) -> dict[int, list[int]]:
    """A request in original ids as positions in the current layout; already-removed heads are dropped with a
    warning (as transformers 4 did). Shape errors are left to validate_request, which names them."""
    if ids not in ("original", "current"):
        raise ValueError(f"ids: {ids!r} is not one of original, current")
    if ids == "current" or not isinstance(heads, Mapping):
        return heads  # type: ignore[return-value]
    modules = attention_modules(model, adapter)
    out, gone = {}, []
    for layer, wanted in heads.items():
        if not _is_index(layer) or not 0 <= layer < layout.num_layers or isinstance(wanted, (str, bytes)) \
                or not isinstance(wanted, Iterable):
            out[layer] = wanted  # validate_request names the problem
            continue
        wanted = list(wanted)
        provenance = getattr(modules[layer], "sentinel_heads", None) or list(range(layout.heads[layer]))
        n = _original_heads(model, layer, modules[layer], layout.heads[layer])
        for head in wanted:
            if not _is_index(head) or not 0 <= head < n:
                raise ValueError(f"layer {layer}: head {head!r} is not an original head index in [0, {n - 1}]")
        if len(set(map(int, wanted))) != len(wanted):
            raise ValueError(f"layer {layer}: duplicate head indices {sorted({h for h in wanted if wanted.count(h) > 1})}")
        position = {original: i for i, original in enumerate(provenance)}
        gone += [(int(layer), int(h)) for h in wanted if int(h) not in position]
        out[int(layer)] = [position[int(h)] for h in wanted if int(h) in position]
    if gone:
        warnings.warn(f"heads {gone} (layer, original head) were already pruned; ignored", stacklevel=3)
    return out


# ---------------------------------------------------------------------------- per-head slices


@dataclass(frozen=True)
class HeadSlice:
    """The features of one projection that belong to some heads of one layer: the one geometry that masking
    (weights frozen under a mask), removal, weight-magnitude scoring and fine-tuning all read."""

    path: str  # the projection, relative to the block
    role: str  # "q", "k", "v" or "o"
    outputs: bool  # True: output features (q/k/v rows and their bias); False: input features (o columns)
    index: torch.Tensor  # feature indices, ascending


def _rows(units: list[int], unit_size: int, offset: int = 0) -> torch.Tensor:
    return torch.tensor([offset + u * unit_size + i for u in units for i in range(unit_size)], dtype=torch.long)


def head_slices(adapter: AttentionAdapter, layout: HeadLayout, layer: int, heads: list[int],
                kv_heads: list[int]) -> list[HeadSlice]:
    """Where query heads `heads` and KV heads `kv_heads` of `layer` live: head h is features
    [h * head_dim, (h + 1) * head_dim) of q (and of o's inputs), KV head g the same rows of k and v. A fused
    qkv (GPT-2's c_attn) holds [q | k | v] along its outputs, without GQA; one grouped per head (GPT-NeoX)
    holds [q_h | k_h | v_h] for each head in turn."""
    d = layout.head_dim
    o = HeadSlice(adapter.o, "o", False, _rows(heads, d))
    if adapter.qkv and adapter.qkv_per_head:
        return [HeadSlice(adapter.qkv, role, True,
                          torch.tensor([h * 3 * d + offset + i for h in heads for i in range(d)], dtype=torch.long))
                for role, offset in (("q", 0), ("k", d), ("v", 2 * d))] + [o]
    if adapter.qkv:
        width = layout.heads[layer] * d
        return [HeadSlice(adapter.qkv, role, True, _rows(heads, d, offset))
                for role, offset in (("q", 0), ("k", width), ("v", 2 * width))] + [o]
    return [HeadSlice(adapter.q, "q", True, _rows(heads, d)), HeadSlice(adapter.k, "k", True, _rows(kv_heads, d)),
            HeadSlice(adapter.v, "v", True, _rows(kv_heads, d)), o]


def weight_dim(module: nn.Module, outputs: bool) -> int:
    """The weight dimension that indexes output (or input) features: Linear is [out, in], Conv1D [in, out]."""
    return (1 if outputs else 0) if isinstance(module, Conv1D) else (0 if outputs else 1)


def slice_parameters(block: nn.Module, piece: HeadSlice) -> list[tuple[nn.Parameter, int, torch.Tensor]]:
    """(parameter, dim, index) of a slice: the weight, and the bias for output features (o's bias is not per head)."""
    module = block.get_submodule(piece.path)
    index = piece.index.to(module.weight.device)
    out = [(module.weight, weight_dim(module, piece.outputs), index)]
    if piece.outputs and module.bias is not None:
        out.append((module.bias, 0, index))
    return out


def find_pruneable_heads_and_indices(heads: Iterable[int], n_heads: int, head_size: int,
                                     already_pruned_heads: Iterable[int]) -> tuple[set[int], torch.Tensor]:
    """transformers 4's helper of that name, for code written against it (docs/MIGRATION.md).

    Args:
        heads: original ids of the heads to prune.
        n_heads: heads the layer has now; head_size: features per head.
        already_pruned_heads: original ids removed earlier.
    Returns:
        (the original ids still present, to prune now; the indices of the features to keep, in the current layout).
    """
    gone = set(already_pruned_heads)
    heads = set(heads) - gone
    position = {h: h - sum(1 for g in gone if g < h) for h in heads}  # where an original head sits now
    kept = [p for p in range(n_heads) if p not in set(position.values())]
    return heads, _rows(kept, head_size)


# ---------------------------------------------------------------------------- physical removal

# Families whose attention module can lose every head: its forward returns (output, weights) and its output
# projection is its own `o_proj`, so an empty one adds the projection's bias (or nothing) to the residual stream.
EMPTY_LAYER_FAMILIES = ("llama", "mistral", "qwen2")


class _EmptyAttention:
    """An attention sublayer with every head removed (He et al. 2024's dropped attention): no projections left to
    compute, nothing read from or written to the KV cache; it adds its output projection's bias (bias
    compensation's) or zeros to the residual stream, which is what masking all its heads gives."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        nothing = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)
        return self.o_proj(nothing), None


@functools.lru_cache(maxsize=None)
def _empty_class(cls: type) -> type:
    return type(f"Empty{cls.__name__}", (_EmptyAttention, cls), {"__module__": __name__})


def _check_empty_layers(model: nn.Module, layout: HeadLayout, request: dict[int, list[int]]) -> None:
    """Removing every head of a layer: a family whose attention can be empty, and never layer 0 (transformers'
    cache and llama.cpp read the sequence length and the head size from layer 0)."""
    emptied = [layer for layer, removed in request.items() if len(removed) >= layout.heads[layer]]
    if not emptied:
        return
    if model.config.model_type not in EMPTY_LAYER_FAMILIES:
        n = layout.heads[emptied[0]]
        raise ValueError(f"layer {emptied[0]}: removing all {n} heads would empty the layer; at most {n - 1} may be "
                         f"removed (a whole attention sublayer goes only in {', '.join(EMPTY_LAYER_FAMILIES)})")
    if 0 in emptied:
        raise ValueError("layer 0: its attention cannot be removed whole (the KV cache and llama.cpp read the sequence "
                         "length and head size from layer 0); remove heads of later layers")


def _keep(module: nn.Module, index: torch.Tensor, outputs: bool) -> nn.Module:
    """The same layer with only the output (q/k/v rows and bias) or input (o columns; bias whole) features `index`."""
    if isinstance(module, Conv1D):  # weight is [in, out]
        dim = weight_dim(module, outputs)
        new = Conv1D(len(index) if outputs else module.nf, module.weight.shape[0] if outputs else len(index))
        new.weight = nn.Parameter(module.weight.detach().index_select(dim, index).clone())
        new.bias = nn.Parameter((module.bias.detach()[index] if outputs else module.bias.detach()).clone())
        return new.to(module.weight.device)
    with warnings.catch_warnings():  # no features left (a whole sublayer): torch warns that init of an empty weight is a no-op
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        return prune_linear_layer(module, index.to(module.weight.device), dim=0 if outputs else 1).to(module.weight.dtype)


def _prune_block(block: nn.Module, adapter: AttentionAdapter, layout: HeadLayout, layer: int, kept: list[int],
                 kept_kv: list[int]) -> None:
    kept_features: dict[str, list[HeadSlice]] = {}
    for piece in head_slices(adapter, layout, layer, kept, kept_kv):  # a fused qkv gets its three slices at once
        kept_features.setdefault(piece.path, []).append(piece)
    for path, pieces in kept_features.items():  # in feature order: [q | k | v] or per head, as the layer holds them
        index = torch.cat([p.index for p in pieces]).sort().values
        block.set_submodule(path, _keep(block.get_submodule(path), index, pieces[0].outputs))

    attention = block.get_submodule(adapter.attention)
    if not kept:  # the whole sublayer: its forward becomes the empty one (state_dict names unchanged)
        attention.__class__ = _empty_class(type(attention))
    for attr, rule in adapter.attrs.items() if kept else ():
        setattr(attention, attr, rule(len(kept), len(kept_kv), layout.head_dim))
    # remember which original heads survive, so prunes compose and save_pruned can write them out
    attention.sentinel_heads = [attention.sentinel_heads[h] for h in kept]
    attention.sentinel_kv_heads = [attention.sentinel_kv_heads[g] for g in kept_kv]


def _compensate(block: nn.Module, adapter: AttentionAdapter, layout: HeadLayout, removed: list[int],
                mean: torch.Tensor) -> None:
    """Adds what the removed heads output on average, read through the output projection, to its bias:
    b += W_O[:, cols] @ mean[cols] (cols: the removed heads' channels). A bias is created where there is none."""
    o = block.get_submodule(adapter.o)
    cols = _rows(removed, layout.head_dim).to(o.weight.device)
    weight, mean = o.weight.detach().double(), mean.to(o.weight.device)[cols]
    shift = mean @ weight[cols, :] if isinstance(o, Conv1D) else weight[:, cols] @ mean  # [out]
    if o.bias is None:
        o.bias = nn.Parameter(torch.zeros(shift.shape[0], dtype=o.weight.dtype, device=o.weight.device))
    with torch.no_grad():
        o.bias += shift.to(o.bias.dtype)


def check_compensable(model: nn.Module) -> None:
    """A ValueError unless every output projection can take a bias (nn.Linear or GPT-2's Conv1D) and the model reads
    its calibration batches (input_ids and attention_mask) with every layer (not an encoder-decoder: T5's decoder
    layers read other tokens)."""
    if get_adapter(model).stacks:
        raise ValueError(f"compensate: {model.config.model_type} is an encoder-decoder; its decoder layers do not see "
                         "the calibration tokens, so their means are undefined here (encoders and decoders only)")
    for layer, o in enumerate(output_projections(model)):
        if not isinstance(o, (nn.Linear, Conv1D)):
            raise ValueError(f"compensate: layer {layer}'s output projection is a {type(o).__name__}, which cannot take "
                             "a bias; bias compensation needs nn.Linear or Conv1D")


def _ensure_provenance(model: nn.Module, layout: HeadLayout, adapter: AttentionAdapter) -> None:
    for layer, attention in enumerate(attention_modules(model, adapter)):
        if getattr(attention, "sentinel_heads", None) is None:
            attention.sentinel_heads = list(range(layout.heads[layer]))
            attention.sentinel_kv_heads = list(range(layout.kv_heads[layer]))


def prune_heads(model: nn.Module, heads: HeadRequest, *, ids: str = "original",
                compensate: Sequence[Batch] | None = None, adapter: AttentionAdapter | None = None) -> nn.Module:
    """Physically removes heads in place and returns the model.

    Slices q/k/v output rows (and biases) and the output projection's input columns, then updates the
    attributes the forward pass reads and `config.pruned_heads`. The whole request is validated before
    anything changes.

    Args:
        model: a transformers model whose `config.model_type` has an adapter.
        heads: {layer: [head, ...]}.
        ids: "original" (default: ids in the dense model, as transformers 4's prune_heads; heads already
            removed are ignored with a warning) or "current" (positions in the model as it is now).
        compensate: calibration batches for bias compensation (FLAP, An et al. 2024): each removed head's mean
            output over them, read through the output projection, is added to that projection's bias (created
            where the family has none, e.g. Llama's o_proj), so the layer's mean output on them is unchanged.
    Returns:
        The same model object, smaller.
    """
    adapter = adapter or get_adapter(model)
    layout = head_layout(model, adapter)
    request = _checked(layout, heads, _to_current(model, layout, heads, ids, adapter), True)
    _check_empty_layers(model, layout, request)
    if not request:
        return model  # every requested head was already gone (warned)
    plan = {layer: _kept_groups(layout, layer, removed) for layer, removed in request.items()}
    means = None
    if compensate is not None:
        check_compensable(model)
        means = output_means(model, compensate)  # of the model as it is, before anything is removed
    _ensure_provenance(model, layout, adapter)
    layer_blocks = blocks(model, adapter)
    for layer, (kept, kept_kv) in plan.items():
        if means is not None:
            removed = [h for h in range(layout.heads[layer]) if h not in set(kept)]
            _compensate(layer_blocks[layer], adapter, layout, removed, means[layer])
        _prune_block(layer_blocks[layer], adapter, layout, layer, kept, kept_kv)
    model.config.pruned_heads = pruned_heads_v4(model, adapter)
    if adapter.after_prune is not None:
        adapter.after_prune(model)
    return model


def pruned_heads_v4(model: nn.Module, adapter: AttentionAdapter | None = None) -> dict[int, list[int]]:
    """{layer: [original head, ...]} removed so far: transformers 4's `config.pruned_heads`."""
    out = {}
    for layer, attention in enumerate(attention_modules(model, adapter)):
        kept = getattr(attention, "sentinel_heads", None)
        if kept is not None:
            n = _original_heads(model, layer, attention, len(kept))
            removed = sorted(set(range(n)) - set(kept))
            if removed:
                out[layer] = removed
    return out


def kept_heads(model: nn.Module) -> dict[int, dict[str, list[int]]]:
    """For each layer, the original indices of the query and KV heads the model still has."""
    layout = head_layout(model)
    out = {}
    for layer, attention in enumerate(attention_modules(model)):
        out[layer] = {
            "heads": list(getattr(attention, "sentinel_heads", None) or range(layout.heads[layer])),
            "kv_heads": list(getattr(attention, "sentinel_kv_heads", None) or range(layout.kv_heads[layer])),
        }
    return out
