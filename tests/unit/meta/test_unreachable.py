"""No statement follows a return, raise, continue or break in its block: such a line never runs, and one did hide a
security setting (a local run's Ray left on every interface after the dry-run's `return 0` was put above it)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
ENDS = (ast.Return, ast.Raise, ast.Continue, ast.Break)


def unreachable(source: str) -> list[int]:
    """Line numbers of statements that follow a block-ending statement in the same block."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        for name in ("body", "orelse", "finalbody"):
            block = getattr(node, name, None)
            if isinstance(block, list):
                lines += [after.lineno for end, after in zip(block, block[1:]) if isinstance(end, ENDS)]
    return lines


def test_no_code_after_a_return_anywhere_in_the_project():
    found = {str(p.relative_to(ROOT)): unreachable(p.read_text(encoding="utf-8"))
             for package in ("sentinel", "orchestrator", "scripts", "benchmarks")
             for p in (ROOT / package).rglob("*.py")}
    assert len(found) > 100  # the scan read the project
    assert {path: lines for path, lines in found.items() if lines} == {}


def test_the_scan_finds_the_line_it_is_for():
    source = "def run(dry):\n    if dry:\n        return 0\n        setting = 1\n    return 1\n"
    assert unreachable(source) == [4]
