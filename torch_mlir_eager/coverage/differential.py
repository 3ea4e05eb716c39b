"""One call run natively and on the backend, and compared: the check behind the values,
extremal, layout and negative_dims columns.

A case's result is a dict: `outcome` (compiled / partial / fallback: agreed, and how the calls
ran by the backend's statistics; mismatch; error: the backend raised where native did not;
native_error / no_tensor: not a case), the call statistics, and for a mismatch its evidence and
`recheck`, a function that runs the backend half again and says whether it still disagrees
(attribution runs it in validation mode). Strides and signs of zeros that differ are reported
apart (`strides`, `zero_signs`): they matter less than values.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import traceback
import warnings
from typing import NamedTuple

from .backend import (Unwrappable, call_outcome, device_type, dispatch_recorder, is_random_aten, load_backend,
                      stats_delta, strides_of, to_device, to_host)
from .compare import compare, dense_layouts, first_line, stride_difference, zero_sign_difference
from .samples import on_device, tensor_leaves

SEED = 0

_WANTS_CPU_ARG = re.compile(r"expected \w+ to be on cpu, but it's on", re.I)
_BACKEND_BROKE_NATIVE = re.compile(r"_DummyBackendModule|privateuse1|PrivateUse1|'iree' backend|iree:0")


def where(tb) -> str:
    """The innermost traceback frame inside torch_mlir_eager but outside this tool (or the innermost one)."""
    here = os.path.dirname(os.path.abspath(__file__))
    frames = traceback.extract_tb(tb)
    outside = [fr for fr in frames if not os.path.abspath(fr.filename).startswith(here)]
    ours = [fr for fr in outside if "torch_mlir_eager" in fr.filename]
    pick = (ours or outside or frames or [None])[-1]
    if pick is None:
        return ""
    fn = pick.filename
    i = fn.find("torch_mlir_eager")
    fn = fn[i:] if i >= 0 else os.path.basename(fn)
    return f"{fn}:{pick.lineno} ({pick.name})"


def error_info(e: BaseException, prefix="") -> dict:
    return {"type": type(e).__name__, "message": prefix + first_line(e), "where": where(e.__traceback__)}


def seeded(fn, seed=SEED):
    import torch

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


def clone_tensor(t):
    return t.clone()


def run_native(fn, variant, seed=SEED):
    """(outputs, inputs after the call), on clones of the variant's tensors."""
    inp, args, kwargs = variant.build(clone_tensor)
    out = seeded(lambda: fn(inp, *args, **kwargs), seed)
    return out, (inp, args, kwargs)


class Native(NamedTuple):
    outputs: object
    inputs: list  # the tensor arguments after the call
    behaviour: str  # deterministic / random / unreproducible
    layouts: list  # compare.dense_layouts of the outputs


def native_behaviour(fn, variant) -> Native:
    """The native result of `variant` and its behaviour: `unreproducible` when the same seed does
    not repeat the result (empty); `random` when the call dispatches a random aten op (OpInfo seeds
    many random ops itself, with wrapper_set_seed) or another seed changes the result; else
    `deterministic`."""
    raw, raw_inputs = run_native(fn, variant)
    layouts = dense_layouts(raw)
    ref, ref_inputs = _cloned(raw), _cloned(tensors_of(raw_inputs))
    again, again_inputs = run_native(fn, variant)
    if compare(again, ref) is not None or compare(tensors_of(again_inputs), ref_inputs) is not None:
        return Native(ref, ref_inputs, "unreproducible", layouts)
    recorder = dispatch_recorder()
    with recorder:
        other, other_inputs = run_native(fn, variant, SEED + 1)
    if (any(is_random_aten(name) for name in recorder.ops)
            or compare(other, ref) is not None or compare(tensors_of(other_inputs), ref_inputs) is not None):
        return Native(ref, ref_inputs, "random", layouts)
    return Native(ref, ref_inputs, "deterministic", layouts)


def tensors_of(obj):
    """The tensor leaves of an argument tree (what a call can change)."""
    import torch
    from torch.utils._pytree import tree_leaves

    return [x for x in tree_leaves(obj) if isinstance(x, torch.Tensor)]


def _cloned(obj):
    import torch
    from torch.utils._pytree import tree_map

    return tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, obj)


def is_dispatched(variant) -> bool:
    """Whether the call reaches the backend: a tensor argument, or a factory `device=` argument
    the backend's device can take."""
    return bool(tensor_leaves(variant.tree())) or on_device(variant.kwargs, device_type()) is not variant.kwargs


def native_failure(e: BaseException) -> dict:
    msg = f"{type(e).__name__}: {first_line(e)}"
    if _BACKEND_BROKE_NATIVE.search(msg):
        # Native PyTorch fails only because the backend is loaded (e.g. its device module): that
        # is the backend's failure, not a sample to skip.
        return {"outcome": "error", "error": error_info(e, "native run broken by the backend: ")}
    return {"outcome": "native_error", "note": msg}


def device_failure(e: BaseException, st: dict) -> dict:
    """The result of a backend call that raised, with the statistics read so far."""
    if _WANTS_CPU_ARG.search(str(e)):
        # The op insists on a CPU tensor for an argument (e.g. tensor_split's indices); OpInfo
        # samples do not say which tensors are meant to stay on the CPU.
        return {"outcome": "native_error", "note": "op needs a CPU tensor argument: " + first_line(e)}
    return with_stats({"outcome": "error", "error": error_info(e)}, st)


def with_stats(res: dict, st) -> dict:
    res.update(stats_delta(st))
    res["fallbacks"] = {k: dict(v) for k, v in (st.get("fallbacks", {}) or {}).items()}
    return res


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


def run_forward(fn, variant, inplace=False, pointwise=False):
    """Run `variant` natively and on the backend; compare outputs and inputs after the call
    (values only when native repeats itself under the same seed and is not random)."""
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
    values = behaviour == "deterministic"
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
    if behaviour == "random":
        res["note"] = "values not compared (random: see the random column)"
    elif behaviour == "unreproducible":
        res["note"] = "values not compared (native does not repeat itself)"
    bad = judge(out_cpu, inputs_cpu)
    res["outcome"] = call_outcome(res)
    if bad is not None:
        message = bad.message
        if pointwise and bad.index is not None and bad.leaf == 0:
            at = inputs_at(variant, ref_leaf_shape(ref), bad.index)
            if at is not None:
                message += f" (inputs {at})"
        if variant.minor:  # a difference reported apart: the case otherwise counts as agreeing
            res[variant.minor] = message
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


def ref_leaf_shape(ref):
    from torch.utils._pytree import tree_leaves

    leaves = tree_leaves(ref)
    return tuple(leaves[0].shape) if leaves and hasattr(leaves[0], "shape") else ()
