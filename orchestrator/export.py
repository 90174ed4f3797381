"""`sentinel-bench export`: a pruned (or plain) model folder as a GGUF file that llama.cpp runs.

    sentinel-bench export PRUNED_DIR --to gguf --out FILE.gguf [--dtype f32|f16|q8_0] [--overwrite]

PRUNED_DIR is a folder written by `sentinel.save_pruned` (or transformers 4 after prune_heads), a plain model
folder, a .gguf file or a shipped model name. Bad input is one line and exit 2, before any weight is read and with
nothing written: a family llama.cpp cannot take, a folder that is no model, an existing output without
--overwrite, a target or dtype not offered.
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from sentinel.contract import SpecError
from sentinel.export.formats import DTYPES, FAMILIES  # plain facts: a bad-input answer imports no torch
from sentinel.files import UnsafeTarget, check_target

TARGETS = ("gguf",)


def add_cli(subparsers) -> None:
    """The hook orchestrator.cli calls: registers `sentinel-bench export`."""
    parser = subparsers.add_parser("export", help="a pruned model as a GGUF file for llama.cpp",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("model", metavar="PRUNED_DIR", help="a pruned or plain model folder (or .gguf, or shipped name)")
    parser.add_argument("--to", default="gguf", help=f"target format ({', '.join(TARGETS)})")
    parser.add_argument("--out", required=True, help="the file to write")
    parser.add_argument("--dtype", default="f16", help=f"weight type ({', '.join(DTYPES)}; default f16)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.set_defaults(func=cmd_export)


def _model_type(source: str) -> str | None:
    """The model family read from the source's own files (config.json or the GGUF header, checked against the
    file's size), without loading weights; None for a hub name."""
    from sentinel.models.loading import local_model_type

    try:
        return local_model_type(source)
    except ValueError as exc:
        raise SpecError(str(exc).splitlines()[0]) from None


def check_request(args: argparse.Namespace) -> None:
    """Every bad-input case, in one SpecError line, before any weight is read."""
    if args.to not in TARGETS:
        raise SpecError(f"--to: {args.to!r} is not one of {', '.join(TARGETS)}")
    if args.dtype not in DTYPES:
        raise SpecError(f"--dtype: {args.dtype!r} is not one of {', '.join(DTYPES)}")
    out = Path(args.out)
    if out.is_dir():
        raise SpecError(f"--out: {args.out!r} is a folder; name the .gguf file to write")
    if (out.exists() or out.is_symlink()) and not args.overwrite:
        raise SpecError(f"--out: {args.out!r} exists; pass --overwrite to replace it")
    try:
        check_target(out)  # a link, device or FIFO is never replaced, --overwrite or not
    except UnsafeTarget as exc:
        raise SpecError(f"--out: {exc}") from None
    if not out.parent.is_dir():
        raise SpecError(f"--out: the folder {str(out.parent)!r} does not exist")
    model_type = _model_type(args.model)
    if model_type is not None and model_type not in FAMILIES:
        raise SpecError(f"model: {args.model!r} is a {model_type!r} model; llama.cpp export takes the Llama family "
                        f"({', '.join(FAMILIES)})")


class Terminated(KeyboardInterrupt):
    """SIGTERM during an export: raised like Ctrl-C, so the temp file is removed on the way out."""


def _terminate(signum: int, frame) -> None:
    raise Terminated(signum)


def cmd_export(args: argparse.Namespace) -> int:
    check_request(args)
    previous = signal.signal(signal.SIGTERM, _terminate)  # a batch scheduler's stop leaves no partial file
    try:
        return _export(args)
    except KeyboardInterrupt as exc:
        signum = exc.args[0] if isinstance(exc, Terminated) else signal.SIGINT
        print(f"export: interrupted; nothing was written to {args.out!r}", file=sys.stderr)
        return 128 + int(signum)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _export(args: argparse.Namespace) -> int:
    from sentinel.export import export_gguf
    from sentinel.models.loading import load_model

    try:
        model, tokenizer = load_model(args.model)
        path = export_gguf(model, tokenizer, args.out, dtype=args.dtype, overwrite=args.overwrite)
    except ValueError as exc:  # ExportError, and load_model's one-line errors on a bad folder
        raise SpecError(str(exc).splitlines()[0]) from None
    except OSError as exc:  # a full disk, a read-only folder, a name too long, a link planted since the check
        raise SpecError(f"--out: cannot write {args.out!r} ({exc.strerror or exc}); nothing was left there") from None
    from sentinel.export.gguf_export import export_architecture
    from sentinel.models.layout import head_layout

    layout = head_layout(model)
    print(f"{path}: {export_architecture(layout.heads, layout.kv_heads)} architecture, {layout.total_heads} query heads "
          f"in {layout.num_layers} layers, {args.dtype}, {path.stat().st_size / 2**20:.1f} MiB")
    return 0
