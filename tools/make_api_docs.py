"""Write ``docs/api.md``, the API reference, from the docstrings of certmask's public API.

``python tools/make_api_docs.py`` writes the file; ``python tools/make_api_docs.py --check`` writes
nothing and exits 1, naming the first differing line, when ``docs/api.md`` differs from what it
would write (``tests/test_api_docs.py`` runs the check).

The public API is ``certmask_core.__all__`` plus the entry points in :data:`EXTRA`. Objects are
grouped by the module that defines them, modules in :data:`MODULE_ORDER`, objects in source order;
each gets its signature (:func:`inspect.signature`) and its docstring: the summary paragraph in
Markdown, the rest (numpydoc) verbatim in a fenced block. Class members (public methods and
properties, inherited ones from certmask classes included) follow their class. The output depends on
the code only, never on the machine, the date or the installed frameworks: torch and the torch
backend are never imported.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
API_PATH = ROOT / "docs" / "api.md"
if str(ROOT) not in sys.path:  # run as a script from anywhere: the package is beside tools/
    sys.path.insert(0, str(ROOT))

EXTRA = [
    ("certmask_core.contract", "Backend"),
    ("certmask_core.array_backend", "NumpyBackend"),
    ("certmask_core.run.experiment", "RunConfig"),
    ("certmask_core.run.experiment", "CertificationRun"),
    ("certmask_core.run.experiment", "run_certification"),
    ("certmask_core.run.sources", "open_data"),
    ("certmask_core.run.sources", "prefetch"),
    ("certmask_core.run.datasets", "load_data"),
]
"""Public objects outside ``certmask_core.__all__``: (module to import from, name)."""

MODULE_ORDER = [
    "certmask_core.geometry", "certmask_core.constructions", "certmask_core.coverage",
    "certmask_core.reference", "certmask_core.certification", "certmask_core.predictions",
    "certmask_core.sizes", "certmask_core.multipatch", "certmask_core.planning", "certmask_core.errors",
    "certmask_core.registry", "certmask_core.contract", "certmask_core.array_backend",
    "certmask_core.run.config", "certmask_core.run.experiment", "certmask_core.run.sources",
    "certmask_core.run.datasets",
]
"""Sections in this order; a module not listed comes after them, by name."""

WIDTH = 100
"""A signature longer than this is written one parameter per line."""


class _Text(str):
    """An annotation kept as the source wrote it (``from __future__ import annotations`` makes it a
    string, which :mod:`inspect` would print in quotes)."""

    def __repr__(self) -> str:
        return str(self)


# ---------------------------------------------------------------------------------------------- objects
def _defining_module(module_name: str, name: str, obj) -> str:
    """The module whose source defines ``name``: ``obj.__module__`` for functions and classes, else
    the certmask_core module whose top level assigns it (constants such as ``ALERT``)."""
    owner = getattr(obj, "__module__", None)
    if (inspect.isclass(obj) or inspect.isroutine(obj)) and owner:
        return owner
    package = importlib.import_module("certmask_core")
    for path in sorted(Path(package.__file__).parent.rglob("*.py")):
        if _assignment(path, name) is not None:
            relative = path.relative_to(Path(package.__file__).parent.parent).with_suffix("")
            return ".".join(p for p in relative.parts if p != "__init__")
    return module_name


def _assignment(path: Path, name: str) -> tuple[int, str | None] | None:
    """``(line, attribute docstring)`` of the top-level assignment of ``name`` in ``path``, if any."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    for i, node in enumerate(body):
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, ast.AnnAssign) else [])
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            nxt = body[i + 1] if i + 1 < len(body) else None
            doc = (inspect.cleandoc(nxt.value.value) if isinstance(nxt, ast.Expr)
                   and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str) else None)
            return node.lineno, doc
    return None


def public_objects() -> list[tuple[str, str, str, object]]:
    """``(defining module, import module, name, object)`` of every documented object."""
    core = importlib.import_module("certmask_core")
    entries = [("certmask_core", name) for name in core.__all__] + EXTRA
    out = []
    for module_name, name in entries:
        obj = getattr(importlib.import_module(module_name), name)
        out.append((_defining_module(module_name, name, obj), module_name, name, obj))
    return out


def _line(module: str, name: str, obj) -> int:
    if inspect.isclass(obj) or inspect.isroutine(obj):
        return inspect.getsourcelines(obj)[1]
    found = _assignment(Path(importlib.import_module(module).__file__), name)
    return found[0] if found else 0


# ---------------------------------------------------------------------------------------------- text
_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj):`(~?)([^`]+)`")


def _markdown(text: str) -> str:
    """reST roles and literals as Markdown code: ``:func:`~a.b``` -> ```b```, ````x```` -> ```x```."""
    text = _ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def _fence(body: str, lang: str) -> list[str]:
    ticks = "```"
    while ticks in body:
        ticks += "`"
    return [ticks + lang, body, ticks]


def _docstring(doc: str | None) -> list[str]:
    """The summary paragraph as Markdown, the rest verbatim in a ``text`` block."""
    if not doc:
        return ["*No docstring.*"]
    doc = doc.strip("\n")
    summary, _, rest = doc.partition("\n\n")
    lines = [_markdown(" ".join(line.strip() for line in summary.splitlines()))]
    if rest.strip():
        lines += [""] + _fence(rest.strip("\n"), "text")
    return lines


def _split_top_level(text: str) -> list[str]:
    """``text`` split at the commas outside brackets and quotes."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def _signature(name: str, obj, method: bool = False, is_class: bool = False) -> str | None:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    if method and params and params[0].name in ("self", "cls"):
        params = params[1:]
    params = [p.replace(annotation=_Text(p.annotation)) if isinstance(p.annotation, str) else p
              for p in params]
    ret = sig.return_annotation
    if is_class or ret is inspect.Signature.empty:
        ret = inspect.Signature.empty
    elif isinstance(ret, str):
        ret = _Text(ret)
    text = str(sig.replace(parameters=params, return_annotation=ret))
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", text)  # an object's default: no address in the docs
    line = f"{name}{text}"
    if len(line) <= WIDTH:
        return line
    inner, _, tail = text[1:].rpartition(")")
    return "\n".join([f"{name}("] + [f"    {p}," for p in _split_top_level(inner)] + [f"){tail}"])


# ---------------------------------------------------------------------------------------------- classes
def _members(cls) -> list[tuple[str, object, type]]:
    """Public methods and properties of ``cls`` and its certmask bases: ``(name, attribute, owner)``,
    the class's own first, each in definition order."""
    seen, out = set(), []
    for owner in cls.__mro__:
        if not owner.__module__.startswith("certmask_core") or owner.__name__.startswith("_"):
            continue
        for name, attr in vars(owner).items():
            if name.startswith("_") or name in seen:
                continue
            if isinstance(attr, (staticmethod, classmethod)):
                attr = attr.__func__
            if isinstance(attr, property) or inspect.isfunction(attr):
                seen.add(name)
                out.append((name, attr, owner))
    return out


def _is_protocol(cls) -> bool:
    return bool(getattr(cls, "_is_protocol", False))


def _render_object(import_module: str, name: str, obj) -> list[str]:
    if inspect.isclass(obj):
        kind = "protocol" if _is_protocol(obj) else "exception" if issubclass(obj, BaseException) else "class"
    elif inspect.isroutine(obj):
        kind = "function"
    else:
        kind = f"constant, `{obj!r}`"
    lines = [f"### `{name}`", "", f"`from {import_module} import {name}` ({kind})", ""]
    if inspect.isclass(obj) and _is_protocol(obj):
        signature = None
    else:
        signature = _signature(name, obj, is_class=inspect.isclass(obj))
    if signature is not None and (inspect.isclass(obj) or inspect.isroutine(obj)):
        lines += _fence(signature, "python") + [""]
    if inspect.isclass(obj) or inspect.isroutine(obj):
        doc = inspect.getdoc(obj)
    else:
        found = _assignment(Path(importlib.import_module(_defining_module(import_module, name, obj))
                                 .__file__), name)
        doc = found[1] if found else None
    lines += _docstring(doc) + [""]
    if inspect.isclass(obj):
        for member, attr, owner in _members(obj):
            inherited = f" (from `{owner.__name__}`)" if owner is not obj else ""
            lines += [f"#### `{name}.{member}`{inherited}", ""]
            if isinstance(attr, property):
                lines += ["*property*", ""]
                doc = inspect.getdoc(attr.fget) if attr.fget else None
            else:
                lines += _fence(_signature(f"{name}.{member}", attr, method=True) or member, "python") + [""]
                doc = inspect.getdoc(attr)
            lines += _docstring(doc) + [""]
    return lines


# ---------------------------------------------------------------------------------------------- page
def render() -> str:
    """The text of ``docs/api.md``."""
    objects = public_objects()
    modules = sorted({m for m, *_ in objects},
                     key=lambda m: (MODULE_ORDER.index(m) if m in MODULE_ORDER else len(MODULE_ORDER), m))
    lines = [
        "# API reference",
        "",
        "<!-- Generated by tools/make_api_docs.py from the docstrings: do not edit by hand. -->",
        "",
        "Generated from the docstrings by `tools/make_api_docs.py`. After changing a public signature or",
        "docstring, run `python tools/make_api_docs.py`; `tests/test_api_docs.py` fails until this file",
        "matches the code.",
        "",
        "The public API is `certmask_core.__all__` (import it from `certmask_core`) and the entry points",
        "of the backend contract and the run layer named below (import them from their modules). Each",
        "object is listed under the module that defines it. How the pieces fit together:",
        "`docs/design.md`; what the certificates promise: `docs/theory.md`; the backend contract:",
        "`docs/backends.md`.",
        "",
        "## Contents",
        "",
    ]
    by_module = {m: sorted((o for o in objects if o[0] == m), key=lambda o: (_line(m, o[2], o[3]), o[2]))
                 for m in modules}
    for module in modules:
        names = ", ".join(f"[`{name}`](#{name.lower()})" for _, _, name, _ in by_module[module])
        lines.append(f"- `{module}`: {names}")
    lines.append("")
    for module in modules:
        doc = inspect.getdoc(importlib.import_module(module))
        summary = _markdown(" ".join(doc.strip().split("\n\n")[0].split())) if doc else ""
        lines += [f"## `{module}`", ""] + ([summary, ""] if summary else [])
        for _, import_module, name, obj in by_module[module]:
            lines += _render_object(import_module, name, obj)
    while lines[-1] == "":
        lines.pop()
    return "\n".join(line.rstrip() for line in "\n".join(lines).split("\n")) + "\n"


def first_difference(expected: str, found: str) -> str | None:
    """None when equal, else which line differs first and how."""
    if expected == found:
        return None
    want, have = expected.splitlines(), found.splitlines()
    for number, (a, b) in enumerate(zip(want, have), 1):
        if a != b:
            return f"line {number}: expected {a!r}, found {b!r}"
    number = min(len(want), len(have)) + 1
    if len(want) > len(have):
        return f"line {number}: expected {want[number - 1]!r}, found the end of the file"
    if len(have) > len(want):
        return f"line {number}: expected the end of the file, found {have[number - 1]!r}"
    return "the files differ in line endings or the final newline"


def check(path: Path | None = None) -> str | None:
    """None when ``path`` (default: ``docs/api.md``) holds what :func:`render` writes, else a description
    of the first difference."""
    path = API_PATH if path is None else Path(path)
    if not path.is_file():
        return f"{path} does not exist"
    return first_difference(render(), path.read_text(encoding="utf-8"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when docs/api.md differs from what would be written")
    args = parser.parse_args(argv)
    if args.check:
        difference = check()
        if difference is not None:
            print(f"docs/api.md is stale: run python tools/make_api_docs.py ({difference})", file=sys.stderr)
            return 1
        print("docs/api.md is up to date")
        return 0
    API_PATH.write_text(render(), encoding="utf-8")
    print(f"wrote {API_PATH.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
