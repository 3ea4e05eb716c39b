"""Validation mode (`set_validate(True)`): the first run of each new kernel is checked against
native PyTorch on the same inputs. A kernel that disagrees is disabled for its key, in this
process and in the disk index (so later processes do not load it), and the call returns the
native result, counted as a `validate` fallback.
"""

from __future__ import annotations

import logging

import torch
from torch.utils._pytree import tree_flatten

from . import kernel_index
from .fallback import HostCopies
from .kernel_cache import CACHE, COMPILED, STATS, Fallback
from .tensor import TorchMLIRTensor

log = logging.getLogger("torch_mlir_eager")


# Ops whose results are uninitialised memory: only their metadata can be compared.
UNINITIALISED = {"empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided", "empty_permuted"}


def run_validated(kernel, call, key, run_kernel):
    """First run of a new kernel, checked against native PyTorch on the same inputs."""
    func, kind, args, kwargs = call.func, call.kind, call.args, call.kwargs
    host = HostCopies(args, kwargs)
    expected = func(*host.args, **host.kwargs)
    result = run_kernel(kernel, call)
    values = func._schema.name.split("::")[-1] not in UNINITIALISED
    problem = _compare(result, expected, host, kind, values)
    kernel.validated = True
    if problem is None:
        return result, COMPILED
    fallback = Fallback("validate", f"kernel disagrees with native PyTorch: {problem}")
    CACHE.set(key, fallback)
    kernel_index.remember_fallback(key, call.device.compile_flags, fallback.step, fallback.reason)
    STATS.mismatch()
    log.warning("%s: %s; kernel disabled for this key", kind.name, fallback.reason)
    host.write_back(kind.written, kind.arg_names)  # undo the kernel's writes
    return host.to_device(expected), fallback


def _compare(result, expected, host, kind, values=True):
    """None when the device result (and every written input) matches native, else a summary
    (metadata only, without `values`)."""

    def tensors(x):
        return [v for v in tree_flatten(x)[0] if isinstance(v, torch.Tensor)]

    pairs = list(zip(tensors(result), tensors(expected)))
    if kind.written:
        bound = dict(zip(kind.arg_names, host.args))
        bound.update(host.kwargs)
        for name in kind.written:
            for h in tensors(bound.get(name)):
                original = host.originals.get(id(h))
                if original is not None:
                    pairs.append((original, h))
    for got, want in pairs:
        if not values:
            if (got.dtype, got.shape) != (want.dtype, want.shape):
                return f"dtype/shape {got.dtype}{list(got.shape)}, native {want.dtype}{list(want.shape)}"
            continue
        got = got._host() if isinstance(got, TorchMLIRTensor) else got
        try:
            torch.testing.assert_close(got, want, equal_nan=True, check_stride=False)
        except AssertionError as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            return "; ".join(lines[:3])
    return None
