"""The in-memory kernel cache and the statistics.

A *key* is computed from the op and its argument metadata before anything is built (see
`keys.abstract`). The cache maps a key to what is known about it:
  - a `Kernel` (compiled and loaded: run it),
  - a `Fallback` (importing, lowering, compiling or validating failed once: run natively and
    never try again), or
  - a `Pending` compile (non-blocking mode: run natively until the kernel is ready).
"""

from __future__ import annotations

import os
import threading
from collections import Counter, OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass


@dataclass(frozen=True)
class Fallback:
    """A key that runs in native PyTorch, and why."""

    step: str  # decompose | trace | import | lower | compile | run | validate | unsupported | ...
    reason: str  # first line of the error


@dataclass
class Pending:
    """A kernel compiling in the background."""

    future: Future


class KernelCache:
    """Thread-safe map from key to Kernel | Fallback | Pending, with one builder per key, and
    at most `max_entries` entries: the least recently used go first (a kernel evicted here
    loads again from the disk index, without compiling)."""

    def __init__(self, max_entries: int = int(os.environ.get("TORCH_MLIR_EAGER_KERNEL_CACHE_SIZE", "4096"))):
        self._entries: OrderedDict = OrderedDict()
        self._building: dict = {}
        self._lock = threading.Lock()
        self.max_entries = max_entries
        self.on_evict = None  # called with each evicted entry (runners.py drops its runners)

    def get(self, key):
        entry = self._entries.get(key)
        if entry is not None:
            try:
                self._entries.move_to_end(key)
            except KeyError:  # evicted meanwhile by another thread
                pass
        return entry

    def set(self, key, entry):
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            self._evict()

    def _evict(self):
        """Drop the least recently used entries over the bound (not builds in progress)."""
        for _ in range(len(self._entries)):
            if len(self._entries) <= self.max_entries:
                return
            key, entry = self._entries.popitem(last=False)
            if isinstance(entry, Pending):
                self._entries[key] = entry  # still building: keep it, try the next
                continue
            STATS.evict("kernels")
            if self.on_evict is not None:
                self.on_evict(entry)

    def get_or_build(self, key, build):
        """The entry for `key`, calling `build()` at most once per key across threads. If the
        build raises, the waiters try again themselves (the exception goes to its caller)."""
        while True:
            entry = self._entries.get(key)
            if entry is not None:
                return entry, False
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    return entry, False
                event = self._building.get(key)
                owner = event is None
                if owner:
                    event = self._building[key] = threading.Event()
            if owner:
                break
            event.wait()
        try:
            entry = build()
            with self._lock:
                self._entries[key] = entry
                self._evict()
        finally:
            with self._lock:
                self._building.pop(key, None)
            event.set()
        return entry, True

    def clear(self):
        with self._lock:
            self._entries.clear()
        if self.on_evict is not None:
            self.on_evict(None)

    def __len__(self):
        return len(self._entries)

    def entries(self):
        with self._lock:
            return list(self._entries.items())


COMPILED, METADATA, FALLBACK = "compiled_calls", "metadata_calls", "fallback_calls"
CALL_KINDS = (COMPILED, METADATA, FALLBACK)


class _Counts(dict):
    """One thread's hot counters: incremented without a lock, merged when stats() is read."""

    def __init__(self):
        super().__init__(dict.fromkeys(HOT_COUNTERS, 0))


HOT_COUNTERS = CALL_KINDS + ("cache_hits", "cache_misses")


class Stats:
    """Counters since the last reset. Every intercepted call counts in exactly one CALL_KIND.
    The counters of the hot path are per thread (no lock); the rest share one lock."""

    def __init__(self):
        self._lock = threading.Lock()
        self._local = threading.local()
        self._threads: list[_Counts] = []
        self.reset()

    def mine(self) -> _Counts:
        """This thread's hot counters."""
        counts = getattr(self._local, "counts", None)
        if counts is None:
            counts = self._local.counts = _Counts()
            with self._lock:
                self._threads.append(counts)
        return counts

    def reset(self):
        with self._lock:
            for counts in self._threads:
                counts.update(dict.fromkeys(HOT_COUNTERS, 0))
            self.fallback_calls = 0
            self.kernels_compiled = 0
            self.compile_failures = 0
            self.compile_seconds = 0.0
            self.disk_cache_hits = 0
            self.validation_mismatches = 0
            self.host_transfers = 0
            self.host_transfer_bytes = 0
            self.bounds_checks = 0
            self.evictions = Counter()
            self.decomposed = Counter()
            self.inputs_written = Counter()
            self.weights_packed = 0
            self.fallbacks: dict[str, dict] = {}

    def call(self, kind: str):
        self.mine()[kind] += 1

    def fallback(self, op_name: str, step: str, reason: str):
        with self._lock:
            self.fallback_calls += 1
            entry = self.fallbacks.get(op_name)
            if entry is None:
                self.fallbacks[op_name] = {"count": 1, "reason": reason, "step": step}
            else:
                entry["count"] += 1

    def lookup(self, hit: bool):
        self.mine()["cache_hits" if hit else "cache_misses"] += 1

    def compiled(self, seconds: float, ok: bool, from_disk: bool = False):
        with self._lock:
            self.compile_seconds += seconds
            if from_disk:
                self.disk_cache_hits += 1
            elif ok:
                self.kernels_compiled += 1
            if not ok:
                self.compile_failures += 1

    def host_transfer(self, nbytes: int):
        """A read of device data on the host (`.cpu()`, `.item()`, printing, native fallbacks,
        bounds checks): every one counts."""
        with self._lock:
            self.host_transfers += 1
            self.host_transfer_bytes += nbytes

    def evict(self, what: str):
        with self._lock:
            self.evictions[what] += 1

    def decomposed_call(self, op_name: str):
        with self._lock:
            self.decomposed[op_name] += 1

    def input_written(self, op_name: str):
        """A new kernel computes a result in an input's memory (kernel.py): it gets copies."""
        with self._lock:
            self.inputs_written[op_name] += 1

    def weight_packed(self):
        """A convolution's weight was packed for its kernel (prepack.py)."""
        with self._lock:
            self.weights_packed += 1

    def bounds_check(self):
        with self._lock:
            self.bounds_checks += 1

    def mismatch(self):
        with self._lock:
            self.validation_mismatches += 1

    def as_dict(self) -> dict:
        with self._lock:
            hot = dict.fromkeys(HOT_COUNTERS, 0)
            for counts in self._threads:
                for k in HOT_COUNTERS:
                    hot[k] += counts[k]
            d = {COMPILED: hot[COMPILED], METADATA: hot[METADATA], FALLBACK: self.fallback_calls}
            d.update(
                host_transfers=self.host_transfers,
                host_transfer_bytes=self.host_transfer_bytes,
                bounds_checks=self.bounds_checks,
                evictions=dict(self.evictions),
                decomposed=dict(self.decomposed),
                inputs_written=dict(self.inputs_written),
                weights_packed=self.weights_packed,
                kernels_compiled=self.kernels_compiled,
                compile_failures=self.compile_failures,
                compile_seconds=round(self.compile_seconds, 6),
                cache_hits=hot["cache_hits"],
                cache_misses=hot["cache_misses"],
                disk_cache_hits=self.disk_cache_hits,
                validation_mismatches=self.validation_mismatches,
                fallbacks={k: dict(v) for k, v in self.fallbacks.items()},
            )
            return d


CACHE = KernelCache()
STATS = Stats()
