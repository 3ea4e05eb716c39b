"""The progress line of a run: a bar, entries done, classes so far, entries running."""

from __future__ import annotations

import collections
import sys
import time

from .tally import CLASSES


class Progress:
    def __init__(self, total, stream=sys.stderr, enabled=True):
        self.total = total
        self.done = 0
        self.counts = collections.Counter()
        self.running = {}
        self.stream = stream
        self.enabled = enabled
        self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()
        self.t0 = time.time()
        self.last = 0.0

    def line(self):
        el = int(time.time() - self.t0)
        counts = " ".join(f"{c[:4]}:{self.counts[c]}" for c in CLASSES if self.counts[c] or c in CLASSES[:5])
        width = 24
        filled = int(width * self.done / max(self.total, 1))
        bar = "#" * filled + "-" * (width - filled)
        running = ",".join(sorted(self.running.values()))[:60]
        return f"[{bar}] {self.done}/{self.total} {el // 60}:{el % 60:02d} {counts} | {running}"

    def update(self, force=False):
        if not self.enabled:
            return
        now = time.time()
        if self.tty:
            if force or now - self.last > 0.2:
                self.stream.write("\r\033[K" + self.line())
                self.stream.flush()
                self.last = now
        elif force or now - self.last > 15:
            self.stream.write(self.line() + "\n")
            self.stream.flush()
            self.last = now

    def start(self, slot, name):
        self.running[slot] = name
        self.update()

    def requeue(self, slot):
        """The entry running in `slot` goes back to the queue (it runs again later)."""
        self.running.pop(slot, None)
        self.update()

    def finish(self, slot, cls):
        self.running.pop(slot, None)
        self.done += 1
        self.counts[cls] += 1
        self.update()

    def close(self):
        if self.enabled:
            if self.tty:
                self.stream.write("\r\033[K" + self.line() + "\n")
            else:
                self.stream.write(self.line() + "\n")
            self.stream.flush()
