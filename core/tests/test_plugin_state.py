"""Plugins keep per-process state on the runtime, never in module globals (docs/plugin-hooks.md).

A process, or a test, can run several runtimes; state in a module would be shared by all of them
and outlive each. This reads every plugin module's source: no ``global`` statement, and no
module-level mutable container under a lower-case name (UPPER_CASE names are constants).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(ROOT.glob("plugins/*/src/*/**/*.py"))
MUTABLE = (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)


def test_there_are_plugin_modules_to_check() -> None:
    assert len(MODULES) > 5


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(ROOT)))
def test_a_plugin_module_keeps_no_state_of_its_own(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    problems = [
        f"line {node.lineno}: `global {', '.join(node.names)}`"
        for node in ast.walk(tree)
        if isinstance(node, ast.Global)
    ]
    for node in tree.body:
        targets: list[ast.expr] = []
        value = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        is_mutable = isinstance(value, MUTABLE) or (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Name)
            and value.func.id in ("dict", "list", "set", "defaultdict", "deque", "Counter")
        )
        for target in targets:
            if (
                isinstance(target, ast.Name)
                and is_mutable
                and not target.id.isupper()
                and target.id != "__all__"
            ):
                problems.append(
                    f"line {node.lineno}: module-level `{target.id}` is a mutable container; "
                    "keep state on an object attached to the runtime at startup"
                )
    assert problems == []
