"""Files written whole or not at all, and JSON files read with a named error."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import CertMaskError


def write_atomically(out: Path, write: Callable[[Path], None], last: str) -> None:
    """``write(folder)`` into a fresh folder beside ``out``'s files, then rename each into ``out``,
    ``last`` last: an interrupted run never leaves a complete-looking ``last`` file."""
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=out))
    try:
        write(tmp)
        for name in sorted(p.name for p in tmp.iterdir() if p.name != last) + [last]:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomically(path: Path, value) -> None:
    """``path`` holds either its old content or all of ``value`` as JSON, never a torn file."""
    path = Path(path)
    text = json.dumps(value, indent=1) + "\n"
    write_atomically(path.parent, lambda tmp: (tmp / path.name).write_text(text), last=path.name)


def read_json_file(path: Path, what: str):
    """The JSON value of ``path``; an unreadable or torn file is a CertMaskError naming it."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as err:  # UnicodeDecodeError, JSONDecodeError
        raise CertMaskError(f"cannot read {what} {str(path)!r}: {type(err).__name__}: {err}") from None
