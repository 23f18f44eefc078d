"""Module borders: no private name crosses a module, and no two modules import each other (in a circle).

Read from the source (``ast``), so the rules hold for every import, including those inside
functions and under ``TYPE_CHECKING`` (docs/design.md, "Conventions").
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"certmask_core": ROOT / "certmask_core", "certmask_backends": ROOT / "backends",
            "proofs": ROOT / "proofs", "benchmarks": ROOT / "benchmarks", "tools": ROOT / "tools"}
"""Our importable trees, by the name they are imported as (``backends/`` installs as certmask_backends)."""


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = modules()


def own(name: str) -> str | None:
    """The module of ours that ``name`` (a dotted import target) lies in, or None for a third party's."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> list[tuple[ast.stmt, str, list[str]]]:
    """Every import of ``module`` as (node, the module imported from, names imported)."""
    path = MODULES[module]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            found.append((node, source, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node, alias.name, []) for alias in node.names]
    return found


def dependencies(module: str) -> set[str]:
    """Our modules that ``module`` imports (``from package import module`` counts as the module)."""
    found = set()
    for _, source, names in imports(module):
        targets = [f"{source}.{name}" if f"{source}.{name}" in MODULES else source
                   for name in names] or [source]
        found |= {own(target) for target in targets} - {None, module}
    return found


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def third_party_names(module: str) -> set[str]:
    """Names ``module`` binds to other projects' modules and objects (``import pickle``, ``from torch
    import nn``): their private names are theirs to keep stable, not ours."""
    names = set()
    for node, source, _ in imports(module):
        if own(source) is None and isinstance(node, ast.Import):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif own(source) is None:
            names |= {alias.asname or alias.name for alias in node.names}
    return names


def root_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def defined_private_names(tree: ast.AST) -> set[str]:
    """Private names a module defines itself: functions, classes, assignments, ``self._x`` attributes."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return {name for name in names if private(name)}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_name_is_imported_from_another_module(module):
    crossing = [f"line {node.lineno}: from {source} import {name}"
                for node, source, names in imports(module) if own(source) not in (None, module)
                for name in names if private(name)]
    assert not crossing, f"{module} imports private names of other modules: {crossing}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_attribute_of_another_module_is_used(module):
    """``other_module._name`` and ``obj._attr`` for a private name this module does not define itself
    (a third party's private names, such as ``pickle._Unpickler``, are not ours to police)."""
    tree = ast.parse(MODULES[module].read_text())
    own_names, theirs = defined_private_names(tree), third_party_names(module)
    used = [f"line {node.lineno}: {ast.unparse(node)}" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and private(node.attr) and node.attr not in own_names
            and root_name(node) not in theirs]
    assert not used, f"{module} uses private names defined elsewhere: {used}"


def test_no_import_circles():
    """No module imports (directly or through others) a module that imports it back."""
    graph = {module: dependencies(module) for module in MODULES}
    circles = []
    for start in graph:  # depth-first from each module, back to it
        stack, seen = [(start, [start])], set()
        while stack:
            module, path = stack.pop()
            for dependency in graph[module]:
                if dependency == start:
                    circles.append(" -> ".join(path + [start]))
                elif dependency not in seen:
                    seen.add(dependency)
                    stack.append((dependency, path + [dependency]))
    assert not circles, "import circles:\n" + "\n".join(sorted(set(circles)))


def test_the_border_checks_catch_what_they_forbid(tmp_path, monkeypatch):
    """The checks above fail on a private import, a private attribute and a circle (they can fail)."""
    (tmp_path / "one.py").write_text("from tools.two import _hidden\nimport tools.two\n"
                                     "x = tools.two._other\n")
    (tmp_path / "two.py").write_text("from tools import one\n_hidden = _other = 1\n")
    fake = {"tools.one": tmp_path / "one.py", "tools.two": tmp_path / "two.py"}
    monkeypatch.setattr(sys.modules[__name__], "MODULES", fake)
    with pytest.raises(AssertionError, match="_hidden"):
        test_no_private_name_is_imported_from_another_module("tools.one")
    with pytest.raises(AssertionError, match="_other"):
        test_no_private_attribute_of_another_module_is_used("tools.one")
    with pytest.raises(AssertionError, match="tools.one -> tools.two -> tools.one"):
        test_no_import_circles()
