"""Job progress for people: images committed so far, images/s and ETA, from the commit markers.

The markers are the job's own record of finished work (the same ones a rerun resumes from), so the
figure counts images that are really written, on any storage, from the driver alone.
"""

from __future__ import annotations

import json
import posixpath
import sys
import threading
import time
from typing import Callable, TextIO

from ..output.layout import COMMITS, IMAGES_WRITER

__all__ = ["ProgressReporter", "format_progress"]


def format_progress(done: int, total: int, seconds: float) -> str:
    """'encoded 512/10000 images (5.1%), 23.4 images/s, ETA 6m45s'."""
    rate = done / seconds if seconds > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else float("inf")
    eta_text = "?" if eta == float("inf") else (f"{int(eta // 60)}m{int(eta % 60):02d}s" if eta >= 60 else f"{eta:.0f}s")
    share = 100.0 * done / total if total else 100.0
    return f"encoded {done}/{total} images ({share:.1f}%), {rate:.1f} images/s, ETA {eta_text}"


class ProgressReporter:
    """A background thread that prints progress every ``interval`` seconds while the job runs."""

    def __init__(self, fs, root: str, total: int, interval: float = 5.0, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.fs, self.folder, self.total = fs, posixpath.join(root, COMMITS, IMAGES_WRITER), total
        self.interval, self.stream, self.clock = interval, stream or sys.stderr, clock
        self._seen: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ned-ray-progress", daemon=True)
        self._start = 0.0
        self._already = 0  # images committed before this run (not this run's speed)

    def _refresh(self) -> None:
        if hasattr(self.fs, "invalidate_cache"):  # object stores cache listings
            self.fs.invalidate_cache()

    def count(self) -> int:
        """Images committed by this run so far (markers read once each)."""
        try:
            paths = [p for p in self.fs.ls(self.folder, detail=False) if p.endswith(".json") and
                     not posixpath.basename(p).startswith(".")]
        except FileNotFoundError:
            return 0
        for path in paths:
            if path not in self._seen:
                self._seen[path] = len(json.loads(self.fs.cat_file(path))["image_index"])
        return sum(self._seen.values())

    def __enter__(self) -> "ProgressReporter":
        self._refresh()
        self._already = self.count()
        self._start = self.clock()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if exc[0] is None:
            self._report()

    def _report(self) -> None:
        self._refresh()
        done = self.count() - self._already
        print(format_progress(done, self.total, self.clock() - self._start), file=self.stream, flush=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._report()
            except Exception as exc:  # progress must never break the job
                print(f"(progress unavailable: {exc})", file=self.stream, flush=True)
