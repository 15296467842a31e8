"""Progress on a terminal for long work; silent in a pipe, under --quiet, and in the daemon."""

from __future__ import annotations

import sys
import time


class Progress:
    """Call with ``(done, total=None)``; redraws at most ten times a second on stderr."""

    def __init__(self, label: str, *, enabled: bool = True, stream=None):
        self.label = label
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self._last = 0.0
        self._shown = False

    def __call__(self, done: int, total: int | None = None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and (total is None or done < total):
            return
        self._last = now
        if total:
            text = f"\r{self.label}: {done:,}/{total:,} ({100 * done / total:.0f}%)"
        else:
            text = f"\r{self.label}: {done:,}"
        self.stream.write(text)
        self.stream.flush()
        self._shown = True

    def stage(self, label: str) -> None:
        """Go on to the next stage of the same work: the last stage's line stays as it ended, and what is
        counted next is shown under ``label``."""
        self.close()
        self.label = label
        self._last = 0.0

    def close(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False


def stage(progress, label: str, *, main: bool = False):
    """The callback for the stage ``label`` of a long job. A :class:`Progress` shows every stage under its
    name (:meth:`Progress.stage`); a plain callback counts only the job's ``main`` stage, the one it has
    always been given (None for the others)."""
    if progress is not None and hasattr(progress, "stage"):
        progress.stage(label)
        return progress
    return progress if main else None


def silent(done: int, total: int | None = None) -> None:
    """A progress callback that shows nothing."""
