"""The error-input check: OpInfo's `error_inputs` (inputs on which PyTorch raises) run on the
backend, which must raise too, an exception of the same type. Returning a value is a mismatch;
a different message is only noted."""

from __future__ import annotations

import contextlib
import itertools
import time
import warnings

from .backend import Unwrappable, call_outcome, load_backend, to_device, to_host
from .compare import exception_difference
from .cases import clone_tensor, with_stats
from .samples import Variant


def error_variants(op, limit):
    """[(variant, native regex)] for the op's first `limit` error inputs (CPU)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inputs = list(itertools.islice(op.error_inputs("cpu"), limit))
    out = []
    for i, ei in enumerate(inputs):
        s = ei.sample_input
        out.append((Variant(f"error input {i}", s.input, tuple(s.args), dict(s.kwargs)), ei.error_regex))
    return out


def _call(fn, inp, args, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(inp, *args, **kwargs)


def run_error_input(fn, variant, regex):
    be = load_backend()
    inp, args, kwargs = variant.build(clone_tensor)
    try:
        _call(fn, inp, args, kwargs)
    except Exception as e:
        native_exc = e
    else:
        return {"outcome": "native_error",
                "note": "native PyTorch does not raise on this error input once its tensors are copies"}

    def device_half(around_call=contextlib.nullcontext):
        """(the exception the backend raised or None, its statistics)."""
        d_inp, d_args, d_kwargs = variant.build(to_device)
        be.reset_stats()
        raised, st = None, None
        try:
            with around_call():
                out = _call(fn, d_inp, d_args, d_kwargs)
            st = be.stats()
            to_host(out)  # an error the backend reports only when the value is read counts as raised
        except Unwrappable:
            raise
        except Exception as e:
            raised = e
        return raised, st if st is not None else be.stats()

    def recheck(around_call=contextlib.nullcontext):
        return exception_difference(native_exc, device_half(around_call)[0], regex)[0]

    t0 = time.perf_counter()
    try:
        raised, st = device_half()
    except Unwrappable as e:
        return {"outcome": "native_error", "note": f"not wrappable: {e}"}
    res = with_stats({"seconds": time.perf_counter() - t0, "native_raised": type(native_exc).__name__}, st)
    problem, note = exception_difference(native_exc, raised, regex)
    if note:
        res["note"] = note
    if problem:
        res.update(outcome="mismatch", mismatch=problem, max_abs_err=float("nan"), recheck=recheck)
    else:
        res["outcome"] = call_outcome(res)
    return res
