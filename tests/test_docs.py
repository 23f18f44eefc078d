"""The runnable examples in the docstrings."""
import doctest
import importlib

import pytest

MODULES = ["certmask_core", "certmask_core.geometry", "certmask_core.coverage",
           "certmask_core.constructions", "certmask_core.certification", "certmask_core.sizes",
           "certmask_core.multipatch", "certmask_core.planning", "certmask_core.run.video",
           "certmask_core.array_backend", "certmask_core.validation",
           "certmask_backends.pytorch.backend", "certmask_backends.pytorch.training"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
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
