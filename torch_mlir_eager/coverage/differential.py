"""The forward check behind the values, extremal, layout and negative_dims columns: one call run
natively and on the backend, its outputs and its tensor arguments after the call compared.
Strides, signs of zeros and subnormal differences are reported apart (`strides`, `zero_signs`,
`subnormals`): they matter less than values. So is an elementwise result where PyTorch's own CPU
kernel gives two answers, one in its vectorized loop and another in its scalar loop, and the backend
gives the scalar loop's (`native_paths`): either is PyTorch's answer.
"""

from __future__ import annotations

import contextlib
import time

from .backend import Unwrappable, call_outcome, device_type, load_backend, strides_of, to_device, to_host
from .cases import device_failure, is_dispatched, native_behaviour, native_failure, seeded, tensors_of, with_stats
from .compare import compare, stride_difference, zero_sign_difference
from .samples import on_device, tensor_leaves


def inputs_at(variant, shape, index):
    """`(a, b)`: the tensor arguments' values at an output element, when they all broadcast to
    the output (elementwise ops); None otherwise."""
    import torch

    vals = []
    for t in tensor_leaves(variant.tree()):
        if not isinstance(t, torch.Tensor):
            return None
        try:
            vals.append(torch.broadcast_to(t, shape)[index].item())
        except (RuntimeError, IndexError):
            return None
    return "(" + ", ".join(f"{v:.6g}" if isinstance(v, float) else repr(v) for v in vals) + ")" if vals else None


def run_forward(fn, variant, inplace=False, pointwise=False, uninitialised=False):
    """Run `variant` natively and on the backend; compare outputs and inputs after the call
    (values only when native repeats itself under the same seed and is not random, and the op
    does not return uninitialised memory)."""
    be = load_backend()
    if inplace and variant.broadcasts_input:
        return {"outcome": "native_error", "note": "in-place sample broadcasts its input"}
    if not is_dispatched(variant):
        return {"outcome": "no_tensor", "note": "no tensor inputs: not dispatched to the backend"}
    try:
        native = native_behaviour(fn, variant)
    except Exception as e:
        return native_failure(e)
    ref, ref_inputs, behaviour = native.outputs, native.inputs, native.behaviour
    values = behaviour == "deterministic" and not uninitialised
    on_backend = variant._replace(kwargs=on_device(variant.kwargs, device_type()))

    def device_half(around_call=contextlib.nullcontext):
        wrapped = on_backend.build(to_device)
        inp, args, kwargs = wrapped
        be.reset_stats()
        with around_call():
            out = seeded(lambda: fn(inp, *args, **kwargs))
        st = be.stats()
        strides = strides_of(out)
        out_cpu, leaked = to_host(out)
        inputs_cpu, _ = to_host(tensors_of(wrapped))
        return out_cpu, inputs_cpu, st, strides, leaked

    def judge(out_cpu, inputs_cpu):
        bad = compare(out_cpu, ref, values=values)
        if bad is None:
            bad_in = compare(inputs_cpu, ref_inputs, values=values, label="input")
            if bad_in is not None:
                bad = bad_in._replace(message="after the call, " + bad_in.message, index=None)
        return bad

    def recheck(around_call=contextlib.nullcontext):
        out_cpu, inputs_cpu, *_ = device_half(around_call)
        bad = judge(out_cpu, inputs_cpu)
        return None if bad is None else bad.message

    t0 = time.perf_counter()
    try:
        out_cpu, inputs_cpu, st, strides, leaked = device_half()
    except Unwrappable as e:
        return {"outcome": "native_error", "note": f"not wrappable: {e}"}
    except Exception as e:
        return dict(device_failure(e, be.stats()), seconds=time.perf_counter() - t0)
    res = with_stats({"native": behaviour, "values_compared": values}, st)
    res["seconds"] = time.perf_counter() - t0
    if leaked and tensor_leaves(variant.tree()):
        res["note"] = f"{leaked} output tensor(s) not on the device"
    if uninitialised:
        res["note"] = "values not compared (uninitialised memory)"
    elif behaviour == "random":
        res["note"] = "values not compared (random: see the random column)"
    elif behaviour == "unreproducible":
        res["note"] = "values not compared (native does not repeat itself)"
    bad = judge(out_cpu, inputs_cpu)
    res["outcome"] = call_outcome(res)
    if bad is not None:
        message = bad.message
        if pointwise and bad.index is not None and bad.leaf == 0:
            at = inputs_at(variant, _first_leaf_shape(ref), bad.index)
            if at is not None:
                message += f" (inputs {at})"
        if variant.minor:  # a difference reported apart: the case otherwise counts as agreeing
            res[variant.minor] = message
            return res
        if pointwise and _matches_the_scalar_loop(fn, variant, out_cpu, inputs_cpu, values):
            res["native_paths"] = message + "; native's scalar loop gives the backend's answer"
            return res
        res.update(outcome="mismatch", mismatch=message, max_abs_err=bad.max_abs_err, recheck=recheck)
        return res
    if res["compiled"] + res["metadata"] + res["fallback"] == 0:
        res["note"] = "no aten call reached the backend"
    stride_bad = stride_difference(strides, native.layouts)
    if stride_bad:
        res["strides"] = stride_bad
    if values:
        zero_bad = zero_sign_difference(out_cpu, ref)
        if zero_bad:
            res["zero_signs"] = zero_bad
    return res


def _scalar_loop_copy(t):
    """A copy of `t` with its elements two apart in memory: PyTorch's CPU kernels run their scalar
    (not vectorized) loop on it."""
    import torch

    if t.dim() == 0 or t.numel() < 2 or t.layout != torch.strided:
        return t.clone()
    wide = torch.empty(*t.shape, 2, dtype=t.dtype)
    copy = wide[..., 0]
    copy.copy_(t)
    return copy


def _matches_the_scalar_loop(fn, variant, out_cpu, inputs_cpu, values) -> bool:
    """Whether the backend's outputs (and inputs after the call) match native's on inputs that
    make PyTorch take its scalar loop, where they differ from native's vectorized loop."""
    try:
        inp, args, kwargs = variant.build(_scalar_loop_copy)
        alt = seeded(lambda: fn(inp, *args, **kwargs))
    except Exception:
        return False
    return (compare(out_cpu, alt, values=values) is None
            and compare(inputs_cpu, tensors_of((inp, args, kwargs)), values=values, label="input") is None)


def _first_leaf_shape(ref):
    from torch.utils._pytree import tree_leaves

    leaves = tree_leaves(ref)
    return tuple(leaves[0].shape) if leaves and hasattr(leaves[0], "shape") else ()
