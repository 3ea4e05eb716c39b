"""Helpers shared by the benchmarks: timing, memory readings, a pass-through subclass."""

from __future__ import annotations

import gc
import os
import platform
import resource
import statistics
import sys
import time

import torch
from torch.utils._pytree import tree_map


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def ratio(a, b):
    try:
        if b is None or a is None or b == 0:
            return None
        return a / b
    except TypeError:
        return None


def sync():
    """Wait for the eager backend's queued kernels (they run asynchronously), so that a timed
    block includes the device work it issued."""
    tme = sys.modules.get("torch_mlir_eager")
    if tme is not None:
        tme.synchronize()


def time_per_call(fn, inner, repeats, warmup=1):
    """Median over `repeats` of the mean time of `inner` back-to-back calls of fn (seconds)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        samples.append((time.perf_counter() - t0) / inner)
    return median(samples), samples


def interleaved(options: dict, inner: int, rounds: int, warmup: int = 20, settle: float = 0.0,
                lead: int = 0):
    """Time several options against each other in one process: `rounds` alternations, each
    timing `inner` back-to-back calls of every option in turn (the order rotating), so that
    machine noise falls on all of them alike. Returns {name: [seconds per call, per round]}.

    `settle`: seconds to sleep after each option's turn. Thread pools spin after their work
    (PyTorch's OpenMP threads for up to 200 ms, IREE's task workers too), and a pool still
    spinning slows the next option down: multi-threaded options need it.
    `lead`: untimed calls at the start of each turn, so that the timed calls find the option
    in its steady state (threads awake, caches holding its data) rather than after `settle`."""
    names = list(options)
    for name in names:
        for _ in range(warmup):
            options[name]()
    samples = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            fn = options[name]
            for _ in range(lead):
                fn()
            sync()
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            sync()
            samples[name].append((time.perf_counter() - t0) / inner)
            if settle:
                time.sleep(settle)
    return samples


def spread(xs):
    """(25th, 75th) percentiles: the middle half of the samples."""
    q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0], xs[0], xs[0]]
    return q[0], q[2]


def rss_bytes():
    """Current resident set size from /proc/self/statm (bytes); None off Linux."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def maxrss_bytes():
    """Peak resident set size so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if platform.system() == "Darwin" else r * 1024


def collect():
    gc.collect()
    gc.collect()


def machine_description():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    try:
        from importlib.metadata import version

        for dist in ("torch-mlir", "iree-base-compiler", "iree-base-runtime"):
            try:
                versions[dist] = version(dist)
            except Exception:
                pass
    except ImportError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "versions": versions,
    }


class PassThroughTensor(torch.Tensor):
    """The smallest useful `__torch_dispatch__` wrapper: unwrap, call the op, rewrap.

    It is the baseline for the cost that any Python-level dispatch subclass pays per op.
    """

    __slots__ = ["elem"]

    @staticmethod
    def __new__(cls, elem):
        r = torch.Tensor._make_wrapper_subclass(
            cls,
            elem.size(),
            strides=elem.stride(),
            storage_offset=elem.storage_offset(),
            dtype=elem.dtype,
            layout=elem.layout,
            device=elem.device,
            requires_grad=elem.requires_grad,
        )
        r.elem = elem
        return r

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        def unwrap(t):
            return t.elem if isinstance(t, PassThroughTensor) else t

        def wrap(t):
            return PassThroughTensor(t) if isinstance(t, torch.Tensor) else t

        out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs or {}))
        return tree_map(wrap, out)


def write_json(path, report):
    """Write a benchmark's report (making its folder) and say where."""
    import json

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=2, default=str)
    print(f"wrote {path}")
