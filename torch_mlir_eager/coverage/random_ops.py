"""The random check, for calls whose native result depends on the seed (rand, normal_, bernoulli,
dropout, multinomial, ...).

A random op the backend runs on the host (a fallback of an aten op tagged nondeterministic_seeded)
draws from the CPU generator: under the same torch.manual_seed the backend must give exactly
native's values. A backend that ran the random op itself is not expected to reproduce them; then
the distribution of many draws is compared with native's (median and spread; the frequency of each
value when native draws few distinct ones). Either way an all-zero result, or one equal to the
unchanged input, is named in the evidence.
"""

from __future__ import annotations

import contextlib
import math
import time

from .backend import Unwrappable, call_outcome, device_type, is_random_aten, load_backend, to_device, to_host
from .compare import compare
from .cases import SEED, device_failure, native_failure, run_native, seeded, tensors_of, with_stats
from .samples import on_device

DRAWS = 2000  # values per distribution (repeating the call on the sample's shape)
MAX_CALLS = 50
DISCRETE = 16  # at most this many distinct native values: compare frequencies of each value


def host_random_ops(st) -> list:
    """The random aten ops the backend ran on the host (as fallbacks), from its statistics."""
    return sorted(name for name in (st.get("fallbacks") or {}) if is_random_aten(name))


def _first_values(out):
    """The first tensor leaf of `out`, flattened to float64."""
    import torch
    from torch.utils._pytree import tree_leaves

    for x in tree_leaves(out):
        if isinstance(x, torch.Tensor):
            return x.detach().reshape(-1).to(torch.float64)
    return torch.zeros(0, dtype=torch.float64)


def _describe(v) -> str:
    import torch

    finite = v[torch.isfinite(v)]
    if finite.numel() == 0:
        return "no finite values"
    return f"mean {finite.mean():.4g}, std {finite.std(unbiased=False):.4g}, median {finite.median():.4g}"


def _repeats(draws, original) -> bool:
    """Whether the draws are the original values over and over."""
    import torch

    m = original.numel()
    return m > 0 and draws.numel() % m == 0 and bool(torch.equal(draws, original.repeat(draws.numel() // m)))


def distribution_problem(native_draws, device_draws, original):
    """A line naming how the backend's draws differ from native's, or None."""
    import torch

    n, d = native_draws, device_draws
    if d.numel() == 0 or n.numel() == 0:
        return None
    if bool((d == 0).all()) and not bool((n == 0).all()):
        return f"all zeros (native: {_describe(n)})"
    if original is not None and _repeats(d, original) and not _repeats(n, original):
        return "the input, unchanged"
    uniq = torch.unique(n[~torch.isnan(n)])
    if uniq.numel() <= DISCRETE:
        extra = torch.unique(d[~torch.isin(d, uniq)])
        if extra.numel():
            return f"values {extra[:5].tolist()} that native never draws (native: {uniq.tolist()})"
        for v in uniq.tolist():
            pn, pd = float((n == v).double().mean()), float((d == v).double().mean())
            se = math.sqrt(max(pn * (1 - pn), 1e-4) * (1 / n.numel() + 1 / d.numel()))
            if abs(pd - pn) > 6 * se + 0.01:
                return f"value {v:g} drawn {pd:.3f} of the time, native {pn:.3f}"
        return None
    qs = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    fn_, fd = n[torch.isfinite(n)], d[torch.isfinite(d)]
    if fd.numel() == 0:
        return f"no finite values (native: {_describe(n)})"
    q1n, medn, q3n = torch.quantile(fn_, qs).tolist()
    q1d, medd, q3d = torch.quantile(fd, qs).tolist()
    iqr_n, iqr_d = q3n - q1n, q3d - q1d
    scale = max(iqr_n, 1e-12 * (abs(medn) + 1))
    if abs(medd - medn) > 0.2 * scale or not (0.8 <= (iqr_d + 1e-300) / (iqr_n + 1e-300) <= 1.25):
        return f"drawn {_describe(d)}, IQR {iqr_d:.4g}; native {_describe(n)}, IQR {iqr_n:.4g}"
    return None


def run_random(fn, variant):
    import torch

    be = load_backend()
    try:
        ref, ref_inputs = run_native(fn, variant)
        ref_inputs = tensors_of(ref_inputs)
    except Exception as e:
        return native_failure(e)
    on_backend = variant._replace(kwargs=on_device(variant.kwargs, device_type()))

    def device_half(around_call=contextlib.nullcontext, seed=SEED):
        wrapped = on_backend.build(to_device)
        inp, args, kwargs = wrapped
        be.reset_stats()
        with around_call():
            out = seeded(lambda: fn(inp, *args, **kwargs), seed)
        st = be.stats()
        return to_host(out)[0], to_host(tensors_of(wrapped))[0], st

    def draws(call):
        """The values of as many calls (seeds SEED+1000, +1001, ...) as make about DRAWS values;
        one call when the op seeds itself (OpInfo wraps many random ops in wrapper_set_seed)."""
        values = [_first_values(call(SEED + 1000)), _first_values(call(SEED + 1001))]
        if torch.equal(values[0], values[1]):
            return values[0]
        calls = min(MAX_CALLS, math.ceil(DRAWS / max(values[0].numel(), 1)))
        values += [_first_values(call(SEED + 1000 + i)) for i in range(2, calls)]
        return torch.cat(values)

    def distribution():
        original = _first_values(variant.input) if isinstance(variant.input, torch.Tensor) else None
        native = draws(lambda seed: run_native(fn, variant, seed)[0])
        device = draws(lambda seed: device_half(seed=seed)[0])
        return distribution_problem(native, device, original)

    def exact_problem(out_cpu, inputs_cpu):
        return compare(out_cpu, ref) or compare(inputs_cpu, ref_inputs, label="input")

    t0 = time.perf_counter()
    try:
        out_cpu, inputs_cpu, st = device_half()
    except Unwrappable as e:
        return {"outcome": "native_error", "note": f"not wrappable: {e}"}
    except Exception as e:
        return dict(device_failure(e, be.stats()), seconds=time.perf_counter() - t0)
    host_ops = host_random_ops(st)
    res = with_stats({"random_ops_on_host": host_ops}, st)
    try:
        if host_ops:
            bad = exact_problem(out_cpu, inputs_cpu)
            problem = None
            if bad is not None:
                why = distribution()
                problem = f"not native's values under the same seed: {bad.message}" + (f"; draws: {why}" if why else "")
                res["max_abs_err"] = bad.max_abs_err

            def recheck(around_call=contextlib.nullcontext):
                b = exact_problem(*device_half(around_call)[:2])
                return None if b is None else b.message
        else:
            problem = distribution()
            res["note"] = "random op run by the backend: distribution compared"

            def recheck(around_call=contextlib.nullcontext):
                device_half(around_call)
                return distribution()
    except Exception as e:
        return dict(device_failure(e, be.stats()), seconds=time.perf_counter() - t0)
    res["seconds"] = time.perf_counter() - t0
    if problem:
        res.update(outcome="mismatch", mismatch=problem, recheck=recheck)
        res.setdefault("max_abs_err", float("nan"))
    else:
        res["outcome"] = call_outcome(res)
    return res
