"""What the cases of every check share: seeding, native runs and their behaviour (deterministic,
random, unreproducible), and the result of a case whose native or backend half raised.

A case's result is a dict: `outcome` (compiled / partial / fallback: it agreed with native, and
how its calls ran by the backend's statistics; mismatch; error: the backend raised where native
did not; native_error / no_tensor: not a case), the call statistics (stats_delta), notes, and
for a mismatch its evidence and `recheck`, a function that runs the backend half again and says
whether it still disagrees (attribution runs it in validation mode).
"""

from __future__ import annotations

import os
import re
import traceback
import warnings
from typing import NamedTuple

from .backend import device_type, dispatch_recorder, is_random_aten, stats_delta
from .compare import compare, dense_layouts, first_line
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
