"""The core never imports torch or sympy (DESIGN.md section 3)."""
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
