"""The inputs each check runs: OpInfo's sample inputs and the variants made from them.

    extremal        elementwise ops: every floating input filled with nan, +-inf, +-0.0, huge and
                    tiny values; unary ufuncs: all of those values as the input; binary ufuncs: the
                    grid of every pair of them (by broadcasting); every op: a sample with a NaN,
                    and one with +inf and -inf, put in. The same with subnormals, whose
                    differences (flushing to zero) are reported apart
    negative_dims   non-negative dim arguments rewritten to their negative equivalent (checked to
                    mean the same thing natively)
    layout          inputs non-contiguous (every other element), transposed (dense, last two dims
                    swapped in memory) and channels_last (4-D): the layout is made on the device
                    by a view of a dense buffer, so the backend gets the strided tensor itself

A Variant is one call's arguments; `build(place)` puts its tensors where the call runs (a native
clone, or the backend). Tensors in a non-default layout are `LaidOut` leaves: a dense `base`
and the view that makes the tensor from it.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

DIM_NAMES = ("dim", "dims", "dim0", "dim1", "start_dim", "end_dim")
LAYOUTS = ("noncontiguous", "transposed", "channels_last")


class Variant(NamedTuple):
    label: str  # "sample 0", "sample 0, grid of extremal values 16x16", ...
    input: object
    args: tuple
    kwargs: dict
    broadcasts_input: bool = False
    minor: str = ""  # a kind of difference reported apart, not as a mismatch ("subnormals")

    def tree(self):
        return (self.input, self.args, self.kwargs)

    def build(self, place):
        """(input, args, kwargs) with every tensor placed by `place` (the same tensor object
        placed once) and every LaidOut tensor made by its view of its placed base."""
        import torch
        from torch.utils._pytree import tree_map

        memo = {}

        def leaf(x):
            if not isinstance(x, (torch.Tensor, LaidOut)):
                return x
            if id(x) not in memo:
                memo[id(x)] = x.view(place(x.base)) if isinstance(x, LaidOut) else place(x)
            return memo[id(x)]

        return tree_map(leaf, self.tree())


class LaidOut:
    """A tensor given to an op in a non-default layout: `view(base)` is the tensor."""

    def __init__(self, base, view: Callable):
        self.base, self.view = base, view


def from_samples(samples):
    return [Variant(f"sample {i}", s.input, tuple(s.args), dict(s.kwargs), bool(getattr(s, "broadcasts_input", False)))
            for i, s in enumerate(samples)]


def tensor_leaves(obj):
    import torch
    from torch.utils._pytree import tree_leaves

    return [x for x in tree_leaves(obj) if isinstance(x, (torch.Tensor, LaidOut))]


def _map_tensors(variant, fn, label):
    """The variant with every strided tensor leaf t replaced by fn(t) (None keeps t); None if none
    changed."""
    import torch
    from torch.utils._pytree import tree_map

    changed = []

    def leaf(x):
        if isinstance(x, torch.Tensor) and x.layout == torch.strided:
            y = fn(x)
            if y is not None:
                changed.append(x)
                return y
        return x

    inp, args, kwargs = tree_map(leaf, variant.tree())
    return variant._replace(label=label, input=inp, args=tuple(args), kwargs=dict(kwargs)) if changed else None


# ---- extremal values ----------------------------------------------------------------------
def extremal_values(dtype):
    """nan, +-inf, +-0.0, +-1, huge (1e20, the dtype's max), tiny (the smallest normal)."""
    import torch

    fi = torch.finfo(dtype)
    vals = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 1e20, -1e20, fi.max, -fi.max,
            fi.tiny, -fi.tiny, 3.0]
    return torch.tensor(vals, dtype=torch.float64).to(dtype)


def subnormal_values(dtype):
    """Subnormals (the smallest, half the smallest normal) with 0, +-1 and inf: a backend that flushes
    subnormals to zero differs on them."""
    import torch

    fi = torch.finfo(dtype)
    vals = [fi.tiny * fi.eps, -fi.tiny * fi.eps, fi.tiny / 2, -fi.tiny / 2, 0.0, 1.0, -1.0, math.inf]
    return torch.tensor(vals, dtype=torch.float64).to(dtype)


@functools.lru_cache(maxsize=None)
def _aten_overloads(aten_name: str):
    import torch

    try:
        packet = getattr(torch.ops.aten, aten_name.split(".")[-1])
        return tuple(getattr(packet, name) for name in packet.overloads())
    except (AttributeError, RuntimeError):
        return ()


def aten_overloads(op):
    """The aten overloads the OpInfo most likely calls (by its aten name's last component)."""
    return _aten_overloads(op.aten_name or op.name)


def is_pointwise(op) -> bool:
    """Unary/binary ufuncs, and ops whose aten overloads are tagged pointwise (clamp, where, ...)."""
    import torch

    from .selection import is_ufunc

    return is_ufunc(op) or any(torch.Tag.pointwise in ov.tags for ov in aten_overloads(op))


def _first_floating(variants):
    """The variant with the largest floating tensor input (at least one element)."""
    import torch

    best = None
    for v in variants:
        x = v.input
        if isinstance(x, torch.Tensor) and x.layout == torch.strided and x.is_floating_point() and x.numel() > 0:
            if best is None or v.input.numel() > best.input.numel():
                best = v
    return best


def _value_set_variants(op, variants, base, values, name, inplace, minor=""):
    """Variants that feed `values` to an elementwise op: every floating input filled with them
    (pointwise ops), all of them as the input (unary ufuncs), the grid of every pair (binary ufuncs)."""
    import torch
    from torch.testing._internal.opinfo.core import BinaryUfuncInfo, UnaryUfuncInfo

    out = []
    if is_pointwise(op):
        count = [0]

        def fill(t):
            if not t.is_floating_point() or t.numel() == 0:
                return None
            count[0] += 1
            vals = values.to(t.dtype).roll(5 * (count[0] - 1))
            return vals.repeat(t.numel() // len(vals) + 1)[: t.numel()].reshape(t.shape).clone()

        filled = _map_tensors(base, fill, f"{base.label}, filled with {name}")
        if filled is not None:
            out.append(filled._replace(minor=minor))
    if isinstance(op, UnaryUfuncInfo):
        out.append(base._replace(label=f"{base.label}, the {len(values)} {name}", input=values.clone(), minor=minor))
    if isinstance(op, BinaryUfuncInfo):
        for v in variants:
            other = v.args[0] if v.args else None
            if isinstance(v.input, torch.Tensor) and isinstance(other, torch.Tensor) and other.is_floating_point():
                left = values.to(v.input.dtype).reshape(-1, 1)
                if inplace:
                    left = left.expand(len(values), len(values)).clone()
                out.append(v._replace(label=f"{v.label}, grid of {name} {len(values)}x{len(values)}", input=left,
                                      args=(values.to(other.dtype).reshape(1, -1),) + tuple(v.args[1:]),
                                      broadcasts_input=not inplace, minor=minor))
                break
    return out


def extremal_variants(op, variants, dtype, inplace):
    """Extremal-value variants, NaN/inf-injected variants, and subnormal variants (whose
    differences are reported apart, as `subnormals`)."""
    import torch

    if not dtype.is_floating_point:
        return []
    base = _first_floating(variants)
    if base is None:
        return []
    out = _value_set_variants(op, variants, base, extremal_values(dtype), "extremal values", inplace)
    for label, values in (("NaN put in", (math.nan,)), ("+inf and -inf put in", (math.inf, -math.inf))):
        x = base.input.clone(memory_format=torch.contiguous_format)
        flat = x.view(-1)
        flat[0] = values[0]
        if len(values) > 1 and flat.numel() > 1:
            flat[-1] = values[1]
        if math.isnan(values[0]) and flat.numel() > 3:
            flat[flat.numel() // 2] = math.nan
        out.append(base._replace(label=f"{base.label}, {label}", input=x))
    out += _value_set_variants(op, variants, base, subnormal_values(dtype), "subnormal values", inplace,
                               minor="subnormals")
    return out


# ---- negative dims ----------------------------------------------------------------------------
def _dim_positions(op):
    """Indices into a sample's positional args that some aten schema of the op names dim-like."""
    pos = set()
    for ov in aten_overloads(op):
        for k, a in enumerate(ov._schema.arguments[1:]):
            if a.name in DIM_NAMES:
                pos.add(k)
    return pos


def _rank(x):
    import torch

    if isinstance(x, torch.Tensor):
        return x.dim()
    if isinstance(x, (list, tuple)) and x and isinstance(x[0], torch.Tensor):
        return x[0].dim()
    return None


def _negated(value, rank):
    """`value` (an int or a sequence of ints) with each non-negative dim d made d - rank; None
    when it holds no non-negative dim."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value - rank if value >= 0 else None
    if isinstance(value, (list, tuple)) and value and all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        if all(d < 0 for d in value):
            return None
        return type(value)(d - rank if d >= 0 else d for d in value)
    return None


def negative_dim_variants(op, variants, same_native_result):
    """Each variant with a non-negative dim argument, rewritten to negative dims. The rank to
    count from is the input's, or one more (unsqueeze, stack): the rewrite that gives the same
    native result as the original is kept (`same_native_result(a, b)`), none if neither does."""
    positions = _dim_positions(op)
    out = []
    for v in variants:
        rank = _rank(v.input)
        if rank is None:
            continue
        for r in sorted({max(rank, 1), rank + 1}):
            args = list(v.args)
            kwargs = dict(v.kwargs)
            changed = False
            for k in positions:
                if k < len(args):
                    new = _negated(args[k], r)
                    if new is not None:
                        args[k], changed = new, True
            for name in DIM_NAMES:
                if name in kwargs:
                    new = _negated(kwargs[name], r)
                    if new is not None:
                        kwargs[name], changed = new, True
            if not changed:
                break
            rewritten = v._replace(label=f"{v.label}, negative dims", args=tuple(args), kwargs=kwargs)
            if same_native_result(v, rewritten):
                out.append(rewritten)
                break
    return out


# ---- layouts ----------------------------------------------------------------------------------
def _filler(t):
    import torch

    if t.is_floating_point() or t.is_complex():
        return torch.full_like(t, math.nan)
    return ~t if t.dtype == torch.bool else t + 1


def _laid_out(t, layout):
    import torch

    if layout == "noncontiguous" and t.dim() >= 1 and t.numel() > 1:
        return LaidOut(torch.stack([t, _filler(t)], dim=-1), lambda b: b[..., 0])
    if layout == "transposed" and t.dim() >= 2 and t.shape[-1] > 1 and t.shape[-2] > 1:
        return LaidOut(t.transpose(-1, -2).contiguous(), lambda b: b.transpose(-1, -2))
    if layout == "channels_last" and t.dim() == 4 and t.shape[1] > 1 and t.shape[2] * t.shape[3] > 1:
        return LaidOut(t.permute(0, 2, 3, 1).contiguous(), lambda b: b.permute(0, 3, 1, 2))
    return None


def layout_variants(variants):
    out = []
    for v in variants:
        for layout in LAYOUTS:
            laid = _map_tensors(v, lambda t: _laid_out(t, layout), f"{v.label}, {layout}")
            if laid is not None:
                out.append(laid)
    return out


# ---- factory calls ----------------------------------------------------------------------------
def on_device(kwargs, device_type):
    """kwargs with a CPU `device=` argument sent to the backend's device type instead."""
    import torch

    dev = kwargs.get("device")
    if dev is None or device_type == "cpu" or torch.device(dev).type != "cpu":
        return kwargs
    return dict(kwargs, device=device_type)
