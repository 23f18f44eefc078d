"""Progress bars (tqdm) on stderr; silent when ``CI`` is set or stderr is not a terminal."""
from __future__ import annotations

import os
import sys

from tqdm import tqdm


def progress_bar(total: int, desc: str = "", enabled: bool | None = None) -> tqdm:
    """``with progress_bar(total, "certify") as bar: bar.update(n)``.

    ``enabled=None`` shows the bar only on an interactive terminal outside CI; ``False`` (``--quiet``)
    never shows it.
    """
    if enabled is None:
        enabled = not os.environ.get("CI") and sys.stderr.isatty()
    return tqdm(total=max(int(total), 0), desc=desc, disable=not enabled, file=sys.stderr,
                dynamic_ncols=True)
