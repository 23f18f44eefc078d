"""The core never imports torch or sympy (docs/design.md, section 1)."""
import subprocess
import sys

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
             "certmask_core.array_backend")


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
