"""docs/api.md is generated from the docstrings (tools/make_api_docs.py) and must match the code."""
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "make_api_docs.py"


def _tool():
    spec = importlib.util.spec_from_file_location("make_api_docs", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_docs_are_up_to_date():
    difference = _tool().check()
    assert difference is None, f"docs/api.md is stale: run python tools/make_api_docs.py ({difference})"


def test_every_public_name_is_documented():
    import certmask_core

    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    tool = _tool()
    names = list(certmask_core.__all__) + [name for _, name in tool.EXTRA]
    missing = [name for name in names if f"### `{name}`" not in text]
    assert not missing, f"docs/api.md lacks {missing}: run python tools/make_api_docs.py"


def test_check_names_the_first_differing_line(tmp_path):
    tool = _tool()
    stale = tmp_path / "api.md"
    lines = tool.render().splitlines(keepends=True)
    stale.write_text("".join(lines[:5] + ["an edit by hand\n"] + lines[6:]), encoding="utf-8")
    assert tool.check(stale).startswith("line 6: expected ")
    assert "does not exist" in tool.check(tmp_path / "missing.md")


def test_the_generator_imports_no_framework():
    code = (f"import runpy, sys; sys.argv = [{str(TOOL)!r}, '--check']\n"
            f"try:\n    runpy.run_path({str(TOOL)!r}, run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('imported: ' + ','.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'sympy', 'certmask_backends'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    last = out.stdout.splitlines()[-1]
    assert last == "imported: ", f"the generator pulled in {last[len('imported: '):]}"
