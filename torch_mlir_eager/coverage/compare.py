"""Comparing what the backend gave with what native PyTorch gave: output structure, dtypes,
shapes and values (NaN/inf positions, finite values within the dtype's tolerances), signs of
zeros, strides of dense outputs, and the exceptions raised."""

from __future__ import annotations

import math
from typing import NamedTuple, Optional


class Difference(NamedTuple):
    message: str
    max_abs_err: float
    index: Optional[tuple] = None  # first differing element of the output leaf, when known
    leaf: int = 0  # which tensor leaf of the tree


def _leaves(obj):
    from torch.utils._pytree import tree_leaves

    return tree_leaves(obj)


def _dtype_name(dt) -> str:
    return str(dt).replace("torch.", "")


def max_abs_err(actual, expected) -> float:
    """Largest |actual - expected|; matching NaNs and infinities count as 0, a lone NaN as inf."""
    import torch

    try:
        wide = torch.complex128 if actual.is_complex() else torch.float64
        a = actual.detach().to(wide)
        e = expected.detach().to(wide)
        if a.shape != e.shape:
            return float("inf")
        if a.numel() == 0:
            return 0.0
        both_nan = torch.isnan(a) & torch.isnan(e)
        same_inf = torch.isinf(a) & (a == e)
        d = (a - e).abs()
        d = torch.where(both_nan | same_inf, torch.zeros_like(d), d)
        d = torch.where(torch.isnan(d), torch.full_like(d, float("inf")), d)
        return float(d.max())
    except Exception:
        return float("nan")


def _scalar_text(x) -> str:
    v = x.item()
    return repr(v) if not isinstance(v, float) else f"{v:.6g}"


def _tensor_difference(a, e, tag, scale):
    """None when the tensors agree within the dtype's tolerances (times `scale`), else a Difference
    saying how many elements differ, where NaN/inf positions differ, and the first one."""
    import torch
    from torch.testing._comparison import default_tolerances

    rtol, atol = default_tolerances(e)
    rtol, atol = rtol * scale, atol * scale
    try:
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol, equal_nan=True, check_device=False,
                                   check_stride=False, check_layout=False)
        return None
    except AssertionError:
        pass
    err = max_abs_err(a, e)
    text = f"{tag}: max abs err {err:.3g} (rtol {rtol:g}, atol {atol:g})"
    index = None
    try:
        bad = ~torch.isclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
        n_bad = int(bad.sum())
        text = f"{tag}: {n_bad} of {e.numel()} elements differ, max abs err {err:.3g} (rtol {rtol:g}, atol {atol:g})"
        if e.is_floating_point() or e.is_complex():
            nan_pos = int((torch.isnan(a) != torch.isnan(e)).sum())
            inf_pos = int((torch.isinf(a) != torch.isinf(e)).sum())
            if nan_pos or inf_pos:
                text += f"; NaN positions differ at {nan_pos}, inf positions at {inf_pos}"
        if n_bad:
            index = tuple(int(i) for i in bad.nonzero()[0]) if bad.dim() else ()
            text += f"; first at {list(index)}: got {_scalar_text(a[index])}, native {_scalar_text(e[index])}"
    except Exception:  # e.g. an integer dtype isclose does not take: keep the summary
        pass
    return Difference(text, err, index)


def compare(actual, expected, values=True, label="output", scale=1.0):
    """None when `actual` (a CPU tree) matches `expected`; else a Difference for the worst leaf
    (a structure, dtype or shape difference at once). `values=False` compares metadata only;
    `scale` multiplies the dtype's default tolerances."""
    import torch

    al, el = _leaves(actual), _leaves(expected)
    if len(al) != len(el):
        return Difference(f"structure: {len(al)} outputs, expected {len(el)}", float("nan"))
    worst = None
    for i, (a, e) in enumerate(zip(al, el)):
        tag = f"{label} {i}" if len(el) > 1 else label
        if isinstance(e, torch.Tensor):
            if not isinstance(a, torch.Tensor):
                return Difference(f"{tag}: got {type(a).__name__}, expected a tensor", float("nan"), leaf=i)
            if a.dtype != e.dtype:
                return Difference(f"{tag}: dtype {_dtype_name(a.dtype)}, expected {_dtype_name(e.dtype)}",
                                  float("nan"), leaf=i)
            if tuple(a.shape) != tuple(e.shape):
                return Difference(f"{tag}: shape {list(a.shape)}, expected {list(e.shape)}", float("nan"), leaf=i)
            if not values:
                continue
            if e.layout != torch.strided:
                e = e.to_dense()
            if a.layout != torch.strided:
                a = a.to_dense()
            d = _tensor_difference(a, e, tag, scale)
            if d is not None and (worst is None or not (d.max_abs_err <= worst.max_abs_err)):
                worst = d._replace(leaf=i)
        elif isinstance(e, (bool, int, float, complex)):
            if isinstance(a, torch.Tensor):
                a = a.item() if a.numel() == 1 else a
            if not values:
                continue
            if not _python_scalars_close(a, e):
                err = abs(a - e) if isinstance(a, (int, float, complex)) else float("nan")
                if worst is None or not (err <= worst.max_abs_err):
                    worst = Difference(f"{tag}: {a!r}, expected {e!r}", err, leaf=i)
        else:
            try:
                ok = a == e
                ok = bool(ok) if not isinstance(ok, torch.Tensor) else bool(ok.all())
            except Exception:
                ok = type(a) is type(e)
            if not ok:
                return Difference(f"{tag}: {a!r:.80}, expected {e!r:.80}", float("nan"), leaf=i)
    return worst


def _python_scalars_close(a, e) -> bool:
    try:
        if a == e:
            return True
        if isinstance(e, float) and math.isnan(e):
            return isinstance(a, float) and math.isnan(a)
        return (isinstance(e, (float, complex)) and isinstance(a, (int, float, complex))
                and abs(a - e) <= 1e-5 + 1.3e-6 * abs(e))
    except Exception:
        return False


def zero_sign_difference(actual, expected):
    """A message when an output is +0.0 where native gives -0.0 (or the reverse), else None.
    Only floating tensors of equal shape are looked at."""
    import torch

    for i, (a, e) in enumerate(zip(_leaves(actual), _leaves(expected))):
        if not (isinstance(a, torch.Tensor) and isinstance(e, torch.Tensor)) or not e.is_floating_point():
            continue
        if a.shape != e.shape or a.dtype != e.dtype or e.layout != torch.strided or a.layout != torch.strided:
            continue
        zeros = (a == 0) & (e == 0)
        bad = zeros & (torch.signbit(a) != torch.signbit(e))
        if bool(bad.any()):
            index = [int(j) for j in bad.nonzero()[0]] if bad.dim() else []
            return (f"output {i}: {int(bad.sum())} zeros of the other sign; first at {index}: "
                    f"got {_scalar_text(a[tuple(index)])}, native {_scalar_text(e[tuple(index)])}")
    return None


def dense_layouts(obj):
    """Per leaf of `obj`: (shape, strides) of a tensor laid out densely in a non-default order
    (channels_last, transposed), else None. Read on native results before anything copies them."""
    import torch
    from torch._prims_common import is_non_overlapping_and_dense_or_false

    out = []
    for t in _leaves(obj):
        dense = (isinstance(t, torch.Tensor) and t.layout == torch.strided and t.numel() > 1
                 and not t.is_contiguous() and is_non_overlapping_and_dense_or_false(t))
        out.append((tuple(t.shape), tuple(t.stride())) if dense else None)
    return out


def stride_difference(device_strides, native_layouts):
    """A message when an output native lays out densely in a non-default order has other strides
    on the device, else None. Strides of size-1 dims are ignored."""
    for i, (got, want) in enumerate(zip(device_strides, native_layouts)):
        if got is None or want is None:
            continue
        shape, strides = want
        if len(got) != len(strides) or any(g != w for g, w, n in zip(got, strides, shape) if n > 1):
            return f"output {i}: strides {list(got)}, native {list(strides)} (shape {list(shape)})"
    return None


def exception_difference(native_exc, device_exc, native_regex=None):
    """(problem, note) for an input on which native PyTorch raised `native_exc`. The backend must
    raise an exception of the same type (`device_exc`, None when it returned a value); the
    message need not match, and a different one is only noted."""
    import re

    want = type(native_exc).__name__
    if device_exc is None:
        return f"returned a value where native raised {want}: {first_line(native_exc)}", None
    if type(device_exc) is not type(native_exc):
        return (f"raised {type(device_exc).__name__} ({first_line(device_exc)}) where native raised "
                f"{want} ({first_line(native_exc)})"), None
    note = None
    if native_regex and not re.search(native_regex, str(device_exc)):
        note = f"message differs: {first_line(device_exc)!r}, native {first_line(native_exc)!r}"
    return None, note


def first_line(e: BaseException) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else "")[:500]
