"""The gradient check: d/d(floating inputs) of sum(output * w), with w a fixed random weight per
floating output, by torch.autograd.grad natively and with backend leaves
(`TorchMLIRTensor(x).requires_grad_()`), compared."""

from __future__ import annotations

import contextlib
import time

from .backend import Unwrappable, call_outcome, load_backend, to_device, to_host
from .compare import compare
from .cases import device_failure, native_failure, seeded, with_stats

# Gradients sum over more terms than forward results (a reduction's backward, a convolution's
# weight gradient), in another order on the backend: they get this many times the forward's
# float tolerances (float32: rtol 1.3e-5, atol 1e-4). A wrong gradient is off by far more.
TOLERANCE_SCALE = 10.0
WEIGHT_SEED = 1


def _differentiable(t) -> bool:
    return t.is_floating_point()


def _leaf(t):
    """A native leaf: a detached clone that requires grad when it is floating."""
    x = t.detach().clone()
    return x.requires_grad_() if _differentiable(x) else x


def _device_leaf(t):
    x = to_device(t.detach())
    return x.requires_grad_() if _differentiable(t) else x


def _device_weight(w, out):
    """The weight of an output, on the device when the output is (an op like `to` returns CPU tensors)."""
    return to_device(w) if isinstance(out, load_backend().TorchMLIRTensor) else w


def _grads(fn, variant, inplace, place, place_weight):
    """(gradients as placed tensors, outputs it was taken of); None when nothing is differentiable."""
    import torch
    from torch.utils._pytree import tree_leaves

    inp, args, kwargs = variant.build(place)
    leaves, seen = [], set()
    for x in tree_leaves((inp, args, kwargs)):
        if isinstance(x, torch.Tensor) and x.requires_grad and id(x) not in seen:
            seen.add(id(x))
            leaves.append(x)
    if not leaves:
        return None
    with torch.enable_grad():
        if inplace and isinstance(inp, torch.Tensor):
            inp = inp.clone()  # an in-place op on a leaf is refused: differentiate through a copy
        out = seeded(lambda: fn(inp, *args, **kwargs))
        outs = [o for o in tree_leaves(out) if isinstance(o, torch.Tensor) and o.requires_grad and o.is_floating_point()]
        if not outs:
            return None
        gen = torch.Generator().manual_seed(WEIGHT_SEED)
        loss = sum((o * place_weight(torch.randn(o.shape, generator=gen, dtype=o.dtype), o)).sum() for o in outs)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [g if g is not None else torch.zeros_like(x) for g, x in zip(grads, leaves)]


def run_gradient(fn, variant, inplace=False):
    be = load_backend()
    try:
        expected = _grads(fn, variant, inplace, _leaf, lambda w, out: w)
    except Exception as e:
        return native_failure(e)
    if expected is None:
        return {"outcome": "native_error", "note": "no differentiable input or output"}
    expected = [g.detach() for g in expected]

    def device_half(around_call=contextlib.nullcontext):
        be.reset_stats()
        with around_call():
            grads = _grads(fn, variant, inplace, _device_leaf, _device_weight)
        st = be.stats()
        return to_host([g.detach() for g in grads])[0], st

    def recheck(around_call=contextlib.nullcontext):
        bad = compare(device_half(around_call)[0], expected, label="gradient of input", scale=TOLERANCE_SCALE)
        return None if bad is None else bad.message

    t0 = time.perf_counter()
    try:
        got, st = device_half()
    except Unwrappable as e:
        return {"outcome": "native_error", "note": f"not wrappable: {e}"}
    except Exception as e:
        return dict(device_failure(e, be.stats()), seconds=time.perf_counter() - t0)
    res = with_stats({"seconds": time.perf_counter() - t0}, st)
    bad = compare(got, expected, label="gradient of input", scale=TOLERANCE_SCALE)
    if bad is not None:
        res.update(outcome="mismatch", mismatch=bad.message, max_abs_err=bad.max_abs_err, recheck=recheck)
    else:
        res["outcome"] = call_outcome(res)
    return res
