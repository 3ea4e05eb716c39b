"""torch_mlir_eager: a compiler-backed eager backend for PyTorch.

Every aten op on a `TorchMLIRTensor` is built into a one-op module, lowered by torch-mlir,
compiled by IREE for the tensor's device, cached per (op, shapes, dtypes, scalars), and run on
device buffers. Ops that cannot be compiled fall back to native PyTorch, counted and explained.
"""

from __future__ import annotations

from .tensor import TorchMLIRTensor
from .device import default_device, get_device
from .config import set_validate, set_async_compile
from .compile_service import set_compile_listener
from .kernel_cache import STATS as _STATS, CACHE as _CACHE
from .module import to_device, to_host
from .dry_run import precompile
from .timing import kernel_timing, kernel_times

__all__ = [
    "TorchMLIRTensor",
    "default_device",
    "get_device",
    "stats",
    "reset_stats",
    "to_device",
    "to_host",
    "set_validate",
    "set_async_compile",
    "synchronize_compiles",
    "set_compile_listener",
    "kernel_timing",
    "kernel_times",
    "clear_kernel_cache",
    "precompile",
]


def stats() -> dict:
    """Counters since the last reset_stats(). compiled_calls + metadata_calls + fallback_calls
    is every intercepted aten call; `fallbacks` maps op -> {count, step, reason}."""
    return _STATS.as_dict()


def reset_stats() -> None:
    _STATS.reset()


def synchronize_compiles() -> None:
    """Wait for every kernel compiling in the background (set_async_compile)."""
    from .dispatch import synchronize_compiles as _sync

    _sync()


def synchronize(device: str | None = None) -> None:
    """Wait until every kernel queued on `device` (default: every device opened) has finished.
    Kernels run asynchronously (queue.py); reading a value on the host waits by itself, so this
    is only needed to time device work."""
    from . import device as _device

    opened = _device._devices
    devices = ([opened[device]] if device in opened else []) if device else list(opened.values())
    for dev in devices:
        dev.queue.drain()


def _release_at_exit():
    # Drop kernels and devices before the interpreter tears nanobind down, so that IREE objects
    # are released in order (otherwise nanobind reports them as leaked at exit).
    import gc

    from . import device, views

    for dev in list(device._devices.values()):  # let queued kernels finish first
        try:
            dev.queue.drain()
        except Exception:
            pass
    _CACHE.clear()
    views.clear_memo()
    from .runners import clear

    clear()
    device._devices.clear()
    gc.collect()
    # Tensors the program still holds at exit keep IREE buffers alive until the interpreter
    # tears down; that is not a leak, so silence nanobind's exit-time report of them.
    try:
        from iree._runtime_libs import _runtime

        _runtime.disable_leak_checker()
    except Exception:
        pass


import atexit as _atexit  # noqa: E402

_atexit.register(_release_at_exit)


def clear_kernel_cache() -> None:
    """Forget every in-memory kernel and remembered fallback of this process."""
    from .prepack import forget_all
    from .runners import clear

    _CACHE.clear()
    clear()
    forget_all()
