"""A stand-in for torch_mlir_eager's public API, used to test the coverage tool itself.

Every aten call runs natively on the unwrapped tensor; the bookkeeping pretends: view ops are
metadata, random ops fall back (step "unsupported"), everything else "compiles". Its bugs are
chosen with $COVERAGE_FAKE_BUGS (comma-separated; unset: sub_fallback,neg_wrong,exp_raises;
"none": a correct backend):

    sub_fallback        `sub` falls back (step "lower")
    neg_wrong           `neg` returns -x + 1
    exp_raises          `exp` raises
    nan_to_zero         a NaN in a result becomes 0 (wrong NaN propagation)
    negative_dims       an op given a negative dim returns its result + 1
    wrong_gradients     results computed with grad mode off (backward passes) are doubled
    no_errors           an op that raises natively returns its first tensor argument instead
    random_zeros        random ops return zeros, or leave their input unchanged when in place
    strided_inputs      strided inputs are read as if they were contiguous
    contiguous_outputs  results are always contiguous
    flush_subnormals    subnormal inputs are read as zeros
    abort_in_backward   the process aborts on an op run with grad mode off (a backward pass)

Like the real backend, set_validate(True) checks each "kernel" (an op with a value bug: not the
random ops, not raising) against native on its first run, disables it for the rest of the
process (until clear_kernel_cache) and records a "validate" fallback.
"""

import os

import torch
from torch.utils._pytree import tree_leaves, tree_map

BUGS = set(filter(None, os.environ.get("COVERAGE_FAKE_BUGS", "sub_fallback,neg_wrong,exp_raises").split(",")))
VIEW_OPS = {"view", "_unsafe_view", "expand", "transpose", "permute", "t", "squeeze", "unsqueeze",
            "select", "slice", "alias", "as_strided", "detach", "_reshape_alias"}
DIM_NAMES = ("dim", "dims", "dim0", "dim1", "start_dim", "end_dim")

_STATS = {}
_VALIDATE = [False]
_DISABLED = set()  # kernels validation found wrong


def reset_stats():
    _STATS.clear()
    _STATS.update(compiled_calls=0, metadata_calls=0, fallback_calls=0, kernels_compiled=0,
                  compile_failures=0, compile_seconds=0.0, cache_hits=0, cache_misses=0,
                  validation_mismatches=0, fallbacks={})


def stats():
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in _STATS.items()}


def set_validate(enabled=True):
    _VALIDATE[0] = bool(enabled)


def clear_kernel_cache():
    _DISABLED.clear()


reset_stats()


def _fallback(full, step, reason):
    _STATS["fallback_calls"] += 1
    fb = _STATS["fallbacks"].setdefault(full, {"count": 0, "reason": reason, "step": step})
    fb["count"] += 1


class TorchMLIRTensor(torch.Tensor):
    @staticmethod
    def __new__(cls, x, device=None, _share=False):
        r = torch.Tensor._make_wrapper_subclass(cls, x.shape, strides=x.stride(), dtype=x.dtype,
                                                device=x.device, storage_offset=x.storage_offset())
        r.inner = x if _share else x.detach().clone()
        return r

    def __init__(self, *a, **k):
        pass

    def cpu(self):
        return self.inner.clone()

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        full = str(func)
        if "abort_in_backward" in BUGS and not torch.is_grad_enabled():
            os.abort()
        if "exp_raises" in BUGS and name in ("exp", "exp_"):
            raise RuntimeError("fake backend: exp is broken\nsecond line")
        uw_args, uw_kwargs = tree_map(lambda t: t.inner if isinstance(t, TorchMLIRTensor) else t, (args, kwargs))
        inplace = name.endswith("_")
        if torch.Tag.nondeterministic_seeded in func.tags:
            _fallback(full, "unsupported", "random op (no compiled form; runs natively)")
            if "random_zeros" in BUGS:
                out = uw_args[0] if inplace else torch.zeros_like(func(*uw_args, **uw_kwargs))
            else:
                out = func(*uw_args, **uw_kwargs)
        else:
            try:
                out = func(*uw_args, **uw_kwargs)
            except Exception:
                if "no_errors" not in BUGS:
                    raise
                _STATS["compiled_calls"] += 1
                return next(a for a in tree_leaves(args) if isinstance(a, TorchMLIRTensor))
            if "sub_fallback" in BUGS and name.rstrip("_") == "sub":
                _fallback(full, "lower", "failed to legalize operation 'torch.aten.sub.Tensor'")
            elif name in VIEW_OPS:
                _STATS["metadata_calls"] += 1
            elif full in _DISABLED:
                _fallback(full, "validate", "kernel disagrees with native PyTorch")
            elif inplace:
                _STATS["compiled_calls"] += 1
            else:
                wrong = _kernel(func, name, uw_args, uw_kwargs, out)
                if _VALIDATE[0] and not _same(wrong, out):
                    _DISABLED.add(full)
                    _STATS["validation_mismatches"] += 1
                    _fallback(full, "validate", "kernel disagrees with native PyTorch")
                else:
                    _STATS["compiled_calls"] += 1
                    out = wrong
        if inplace and out is uw_args[0]:
            return args[0]
        return tree_map(lambda t: TorchMLIRTensor(t, _share=True) if isinstance(t, torch.Tensor) else t, out)


def _strided_as_contiguous(args):
    def read(t):
        fits = isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() >= (t.storage_offset() + t.numel()) * t.element_size()
        if fits and not t.is_contiguous() and t.numel() > 0:
            return torch.as_strided(t, t.shape, torch.empty(t.shape).stride(), t.storage_offset())
        return t

    return tree_map(read, args)


def _has_negative_dim(func, args, kwargs):
    bound = dict(zip((a.name for a in func._schema.arguments), args))
    bound.update(kwargs)
    for n in DIM_NAMES:
        v = bound.get(n)
        vals = v if isinstance(v, (list, tuple)) else [v]
        if any(isinstance(d, int) and not isinstance(d, bool) and d < 0 for d in vals):
            return True
    return False


def _kernel(func, name, args, kwargs, out):
    """The op's result as the buggy "kernel" computes it, from the correct result `out`."""
    if "strided_inputs" in BUGS:
        out = func(*_strided_as_contiguous(args), **kwargs)
    if "flush_subnormals" in BUGS:
        tiny = torch.finfo(torch.float32).tiny
        out = func(*tree_map(lambda t: torch.where(t.abs() < tiny, t * 0, t)
                             if isinstance(t, torch.Tensor) and t.is_floating_point() else t, args), **kwargs)

    def float_map(fn):
        return tree_map(lambda t: fn(t) if isinstance(t, torch.Tensor) and t.is_floating_point() else t, out)

    if "neg_wrong" in BUGS and name == "neg":
        out = float_map(lambda t: t + 1)
    if "nan_to_zero" in BUGS:
        if any(isinstance(t, torch.Tensor) and t.is_floating_point() and bool(t.isnan().any()) for t in tree_leaves(out)):
            out = float_map(lambda t: t.nan_to_num(nan=0.0, posinf=float("inf"), neginf=float("-inf")))
    if "negative_dims" in BUGS and _has_negative_dim(func, args, kwargs):
        out = float_map(lambda t: t + 1)
    if "wrong_gradients" in BUGS and not torch.is_grad_enabled():
        out = float_map(lambda t: t * 2)
    if "contiguous_outputs" in BUGS:
        out = tree_map(lambda t: t.contiguous() if isinstance(t, torch.Tensor) else t, out)
    return out


def _same(a, b):
    for x, y in zip(tree_leaves(a), tree_leaves(b)):
        if isinstance(x, torch.Tensor) and not torch.equal(torch.nan_to_num(x), torch.nan_to_num(y)):
            return False
        if isinstance(x, torch.Tensor) and not torch.equal(x.isnan(), y.isnan()):
            return False
    return True
