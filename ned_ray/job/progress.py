"""Job progress for people: images committed so far, images/s, ETA, errors and skipped images, from
the commit markers, for both executors.

The markers are the job's own record of finished work (the same ones a rerun resumes from), so the
figure counts images that are really written, on any storage, from the driver alone. On a terminal
it is one live bar (tqdm); elsewhere (``ray job submit`` logs, files, pipes) one plain line every
``interval`` seconds, and a last one when the job ends.
"""

from __future__ import annotations

import json
import os
import posixpath
import sys
import threading
import time
from typing import Callable, TextIO

from tqdm import tqdm

from ..output.layout import COMMITS, IMAGES_WRITER

__all__ = ["ProgressReporter", "format_progress"]


def format_progress(done: int, total: int, seconds: float, errors: int = 0, skipped: int = 0) -> str:
    """'encoded 512/10000 images (5.1%), 23.4 images/s, ETA 6m45s, 2 errors, 0 skipped'."""
    rate = done / seconds if seconds > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else float("inf")
    share = 100.0 * done / total if total else 100.0
    return (f"encoded {done}/{total} images ({share:.1f}%), {rate:.1f} images/s, ETA {_eta(eta)}, "
            f"{errors} error{'s' if errors != 1 else ''}, {skipped} skipped")


def _eta(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s" if rest >= 60 else f"{rest}s"


def _columns(stream: TextIO) -> int:
    """The width of the terminal ``stream`` writes to (0 when it has none)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


class ProgressReporter:
    """A background thread that shows progress while the job runs: a live bar on a terminal
    (``bar=None``: when ``stream`` is one), else a line every ``interval`` seconds."""

    def __init__(self, fs, root: str, total: int, interval: float = 5.0, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.perf_counter, bar: bool | None = None) -> None:
        self.fs, self.folder, self.total = fs, posixpath.join(root, COMMITS, IMAGES_WRITER), total
        self.interval, self.stream, self.clock = interval, stream or sys.stderr, clock
        self.bar = bool(getattr(self.stream, "isatty", lambda: False)()) if bar is None else bar
        self._tqdm: tqdm | None = None
        self._seen: dict[str, tuple[int, int, int]] = {}  # marker -> (rows, errors, skipped)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ned-ray-progress", daemon=True)
        self._start = 0.0
        self._already = (0, 0, 0)  # (images, errors, skipped) committed before this run (not this run's)

    def _refresh(self) -> None:
        if hasattr(self.fs, "invalidate_cache"):  # object stores cache listings
            self.fs.invalidate_cache()

    def counts(self) -> tuple[int, int, int]:
        """(images, errors, skipped) committed so far (markers read once each)."""
        try:
            paths = [p for p in self.fs.ls(self.folder, detail=False) if p.endswith(".json") and
                     not posixpath.basename(p).startswith(".")]
        except FileNotFoundError:
            return 0, 0, 0
        for path in paths:
            if path not in self._seen:
                marker = json.loads(self.fs.cat_file(path))
                self._seen[path] = (len(marker["image_index"]), int(marker.get("error", 0)), int(marker.get("skipped", 0)))
        rows, errors, skipped = (sum(v) for v in zip(*self._seen.values())) if self._seen else (0, 0, 0)
        return rows, errors, skipped

    def count(self) -> int:
        """Images committed so far."""
        return self.counts()[0]

    def __enter__(self) -> "ProgressReporter":
        self._refresh()
        self._already = self.counts()
        self._start = self.clock()
        if self.bar:
            sized = _columns(self.stream) > 0  # a terminal without a size yet (a fresh pty): 100x24, else tqdm hides the bar
            self._tqdm = tqdm(total=self.total, unit="img", desc="encoding", file=self.stream, dynamic_ncols=sized,
                              ncols=None if sized else 100, nrows=None if sized else 24, smoothing=0,
                              postfix="0 errors, 0 skipped")  # smoothing=0: the average rate, as the plain lines (commits come in bursts)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if exc[0] is None:
            self._report()
        if self._tqdm is not None:
            self._tqdm.close()

    def _report(self) -> None:
        self._refresh()
        done, errors, skipped = (now - before for now, before in zip(self.counts(), self._already))
        if self._tqdm is not None:
            self._tqdm.update(done - self._tqdm.n)
            self._tqdm.set_postfix_str(f"{errors} errors, {skipped} skipped", refresh=True)
        else:
            print(format_progress(done, self.total, self.clock() - self._start, errors, skipped), file=self.stream,
                  flush=True)

    def _loop(self) -> None:
        tick = min(self.interval, 1.0) if self.bar else self.interval  # a bar moves every second
        while not self._stop.wait(tick):
            try:
                self._report()
            except Exception as exc:  # progress must never break the job
                print(f"(progress unavailable: {exc})", file=self.stream, flush=True)
