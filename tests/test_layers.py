"""The layer rule of docs/design.md §8: ``s4s.learning`` and ``s4s.eval`` never import each other."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "s4s"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


@pytest.mark.parametrize("package,forbidden", [("learning", "s4s.eval"), ("eval", "s4s.learning")])
def test_learning_and_evaluation_do_not_import_each_other(package, forbidden):
    modules = sorted((SRC / package).glob("*.py"))
    assert len(modules) >= 3, f"no modules found under {SRC / package}"
    offenders = {f"{p.relative_to(SRC)}: {m}" for p in modules for m in _imports(p)
                 if m == forbidden or m.startswith(forbidden + ".")}
    assert not offenders, sorted(offenders)


def test_the_core_imports_neither():
    core = ["schedules", "grids", "solver", "prediction", "diffusers_config", "denoisers", "checks", "io", "teacher",
            "models", "adaptive", "testbed", "distributed"]
    offenders = {f"{name}.py: {m}" for name in core for m in _imports(SRC / f"{name}.py")
                 if m.split(".")[:2] in (["s4s", "learning"], ["s4s", "eval"], ["s4s", "bench"], ["s4s", "cli"])}
    assert not offenders, sorted(offenders)
