"""The runnable examples in the docstrings."""
import doctest
import importlib
import pkgutil

import pytest

import certmask_core

MODULES = ["certmask_core"] + sorted(info.name for info in pkgutil.walk_packages(certmask_core.__path__,
                                                                                  "certmask_core."))
"""Every module of the core and the run layer: a new module's examples run without being listed."""
TORCH_MODULES = ["certmask_backends.pytorch.backend", "certmask_backends.pytorch.training"]


@pytest.mark.parametrize("name", MODULES + TORCH_MODULES)
def test_docstring_examples(name):
    if name in TORCH_MODULES:
        pytest.importorskip("torch")
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _readme_blocks(lang):
    text = (ROOT / "README.md").read_text()
    parts = text.split(f"```{lang}\n")[1:]
    return [p.split("```")[0] for p in parts]


def test_ci_runs_the_readme_test_command_verbatim():
    test_command = next(b.strip() for b in _readme_blocks("bash") if "pytest" in b)
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_readme_python_quick_start_runs(capsys):
    pytest.importorskip("torch")
    (code,) = _readme_blocks("python")
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.splitlines()[:2] == ["32 32", "2"]


def test_design_names_every_module():
    """docs/design.md's tables give every module of the core and the run layer its job: a new module
    must be described there before it lands."""
    design = (ROOT / "docs" / "design.md").read_text()
    modules = [p for folder in ("certmask_core", "certmask_core/run")
               for p in sorted((ROOT / folder).glob("*.py")) if p.name != "__init__.py"]
    missing = [str(p.relative_to(ROOT)) for p in modules if f"| `{p.name}` |" not in design]
    assert len(modules) > 30 and not missing, f"docs/design.md does not describe {missing}"
