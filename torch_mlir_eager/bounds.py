"""Index bounds: an op that reads or writes at positions given by an index tensor must not run a
compiled kernel on an out-of-range index (the kernel would read or write outside the tensor).

CPU PyTorch checks every index and raises; CUDA PyTorch does the same with device-side asserts.
Here, before such a kernel runs, a small compiled *probe* reduces each index tensor to its
minimum and maximum, and the host compares them with the bounds. When an index is out of range
the call runs in native PyTorch instead, which raises PyTorch's own error (or, if PyTorch
accepts the call after all, gives its result): never a wrong number.

The probe's result (a few int64 values) is a host read: it counts in `host_transfers`, and in
`bounds_checks`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class IndexBound:
    """Argument `index` (a tensor, or a list of optional tensors for `index`/`index_put`) must
    lie in [lo, hi): hi is the size of dim `dim` of argument `data` (`dim` names the argument
    holding it, or is an int; None: `data`'s numel; "list": the list position's dim; "class":
    nll_loss's class dim), and lo is -hi when the op wraps negative indices, else 0. An index
    equal to the value of argument `ignore` is exempt (nll_loss's ignore_index)."""

    index: str
    data: str
    dim: object
    wraps: bool
    ignore: str | None = None


# aten op base name (in-place and out= variants share it) -> its index arguments.
# `wraps` is True only where PyTorch wraps negative indices AND the compiled kernel was shown to
# do the same (tests/test_trust.py checks each): the lowerings of index_fill and index_put write
# out of bounds on a negative index, so there negatives run natively (PyTorch wraps them).
_TABLE = {
    "index_select": [IndexBound("index", "self", "dim", False)],
    "gather": [IndexBound("index", "self", "dim", False)],
    "scatter": [IndexBound("index", "self", "dim", False)],
    "scatter_add": [IndexBound("index", "self", "dim", False)],
    "scatter_reduce": [IndexBound("index", "self", "dim", False)],
    "index_add": [IndexBound("index", "self", "dim", False)],
    "index_copy": [IndexBound("index", "self", "dim", False)],
    "index_reduce": [IndexBound("index", "self", "dim", False)],
    "index_fill": [IndexBound("index", "self", "dim", False)],  # wraps, but its lowering writes out of bounds on negatives
    "take": [IndexBound("index", "self", None, True)],
    "put": [IndexBound("index", "self", None, False)],
    "embedding": [IndexBound("indices", "weight", 0, False)],
    "_embedding_bag": [IndexBound("indices", "weight", 0, False)],
    "_embedding_bag_forward_only": [IndexBound("indices", "weight", 0, False)],
    "index": [IndexBound("indices", "self", "list", True)],
    "_unsafe_index": [IndexBound("indices", "self", "list", True)],
    "index_put": [IndexBound("indices", "self", "list", False)],
    "_unsafe_index_put": [IndexBound("indices", "self", "list", False)],
    "_index_put_impl": [IndexBound("indices", "self", "list", False)],
    "nll_loss_forward": [IndexBound("target", "self", "class", False, ignore="ignore_index")],
    "nll_loss2d_forward": [IndexBound("target", "self", "class", False, ignore="ignore_index")],
    "nll_loss": [IndexBound("target", "self", "class", False, ignore="ignore_index")],
    "nll_loss_nd": [IndexBound("target", "self", "class", False, ignore="ignore_index")],
}


def for_schema(schema) -> tuple:
    """The IndexBounds of an op, from its schema (empty for most ops)."""
    base = schema.name.split("::")[-1]
    if base.endswith("_") and not base.startswith("__"):
        base = base[:-1]
    names = {a.name for a in schema.arguments}
    return tuple(b for b in _TABLE.get(base, ()) if b.index in names and b.data in names)


@dataclass(frozen=True)
class BoundsProbe:
    """The probe kernel: index tensors -> int64 [min, max] of each (ignoring `ignores[i]`
    where it is not None). Plain data: it names its kernel."""

    ignores: tuple

    @property
    def __name__(self) -> str:
        return f"bounds_probe{list(self.ignores)}"

    def __call__(self, *indices):
        parts = []
        for t, ignore in zip(indices, self.ignores):
            t = t.reshape(-1).to(torch.int64)
            if ignore is None:
                parts += [t.amin(), t.amax()]
            else:
                keep = t != ignore
                parts += [torch.where(keep, t, _INT64_MAX).amin(), torch.where(keep, t, _INT64_MIN).amax()]
        return torch.stack(parts)


class Check:
    """One index tensor of a call and its valid range [lo, hi)."""

    __slots__ = ("tensor", "lo", "hi", "ignore", "what")

    def __init__(self, tensor, lo, hi, ignore, what):
        self.tensor, self.lo, self.hi, self.ignore, self.what = tensor, lo, hi, ignore, what


def checks_of(bounds, arg_names, args, kwargs) -> list:
    """The Checks of one call: each non-empty integer index tensor with its range."""
    bound_args = dict(zip(arg_names, args))
    bound_args.update(kwargs)
    out = []
    for b in bounds:
        data = bound_args.get(b.data)
        index = bound_args.get(b.index)
        if not isinstance(data, torch.Tensor) or index is None:
            continue
        ignore = bound_args.get(b.ignore) if b.ignore else None
        if b.dim == "list":
            dim = 0
            for t in index:
                if isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8):
                    dim += t.dim()  # a mask: shape-checked by PyTorch, consumes its dims
                    continue
                if isinstance(t, torch.Tensor) and t.numel() and dim < data.dim():
                    size = data.shape[dim]
                    out.append(Check(t, -size if b.wraps else 0, size, None, f"{b.index}[{dim}]"))
                dim += 1
            continue
        if not isinstance(index, torch.Tensor) or index.numel() == 0 or index.dtype.is_floating_point:
            continue
        if b.dim is None:
            size = data.numel()
        else:
            if b.dim == "class":
                dim = 0 if data.dim() == 1 else 1
            else:
                dim = bound_args.get(b.dim, 0) if isinstance(b.dim, str) else b.dim
            if data.dim() == 0:
                size = 1  # a 0-d tensor indexes like a 1-element vector
            elif not -data.dim() <= dim < data.dim():
                continue  # PyTorch raises for the dim itself, from the plan
            else:
                size = data.shape[dim]
        lo = -size if b.wraps else 0
        out.append(Check(index, lo, size, ignore if isinstance(ignore, int) else None, b.index))
    return out


def first_violation(checks, minmax) -> str | None:
    """Compare the probe's [min, max] pairs with the ranges: a message, or None when all hold."""
    for i, c in enumerate(checks):
        lo, hi = int(minmax[2 * i]), int(minmax[2 * i + 1])
        if lo > hi:  # every index was ignored
            continue
        if lo < c.lo or hi >= c.hi:
            bad = lo if lo < c.lo else hi
            return f"index {bad} is out of bounds for {c.what} (valid range [{c.lo}, {c.hi}))"
    return None


def violation(kind, call) -> str | None:
    """Check the index arguments of a call about to run a compiled kernel: a message naming
    the first out-of-range index, or None when every index is in range."""
    from .kernel_cache import STATS
    from .tensor import TorchMLIRTensor

    checks = checks_of(kind.bounds, kind.arg_names, call.args, call.kwargs)
    if not checks:
        return None
    STATS.bounds_check()
    on_device = [c for c in checks if isinstance(c.tensor, TorchMLIRTensor)]
    minmax = _probe(on_device, call.device) if on_device else []
    on_host = [c for c in checks if not isinstance(c.tensor, TorchMLIRTensor)]
    for c in on_host:  # 0-d CPU index tensors
        minmax += _host_minmax(c.tensor, c.ignore)
    return first_violation(on_device + on_host, minmax)


def probe_recipe(checks, device):
    """(key, Recipe) of the probe kernel for these index tensors."""
    from .recipe import Recipe, Slot, TensorSpec

    probe = BoundsProbe(tuple(c.ignore for c in checks))
    key = ("bounds", probe, tuple(c.tensor._spec for c in checks), device.driver)
    specs = [TensorSpec(tuple(c.tensor.shape), tuple(c.tensor.stride()), c.tensor.dtype) for c in checks]
    template = (tuple(Slot(i) for i in range(len(specs))), {})
    return key, Recipe(probe.__name__, probe, template, specs, device.driver, tuple(device.compile_flags), key)


def _probe(checks, device) -> list:
    """[min, max] of each index tensor, from the compiled probe (host copies if it has none)."""
    from . import compile_service
    from .buffers import dense_buffer
    from .kernel import Kernel
    from .kernel_cache import CACHE, STATS

    key, recipe = probe_recipe(checks, device)
    entry = CACHE.get(key)
    STATS.lookup(hit=entry is not None)
    if entry is None:
        entry = compile_service.build_blocking(recipe, (), device)
    if isinstance(entry, Kernel):
        (result,) = entry([dense_buffer(c.tensor) for c in checks])
        STATS.host_transfer(16 * len(checks))
        return device.read_int64(result, 2 * len(checks))
    out = []
    for c in checks:
        out += _host_minmax(c.tensor._host(), c.ignore)
    return out


def _host_minmax(t: torch.Tensor, ignore) -> list:
    t = t.reshape(-1).to(torch.int64)
    if ignore is not None:
        t = t[t != ignore]
    if t.numel() == 0:
        return [_INT64_MAX, _INT64_MIN]
    return [int(t.min()), int(t.max())]
