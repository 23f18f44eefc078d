"""A small tqdm-style progress bar on stderr; silent when CI is set or stderr is not a terminal."""
from __future__ import annotations

import os
import sys
import time


class Progress:
    """``with Progress(total, "certify") as bar: bar.update(n)``."""

    def __init__(self, total: int, desc: str = "", enabled: bool | None = None, stream=None):
        self.total, self.desc, self.done = max(int(total), 0), desc, 0
        self.stream = stream or sys.stderr
        if enabled is None:
            enabled = not os.environ.get("CI") and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.enabled = enabled
        self.start = time.perf_counter()

    def __enter__(self):
        self._draw()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

    def update(self, n: int = 1) -> None:
        self.done += n
        self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        frac = self.done / self.total if self.total else 1.0
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
        self.stream.write(f"\r{self.desc} |{bar}| {self.done}/{self.total} "
                          f"[{elapsed:.0f}s<{eta:.0f}s, {rate:.1f}/s]")
        self.stream.flush()
