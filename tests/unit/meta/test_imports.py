"""The package imports point one way: orchestrator -> sentinel; inside sentinel, models <- pruning/eval/data <- pipeline."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
# what each part of sentinel may import (besides itself); sentinel.contract and sentinel.registry are leaves
ALLOWED = {
    "registry": set(),
    "families": {"registry"},  # each model family's facts: plain data, read by models and export
    "contract": set(),
    "files": set(),  # reading untrusted files: regular files only
    "work_cache": {"files"},  # what every run computes the same, on disk
    "result": {"contract"},  # what a trial produced and its row: plain Python, read by the analysis
    "resampling": {"registry"},  # a metric from its evaluation units: numpy, read by the analysis
    "models": {"registry", "contract", "files", "work_cache", "families"},  # a GGUF's conversion is cached
    "data": {"models", "registry", "contract", "files"},
    "eval": {"models", "registry", "contract"},
    "pruning": {"models", "registry", "contract"},
    "export": {"models", "eval", "registry", "contract", "files", "families"},  # GGUF files and llama.cpp
}
TOP = {"finetune", "pipeline", "trial", "preflight", "tasks", "zero_shot", "__init__"}  # the pipeline layer: may import any of the above


def _imports(path: Path) -> list[str]:
    """Every module a file imports (also inside functions), resolved to absolute names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "sentinel" and len(parts) > 1 else ("__init__" if module == "sentinel" else None)


def test_sentinel_never_imports_the_orchestrator_or_ray():
    for path in (ROOT / "sentinel").rglob("*.py"):
        bad = [m for m in _imports(path) if m.split(".")[0] in ("orchestrator", "ray")]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_layers_inside_sentinel_point_one_way():
    checked = 0
    for path in (ROOT / "sentinel").rglob("*.py"):
        rel = path.relative_to(ROOT / "sentinel")
        part = rel.parts[0].removesuffix(".py")
        if part in TOP:
            continue
        assert part in ALLOWED, f"sentinel/{rel}: add its package to the layer table in this test"
        for module in _imports(path):
            target = _part(module)
            if target is None or target == part:
                continue
            target = target if target in ALLOWED or target in TOP else target.removesuffix(".py")
            assert target in ALLOWED[part], f"sentinel/{rel} imports {module}: {part} may import only {sorted(ALLOWED[part])}"
            checked += 1
    assert checked > 10  # the scan saw the imports (a broken walk would pass vacuously)


def test_no_private_names_imported_across_modules():
    for package in ("sentinel", "orchestrator"):
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("sentinel", "orchestrator"):
                    private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                    assert not private, f"{path.relative_to(ROOT)} imports private {private} from {node.module}"


def test_the_command_line_imports_torch_only_for_commands_that_run_models():
    """`sentinel-bench status/logs/analyze --help` answer in about a second: torch and transformers (8 s on 2 cores)
    are imported by `run` and `submit` (which validate models), not by the parser or the public `sentinel` names."""
    import subprocess
    import sys

    probe = ("import sys, orchestrator.cli, sentinel.contract, orchestrator.results; "
             "orchestrator.cli.build_parser(); print(sorted({'torch', 'transformers'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    used = subprocess.run([sys.executable, "-c", "import sys, sentinel; sentinel.prune_heads; sentinel.models.kept_heads; print('torch' in sys.modules)"],
                          capture_output=True, text=True, check=True).stdout
    assert used.strip() == "True"  # the public names and subpackages still work, imported on first use


def _import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports, at module level or inside functions (a package's __init__ is
    a node too: importing a name from it depends on everything it imports)."""
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in (ROOT / package).rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                submodules = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
                targets = submodules if len(submodules) == len(node.names) else [node.module, *submodules]
            else:
                continue
            edges[module] |= {t for t in targets if t in modules and t != module}
    return edges


def test_no_import_cycle_even_through_imports_inside_functions():
    """An import inside a function hides a cycle from Python, not from a reader: heads -> adapters -> fallback ->
    heads was one. Every module's imports, wherever they are written, form no cycle."""
    edges = {**_import_graph("sentinel"), **_import_graph("orchestrator")}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges[module]):
            assert state.get(target) != 1, " -> ".join(path[path.index(target):] + [module, target]) \
                if target in path else f"{module} -> {target}"
            if target not in state:
                visit(target, path + [module])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [])
    assert sum(len(t) for t in edges.values()) > 50  # the graph was read
    assert "sentinel.models.removal" in edges["sentinel.models.fallback"]  # imports inside functions count too
    assert "orchestrator.analyze.reference" in edges["orchestrator.analyze.summary"]  # the analysis is read too


def test_the_architecture_page_names_every_module():
    """docs/ARCHITECTURE.md describes the code as it is: every module is named there (a strategy module by its
    name in the pruning/<strategy>.py entry)."""
    import re

    page = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    words = set(re.findall(r"[A-Za-z_0-9]+", page))
    missing = []
    for package in ("sentinel", "orchestrator"):
        for path in (ROOT / package).rglob("*.py"):
            if path.name.startswith("__") or "reference" in path.parts:
                continue
            strategy = path.parent.name == "pruning" and path.stem in words
            if path.name not in page and not strategy:
                missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"not named in docs/ARCHITECTURE.md: {missing}"
