"""The backend under test: loading it, moving argument trees onto it and back, its statistics,
its validation mode and a record of the aten ops a call dispatched.

The backend is `torch_mlir_eager`, or the module named by $TORCH_MLIR_EAGER_COVERAGE_BACKEND
(the tests use fakes with the same API: TorchMLIRTensor, stats, reset_stats and, for attribution,
set_validate and clear_kernel_cache).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os

ENV_BACKEND = "TORCH_MLIR_EAGER_COVERAGE_BACKEND"

_BACKEND = None


def load_backend():
    global _BACKEND
    if _BACKEND is None:
        be = importlib.import_module(os.environ.get(ENV_BACKEND) or "torch_mlir_eager")
        # Coverage needs every miss compiled before the call returns, not run natively while a
        # background compile is pending.
        set_async = getattr(be, "set_async_compile", None)
        if set_async is not None:
            set_async(False)
        _BACKEND = be
    return _BACKEND


def forget_backend():
    """The next load_backend() imports the backend named by the environment again."""
    global _BACKEND
    _BACKEND = None


def device_type() -> str:
    """The device type the backend's tensors report ('iree'); factory calls are sent there."""
    import torch

    return load_backend().TorchMLIRTensor(torch.zeros(1)).device.type


def stats_delta(st):
    return {
        "compiled": int(st.get("compiled_calls", 0)),
        "metadata": int(st.get("metadata_calls", 0)),
        "fallback": int(st.get("fallback_calls", 0)),
        "kernels_compiled": int(st.get("kernels_compiled", 0)),
        "compile_seconds": float(st.get("compile_seconds", 0.0)),
        "cache_hits": int(st.get("cache_hits", 0)),
        "disk_cache_hits": int(st.get("disk_cache_hits", 0)),
    }


def call_outcome(delta) -> str:
    """compiled / partial / fallback for a call that agreed with native, from its statistics."""
    if delta["fallback"] == 0:
        return "compiled"
    return "fallback" if delta["compiled"] == 0 else "partial"


class Unwrappable(Exception):
    """An input the backend cannot hold (sparse, ...): the case is not run."""


def place_tree(obj, place):
    """Every tensor leaf replaced by place(tensor); the same tensor object gives the same result,
    so arguments that alias each other still do."""
    import torch
    from torch.utils._pytree import tree_map

    memo = {}

    def leaf(x):
        if isinstance(x, torch.Tensor):
            if id(x) not in memo:
                memo[id(x)] = place(x)
            return memo[id(x)]
        return x

    return tree_map(leaf, obj)


def to_device(x):
    """One CPU tensor onto the backend."""
    import torch

    if x.layout != torch.strided:
        raise Unwrappable(f"{x.layout} input")
    if x.device.type != "cpu":
        raise Unwrappable(f"input on {x.device.type}")
    return load_backend().TorchMLIRTensor(x)


def to_host(obj):
    """(the tree with device tensors copied to the CPU, how many tensor leaves were not on the device)."""
    import torch
    from torch.utils._pytree import tree_map

    device_cls = load_backend().TorchMLIRTensor
    leaked = []

    def cpu(x):
        if isinstance(x, device_cls):
            return x.cpu()
        if isinstance(x, torch.Tensor):
            leaked.append(x)
        return x

    return tree_map(cpu, obj), len(leaked)


def strides_of(obj):
    """The strides of every tensor leaf (None for other leaves), read on the device."""
    import torch
    from torch.utils._pytree import tree_leaves

    return [tuple(x.stride()) if isinstance(x, torch.Tensor) else None for x in tree_leaves(obj)]


def supports_validation() -> bool:
    be = load_backend()
    return hasattr(be, "set_validate") and hasattr(be, "clear_kernel_cache")


@contextlib.contextmanager
def validation():
    """Validation mode with no kernel remembered from before, and none kept after: every kernel
    a call builds is checked against native PyTorch on its first run."""
    be = load_backend()
    be.clear_kernel_cache()
    be.set_validate(True)
    try:
        yield
    finally:
        be.set_validate(False)
        be.clear_kernel_cache()


def dispatch_recorder():
    """A TorchDispatchMode that records each aten op called under it (as `str(func)`) with the
    dtypes of its tensor arguments, then lets it run."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class DispatchRecorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = {}  # op name -> set of input dtype names

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            dts = self.ops.setdefault(str(func), set())
            for x in tree_leaves((args, kwargs)):
                if isinstance(x, torch.Tensor):
                    dts.add(str(x.dtype).replace("torch.", ""))
            return func(*args, **kwargs)

    return DispatchRecorder()


@functools.lru_cache(maxsize=None)
def is_random_aten(name: str) -> bool:
    """Whether the aten op named like `aten.uniform_.default` is tagged nondeterministic_seeded."""
    import torch

    try:
        _, packet, overload = name.split(".")
        return torch.Tag.nondeterministic_seeded in getattr(getattr(torch.ops.aten, packet), overload).tags
    except (ValueError, AttributeError, RuntimeError):
        return False
