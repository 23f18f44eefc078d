"""Progress on stderr: a tqdm bar on a terminal, a plain status line now and then elsewhere.

A job whose stderr is not a terminal (a log file, a pipe, CI) gets one line every
:data:`LINE_SECONDS` seconds (:data:`CI_LINE_SECONDS` when ``CI`` is set), so a long run is never
silent for minutes and a CI log stays short; ``--quiet`` (``enabled=False``) prints nothing.
"""
from __future__ import annotations

import os
import sys
import threading
import time

from tqdm import tqdm

LINE_SECONDS = 15.0
"""Seconds between two plain progress lines when stderr is not a terminal."""
CI_LINE_SECONDS = 30.0
"""Seconds between two plain progress lines when ``CI`` is set."""


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min {seconds % 60:02d} s"


class ProgressLines:
    """A tqdm-like counter (``update``, context manager) that writes a plain line to ``file`` every
    ``interval`` seconds, from a background thread so that a long batch is not silent either:
    ``certify: 128/500 images (26%), 41 s elapsed, about 1 min 59 s left``. With ``interval <= 0``
    every ``update`` writes a line instead (no thread).

    ``per_item`` units of ``total`` make one ``item`` (e.g. the masks of one image), so the line counts
    images while a bar counts passes. A last line is written on closing when any was.
    """

    def __init__(self, total: int, desc: str = "", interval: float = LINE_SECONDS, file=None,
                 per_item: int = 1, item: str = ""):
        self.total, self.desc, self.interval = max(int(total), 0), desc, float(interval)
        self.file = file if file is not None else sys.stderr
        self.per_item, self.item = max(int(per_item), 1), item
        self.n = 0
        self.start = time.monotonic()
        self.lines = 0
        self._written_n = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if self.interval > 0:
            self._thread = threading.Thread(target=self._beat, name="certmask-progress", daemon=True)
            self._thread.start()

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        done, total = self.n // self.per_item, self.total // self.per_item
        text = f"{self.desc}: {done:,}/{total:,}{' ' + self.item if self.item else ''}"
        if total:
            text += f" ({self.n / self.total:.0%})"
        text += f", {_duration(elapsed)} elapsed"
        if 0 < self.n < self.total:
            text += f", about {_duration(elapsed * (self.total - self.n) / self.n)} left"
        return text

    def _write(self) -> None:
        with self._lock:
            print(self.line(), file=self.file, flush=True)
            self.lines += 1
            self._written_n = self.n

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self._write()

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        if self.interval <= 0:
            self._write()

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if self.lines and self._written_n != self.n:
            self._write()

    def __enter__(self) -> ProgressLines:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(total: int, desc: str = "", enabled: bool | None = None, per_item: int = 1,
                 item: str = "", unit: str = "it"):
    """``with progress_bar(total, "certify") as bar: bar.update(n)``.

    ``enabled=None`` shows a tqdm bar on an interactive terminal outside CI and otherwise writes a
    plain status line every :data:`LINE_SECONDS` (:data:`CI_LINE_SECONDS` under ``CI``) seconds
    (:class:`ProgressLines`; ``per_item`` and ``item`` name what it counts, ``unit`` what the bar
    counts); ``True`` always shows the bar; ``False`` (``--quiet``) shows nothing.
    """
    if enabled is None:
        if os.environ.get("CI") or not sys.stderr.isatty():
            return ProgressLines(total, desc, CI_LINE_SECONDS if os.environ.get("CI") else LINE_SECONDS,
                                 per_item=per_item, item=item)
        enabled = True
    return tqdm(total=max(int(total), 0), desc=desc, disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, unit=unit)
