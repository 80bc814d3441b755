"""The test suite's own shape: what tests share lives in helper modules (tiny.py, command_line.py,
sample_results.py, task_files.py) and conftest fixtures, never in another test module."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent
# Every test module but this one, whose own text names what it looks for.
MODULES = sorted(p for p in TESTS.glob("test_*.py") if p.name != Path(__file__).name)


def _imports(path: Path) -> set[str]:
    """Top-level module names `path` imports, anywhere in it (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_no_test_module_imports_another():
    offenders = {p.name: sorted(m for m in _imports(p) if m.startswith("test_")) for p in MODULES}
    assert {name: names for name, names in offenders.items() if names} == {}


def test_the_command_line_helper_is_defined_once():
    runners = [
        p.name
        for p in MODULES
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.FunctionDef) and "CliRunner" in ast.unparse(node)
    ]
    assert runners == [], "call the command line through command_line.run"


def test_the_shared_tiny_task_is_not_rebuilt_by_hand():
    by_hand = [p.name for p in MODULES if "with_answers(tiny_model(" in p.read_text()]
    assert by_hand == [], "tiny.tiny_task(family, ...) builds it once per session"
