"""The core never imports torch or sympy (docs/design.md, section 1), and the slow twins stay
independent of the code they check (section 6)."""
import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

CODE = """
import importlib, pkgutil, sys
import certmask_core
for info in pkgutil.walk_packages(certmask_core.__path__, "certmask_core."):
    importlib.import_module(info.name)
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "sympy"))
print(",".join(bad))
"""


def test_core_imports_neither_torch_nor_sympy():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"core pulled in: {out.stdout.strip()}"


def test_no_bare_backends_package_is_installed():
    out = subprocess.run([sys.executable, "-c", "import certmask_backends.pytorch, importlib.util;"
                          "print(importlib.util.find_spec('backends'))"],
                         capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "None"


PURE_CORE = ("certmask_core", "certmask_core.geometry", "certmask_core.constructions",
             "certmask_core.validation", "certmask_core.bitsets",
             "certmask_core.coverage", "certmask_core.certification", "certmask_core.double_masking",
             "certmask_core.registry", "certmask_core.errors", "certmask_core.multipatch",
             "certmask_core.sizes", "certmask_core.planning", "certmask_core.contract",
             "certmask_core.array_backend", "certmask_core.reference", "certmask_core.family_geometry",
             "certmask_core.one_round", "certmask_core.predictions")


def test_the_pure_core_never_imports_the_run_layer():
    code = ("import importlib, sys\n"
            f"for name in {PURE_CORE!r}:\n"
            "    importlib.import_module(name)\n"
            "print(','.join(sorted(m for m in sys.modules if m.startswith('certmask_core.run'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"the pure core pulled in: {out.stdout.strip()}"
    # and every pure-core module is named here: a new core module must be added, not forgotten
    import pkgutil

    import certmask_core
    found = {f"certmask_core.{m.name}" for m in pkgutil.iter_modules(certmask_core.__path__)}
    assert found - {"certmask_core.run"} == set(PURE_CORE) - {"certmask_core"}


CORE = Path(__file__).resolve().parents[1] / "certmask_core"
PLAIN = (bool, int, float, str, bytes, tuple, frozenset)
"""Types of the plain constants (``ALERT``, ``NO_VOTE``, ...) the slow twins may take from the core."""


def _core_imports(path: Path, root: Path = CORE) -> list[tuple[str, str | None, int]]:
    """``(module, name, line)`` for every import of a ``certmask_core`` module in ``path`` (a file under
    the package folder ``root``), relative imports resolved; ``name`` is None for
    ``import certmask_core.x``."""
    package = ".".join(path.relative_to(root.parent).parent.parts)  # what ``from .`` names
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names
                      if alias.name.split(".")[0] == "certmask_core"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                module = ".".join(parts[:len(parts) - node.level + 1] + [node.module or ""]).rstrip(".")
            else:
                module = node.module or ""
            if module.split(".")[0] == "certmask_core":
                found += [(module, alias.name, node.lineno) for alias in node.names]
    return sorted(found, key=lambda f: f[2])


def _allowed_in_reference(module: str, name: str | None) -> bool:
    """``CertMaskError``, a value type of geometry.py, or a plain constant; never a function, a
    module or a class of the code the twins check."""
    if name is None or name == "*":
        return False
    obj = getattr(importlib.import_module(module), name, None)
    if obj is None or inspect.ismodule(obj):
        return False
    if (module, name) == ("certmask_core.errors", "CertMaskError"):
        return True
    if module == "certmask_core.geometry" and inspect.isclass(obj):
        return True
    return name.isupper() and isinstance(obj, PLAIN)


def _imports_reference(module: str, name: str | None) -> bool:
    return module == "certmask_core.reference" or (module == "certmask_core" and name == "reference")


def test_the_slow_twins_import_nothing_they_check_and_nothing_imports_them():
    """certmask_core/reference.py takes from the core only CertMaskError, geometry's value types and
    plain constants; no core module imports it but ``certmask_core/__init__.py``, for public names."""
    import certmask_core

    imports = _core_imports(CORE / "reference.py")
    assert {module for module, _, _ in imports} >= {"certmask_core.errors", "certmask_core.geometry"}
    bad = [(module, name, line) for module, name, line in imports if not _allowed_in_reference(module, name)]
    assert not bad, f"certmask_core/reference.py imports what it checks: {bad}"

    importers = []
    for path in sorted(CORE.rglob("*.py")):
        if path == CORE / "reference.py":
            continue
        for module, name, line in _core_imports(path):
            if not _imports_reference(module, name):
                continue
            if path == CORE / "__init__.py" and module == "certmask_core.reference" \
                    and name in certmask_core.__all__:
                continue  # a public name re-exported (coverage_counts_bruteforce)
            importers.append(f"{path.relative_to(CORE.parent)}:{line} imports {name or module}")
    assert not importers, f"core modules import the slow twins: {importers}"


def test_the_isolation_parser_resolves_relative_and_absolute_imports(tmp_path):
    """The helpers of the test above: ``from ..x``, ``from . import x`` and ``import certmask_core.x``
    are all seen; functions and classes of checked modules are refused, value types and constants not."""
    root = tmp_path / "certmask_core"
    (root / "run").mkdir(parents=True)
    (root / "run" / "m.py").write_text("from ..reference import covers\nfrom . import files\n"
                                       "import certmask_core.reference\nimport numpy\n", encoding="utf-8")
    (root / "__init__.py").write_text("from . import reference\n", encoding="utf-8")
    assert _core_imports(root / "run" / "m.py", root) == [
        ("certmask_core.reference", "covers", 1), ("certmask_core.run", "files", 2),
        ("certmask_core.reference", None, 3)]
    assert _core_imports(root / "__init__.py", root) == [("certmask_core", "reference", 1)]
    assert [_imports_reference(m, n) for m, n, _ in _core_imports(root / "run" / "m.py", root)] == [
        True, False, True]
    assert _imports_reference("certmask_core", "reference")
    assert not _allowed_in_reference("certmask_core.coverage", "coverage_counts")
    assert not _allowed_in_reference("certmask_core.multipatch", "MaskGroups")
    assert not _allowed_in_reference("certmask_core", "coverage")
    assert _allowed_in_reference("certmask_core.geometry", "PatchThreat")
    assert _allowed_in_reference("certmask_core.certification", "NO_VOTE")
