"""Per-kernel timing, for measuring kernel quality apart from dispatch."""

from __future__ import annotations

import contextlib

from .kernel import KernelTiming


@contextlib.contextmanager
def kernel_timing(enabled: bool = True):
    """Within this block, each kernel invocation's time is recorded (see kernel_times())."""
    previous = KernelTiming.enabled
    KernelTiming.enabled = enabled
    KernelTiming.records = []
    try:
        yield KernelTiming.records
    finally:
        KernelTiming.enabled = previous


def kernel_times() -> list:
    """(kernel name, seconds) for each kernel run inside the last kernel_timing() block."""
    return list(KernelTiming.records)
