"""Device selection, mixed precision and embedding pooling: shared by scoring, evaluation, fine-tuning and the pipeline."""
from __future__ import annotations

import contextlib
from typing import ContextManager, Iterator, Mapping

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turns a device request into a torch.device, refusing CUDA where there is none.

    Args:
        device: "auto" (CUDA if available, else CPU), "cpu", "cuda" or "cuda:N", or a torch.device.
    Returns:
        The torch.device to use.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise ValueError(f"device: {device!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N'")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} was requested but CUDA is not available; use 'cpu' or 'auto'")
        index = int(device[5:]) if ":" in device else None
        if index is not None and index >= torch.cuda.device_count():
            raise ValueError(
                f"device: {device!r} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        return torch.device(device)
    raise ValueError(f"device: {device!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N'")


def autocast(device: str | torch.device, bf16: bool) -> ContextManager:
    """bfloat16 autocast on CUDA when `bf16`, otherwise a context that changes nothing.

    CPU runs always stay in float32: CPU bf16 autocast is slow on most hosts and would make CPU
    results (the tests, the reference numbers) depend on the host's bf16 support.
    """
    device = torch.device(device)
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (models here live on one device)."""
    return next(model.parameters()).device


def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the non-padding tokens.

    Args:
        last_hidden_state: [B, T, D].
        attention_mask: [B, T], 1 on real tokens, 0 on padding.
    Returns:
        [B, D].
    """
    mask = attention_mask[..., None].to(last_hidden_state.dtype)  # [B, T, 1]
    summed = (last_hidden_state * mask).sum(dim=1)  # [B, D]
    # clamp as sentence-transformers does: an all-padding row gives zeros, not NaN
    return summed / mask.sum(dim=1).clamp(min=1e-9)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode (no dropout) inside the block; the previous train/eval flag of every module comes back after."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A scoring/calibration batch's input_ids and attention_mask on `device`."""
    return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
