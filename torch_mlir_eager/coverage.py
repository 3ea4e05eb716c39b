"""Op coverage: run PyTorch's OpInfo database through TorchMLIRTensor and report what compiles.

    python -m torch_mlir_eager.coverage                      # full float32 run, ~20-30 min on 2 cores
    python -m torch_mlir_eager.coverage --ops '^(add|mul)$'  # a few ops
    python -m torch_mlir_eager.coverage --baseline-set --write-baseline tests/coverage_baseline.json

For every OpInfo in `torch.testing._internal.common_methods_invocations.op_db` that supports the
dtype, the first `--max-samples` sample inputs are run natively on CPU and through
`TorchMLIRTensor`, and the outputs (and the inputs, to catch lost writes) are compared with
`torch.testing.assert_close` at the default tolerances for the dtype. Each (op, dtype) gets one
class:

    compiled   every intercepted aten call ran a compiled kernel or was pure metadata; outputs match
    partial    some calls fell back to native PyTorch; outputs match
    fallback   no call compiled (all fell back); outputs match
    mismatch   outputs differ from native
    error      the backend raised (or crashed, or timed out) where native did not
    skipped    no sample could be run (every sample raised natively, or had no tensor input)

Samples run in child processes (`--worker`), fed one op at a time, so an op that aborts or
segfaults inside a native library, or hangs, costs only itself: the parent records it as `error`
and starts a fresh child for the rest.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import importlib
import itertools
import json
import math
import os
import platform
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import types
import unittest
import warnings

CLASSES = ("compiled", "partial", "fallback", "mismatch", "error", "skipped")
# Ordering used for regressions: higher is better; mismatch and error are equally bad.
CLASS_RANK = {"compiled": 3, "partial": 2, "fallback": 1, "mismatch": 0, "error": 0}

# Who is likely to fix a fallback of a given dispatch step.
STEP_KIND = {
    "decompose": "project",
    "trace": "project",
    "functionalize": "project",
    "import": "project",
    "run": "project",
    "lower": "upstream",
    "compile": "upstream",
    "unsupported": "by design",
    "transfer": "by design",
    "compiling": "transient",
    "validate": "numerics",
}


def reason_kind(step: str, reason: str) -> str:
    """project / upstream / by design / ... for one fallback reason."""
    if "DynamicOutputShapeException" in reason or "data-dependent" in reason:
        return "by design"
    return STEP_KIND.get(step, "project")

DEFAULT_MAX_SAMPLES = 3
DEFAULT_OP_BUDGET = 30.0
DEFAULT_OP_TIMEOUT = 120.0
DEFAULT_OUT_DIR = "coverage_out"
SEED = 0

# Ops whose values are not reproducible (random or uninitialised memory): compare metadata only.
NONDETERMINISTIC_RE = re.compile(
    r"(^|\.|_)(empty|new_empty|rand|randn|randint|normal|uniform|bernoulli|multinomial|dropout"
    r"|exponential|geometric|cauchy|log_normal|rrelu|alpha_dropout|feature_alpha_dropout)"
)

# The fixed subset that tests/test_coverage_baseline.py tracks (OpInfo names, anchored regexes).
BASELINE_OPS = [
    # elementwise
    "add", "sub", "mul", "div.no_rounding_mode", "true_divide", "neg", "exp", "log", "sqrt", "rsqrt",
    "sigmoid", "tanh", "nn.functional.relu", "abs", "pow", "clamp", "where", "maximum", "minimum",
    "reciprocal", "sin", "cos", "erf", "floor", "eq", "gt", "lt", "ne", "logical_not",
    "nn.functional.gelu", "nn.functional.silu", "lerp", "addcmul",
    # reductions
    "sum", "mean", "amax", "amin", "argmax", "var", "std", "max.reduction_with_dim", "prod",
    "softmax", "log_softmax", "cumsum", "norm",
    # linear algebra
    "matmul", "mm", "bmm", "addmm", "nn.functional.linear",
    # nn
    "nn.functional.conv2d", "nn.functional.max_pool2d", "nn.functional.avg_pool2d",
    "nn.functional.adaptive_avg_pool2d", "nn.functional.batch_norm", "nn.functional.layer_norm",
    "nn.functional.embedding",
    # indexing / joining
    "index_select", "gather", "index_put", "masked_fill", "cat", "stack", "scatter",
    # views
    "view", "reshape", "transpose", "permute", "expand", "squeeze", "unsqueeze", "narrow",
    "select", "t", "flatten", "contiguous", "clone",
]
# Elementwise ops in the subset whose in-place variant (e.g. add_) is tracked too.
BASELINE_INPLACE = [
    "add", "sub", "mul", "div.no_rounding_mode", "neg", "exp", "sqrt", "sigmoid", "tanh",
    "nn.functional.relu", "abs", "pow", "clamp", "masked_fill",
]

ENV_BACKEND = "TORCH_MLIR_EAGER_COVERAGE_BACKEND"  # module providing the API (tests use a fake)
ENV_TEST_CRASH = "TORCH_MLIR_EAGER_COVERAGE_TEST_CRASH"  # entry id: the worker aborts on it
ENV_TEST_HANG = "TORCH_MLIR_EAGER_COVERAGE_TEST_HANG"  # entry id: the worker hangs on it


# ---------------------------------------------------------------------------------------------
# OpInfo database and entries
# ---------------------------------------------------------------------------------------------

_OP_DB = None


def load_op_db():
    """`op_db`, importable without the `expecttest` package (only its TestCase base is needed)."""
    global _OP_DB
    if _OP_DB is not None:
        return _OP_DB
    try:
        import expecttest  # noqa: F401
    except ImportError:
        stub = types.ModuleType("expecttest")
        stub.TestCase = unittest.TestCase
        stub.ACCEPT = False
        sys.modules["expecttest"] = stub
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.testing._internal.common_methods_invocations import op_db
    _OP_DB = op_db
    return op_db


def _is_elementwise(op) -> bool:
    from torch.testing._internal.opinfo.core import BinaryUfuncInfo, UnaryUfuncInfo

    return isinstance(op, (UnaryUfuncInfo, BinaryUfuncInfo))


def entry_id(name: str, variant: str, inplace: bool) -> str:
    """`add`, `add_`, `div.floor_rounding`, `div_.floor_rounding`."""
    base = name + ("_" if inplace else "")
    return f"{base}.{variant}" if variant else base


def _parse_dtypes(spec: str):
    import torch

    out = []
    for name in spec.split(","):
        name = name.strip()
        if not name:
            continue
        dt = getattr(torch, name, None)
        if not isinstance(dt, torch.dtype):
            raise SystemExit(f"coverage: unknown dtype {name!r}")
        out.append(dt)
    return out


def _dtype_name(dt) -> str:
    return str(dt).replace("torch.", "")


def select_entries(ops_regex=None, dtypes=("float32",), inplace="elementwise", names=None):
    """The (op, dtype, mode) entries to run, in op_db order.

    `ops_regex` is searched in both `name` and `name.variant`; `names` (exact entry ids such as
    "add_" or "div.floor_rounding") selects entries directly and overrides `inplace`.
    Returns (entries, not_supported) where entries are dicts and not_supported counts ops
    skipped because they do not support a dtype on CPU.
    """
    import torch

    op_db = load_op_db()
    rx = re.compile(ops_regex) if ops_regex else None
    wanted = set(names) if names is not None else None
    dts = [getattr(torch, d) if isinstance(d, str) else d for d in dtypes]
    entries, not_supported = [], 0
    for op in op_db:
        full = f"{op.name}.{op.variant_test_name}" if op.variant_test_name else op.name
        modes = [False]
        if op.inplace_variant is not None and (
            inplace == "all" or (inplace == "elementwise" and _is_elementwise(op)) or wanted is not None
        ):
            modes.append(True)
        for ip in modes:
            eid = entry_id(op.name, op.variant_test_name, ip)
            if wanted is not None:
                if eid not in wanted:
                    continue
            elif rx is not None and not (rx.search(op.name) or rx.search(full) or rx.search(eid)):
                continue
            for dt in dts:
                try:
                    supported = dt in op.supported_dtypes("cpu")
                except Exception:
                    supported = False
                if not supported:
                    not_supported += 1
                    continue
                entries.append(
                    {"id": eid, "name": op.name, "variant": op.variant_test_name, "inplace": ip,
                     "dtype": _dtype_name(dt)}
                )
    return entries, not_supported


def _find_op(name, variant):
    for op in load_op_db():
        if op.name == name and op.variant_test_name == variant:
            return op
    raise KeyError(f"no OpInfo {name!r} variant {variant!r}")


def baseline_names():
    """Entry ids of the fixed baseline subset (those that exist in this torch's op_db)."""
    by_full = {}
    for op in load_op_db():
        full = f"{op.name}.{op.variant_test_name}" if op.variant_test_name else op.name
        by_full.setdefault(full, op)
    names = []
    for n in BASELINE_OPS:
        op = by_full.get(n)
        if op is not None:
            names.append(entry_id(op.name, op.variant_test_name, False))
    for n in BASELINE_INPLACE:
        op = by_full.get(n)
        if op is not None and op.inplace_variant is not None:
            names.append(entry_id(op.name, op.variant_test_name, True))
    return names


# ---------------------------------------------------------------------------------------------
# Running one entry (in a worker, or in-process)
# ---------------------------------------------------------------------------------------------

_BACKEND = None


def backend():
    global _BACKEND
    if _BACKEND is None:
        be = importlib.import_module(os.environ.get(ENV_BACKEND) or "torch_mlir_eager")
        # Coverage needs every miss compiled before the call returns, not run natively while a
        # background compile is pending.
        cfg = getattr(be, "set_async_compile", None)
        if cfg is None:
            try:
                cfg = importlib.import_module(be.__name__ + ".config").set_async_compile
            except Exception:
                cfg = None
        if cfg is not None:
            try:
                cfg(False)
            except Exception:
                pass
        _BACKEND = be
    return _BACKEND


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    line = s.splitlines()[0] if s else ""
    return line[:500]


def _where(tb) -> str:
    """The innermost traceback frame inside torch_mlir_eager (or the innermost one)."""
    frames = traceback.extract_tb(tb)
    pick = None
    for fr in frames:
        if "torch_mlir_eager" in fr.filename and not fr.filename.endswith("coverage.py"):
            pick = fr
    if pick is None:
        for fr in frames:
            if not fr.filename.endswith("coverage.py"):
                pick = fr
    if pick is None and frames:
        pick = frames[-1]
    if pick is None:
        return ""
    fn = pick.filename
    i = fn.find("torch_mlir_eager")
    fn = fn[i:] if i >= 0 else os.path.basename(fn)
    return f"{fn}:{pick.lineno} ({pick.name})"


def _tree_map(fn, obj):
    from torch.utils._pytree import tree_map

    return tree_map(fn, obj)


def _tree_leaves(obj):
    from torch.utils._pytree import tree_leaves

    return tree_leaves(obj)


def _clone_tree(obj):
    import torch

    return _tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, obj)


class _Unwrappable(Exception):
    pass


def _wrap_tree(obj, TorchMLIRTensor):
    """Every tensor leaf wrapped (the same tensor object gives the same wrapper)."""
    import torch

    memo = {}

    def wrap(x):
        if isinstance(x, torch.Tensor):
            if x.layout != torch.strided:
                raise _Unwrappable(f"{x.layout} input")
            if id(x) not in memo:
                memo[id(x)] = TorchMLIRTensor(x)
            return memo[id(x)]
        return x

    return _tree_map(wrap, obj)


def _to_cpu_tree(obj, TorchMLIRTensor):
    import torch

    leaked = []

    def cpu(x):
        if isinstance(x, TorchMLIRTensor):
            return x.cpu()
        if isinstance(x, torch.Tensor):
            leaked.append(x)
        return x

    return _tree_map(cpu, obj), len(leaked)


def _max_abs_err(actual, expected) -> float:
    import torch

    try:
        a = actual.detach().to(torch.float64) if not actual.is_complex() else actual.detach().to(torch.complex128)
        e = expected.detach().to(a.dtype)
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


def compare(actual, expected, values=True, label="output"):
    """None when `actual` (CPU tree) matches `expected`; else (message, max_abs_err)."""
    import torch
    from torch.testing._comparison import default_tolerances

    al, el = _tree_leaves(actual), _tree_leaves(expected)
    if len(al) != len(el):
        return (f"structure: {len(al)} outputs, expected {len(el)}", float("nan"))
    worst = None
    for i, (a, e) in enumerate(zip(al, el)):
        tag = f"{label} {i}" if len(el) > 1 else label
        if isinstance(e, torch.Tensor):
            if not isinstance(a, torch.Tensor):
                return (f"{tag}: got {type(a).__name__}, expected a tensor", float("nan"))
            if a.dtype != e.dtype:
                return (f"{tag}: dtype {_dtype_name(a.dtype)}, expected {_dtype_name(e.dtype)}", float("nan"))
            if tuple(a.shape) != tuple(e.shape):
                return (f"{tag}: shape {list(a.shape)}, expected {list(e.shape)}", float("nan"))
            if not values:
                continue
            if e.layout != torch.strided:
                e = e.to_dense()
            if a.layout != torch.strided:
                a = a.to_dense()
            rtol, atol = default_tolerances(e)
            try:
                torch.testing.assert_close(
                    a, e, rtol=rtol, atol=atol, equal_nan=True, check_device=False,
                    check_stride=False, check_layout=False,
                )
            except AssertionError:
                err = _max_abs_err(a, e)
                if worst is None or not (err <= worst[1]):
                    worst = (f"{tag}: max abs err {err:.3g} (rtol {rtol:g}, atol {atol:g})", err)
        elif isinstance(e, (bool, int, float, complex)) and not isinstance(e, torch.Tensor):
            if isinstance(a, torch.Tensor):
                a = a.item() if a.numel() == 1 else a
            if not values:
                continue
            try:
                ok = (a == e) or (
                    isinstance(e, (float, complex)) and isinstance(a, (int, float, complex))
                    and (
                        (isinstance(e, float) and math.isnan(e) and isinstance(a, float) and math.isnan(a))
                        or abs(a - e) <= 1e-5 + 1.3e-6 * abs(e)
                    )
                )
            except Exception:
                ok = False
            if not ok:
                err = abs(a - e) if isinstance(a, (int, float, complex)) else float("nan")
                if worst is None or not (err <= worst[1]):
                    worst = (f"{tag}: {a!r}, expected {e!r}", err)
        else:
            try:
                ok = a == e
                ok = bool(ok) if not isinstance(ok, torch.Tensor) else bool(ok.all())
            except Exception:
                ok = type(a) is type(e)
            if not ok:
                return (f"{tag}: {a!r:.80}, expected {e!r:.80}", float("nan"))
    return worst


_WANTS_CPU_ARG = re.compile(r"expected \w+ to be on cpu, but it's on", re.I)
_BACKEND_BROKE_NATIVE = re.compile(r"_DummyBackendModule|privateuse1|PrivateUse1|'iree' backend|iree:0")


def _seeded(fn):
    import torch

    torch.manual_seed(SEED)
    return fn()


def _has_tensor(obj) -> bool:
    import torch

    return any(isinstance(x, torch.Tensor) for x in _tree_leaves(obj))


def _stats_delta(st):
    return {
        "compiled": int(st.get("compiled_calls", 0)),
        "metadata": int(st.get("metadata_calls", 0)),
        "fallback": int(st.get("fallback_calls", 0)),
        "kernels_compiled": int(st.get("kernels_compiled", 0)),
        "compile_failures": int(st.get("compile_failures", 0)),
        "compile_seconds": float(st.get("compile_seconds", 0.0)),
        "cache_hits": int(st.get("cache_hits", 0)),
        "cache_misses": int(st.get("cache_misses", 0)),
        "disk_cache_hits": int(st.get("disk_cache_hits", 0)),
    }


def run_sample(op, sample, inplace: bool, values: bool):
    """Run one sample natively and through the backend. Returns a sample-result dict."""
    import torch

    be = backend()
    TorchMLIRTensor = be.TorchMLIRTensor
    fn = op.inplace_variant if inplace else op.op

    def args_of(s):
        return (s.input, s.args, s.kwargs)

    if inplace and getattr(sample, "broadcasts_input", False):
        return {"outcome": "native_error", "note": "in-place sample broadcasts its input"}
    if not _has_tensor(args_of(sample)):
        return {"outcome": "no_tensor", "note": "no tensor inputs: not dispatched to the backend"}

    # Native, twice on clones, to spot values that are not reproducible.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inp1, a1, k1 = _clone_tree(args_of(sample))
            ref = _seeded(lambda: fn(inp1, *a1, **k1))
            ref = _clone_tree(ref)
            ref_inputs = (inp1, a1, k1)
            if values:
                inp2, a2, k2 = _clone_tree(args_of(sample))
                ref2 = _clone_tree(_seeded(lambda: fn(inp2, *a2, **k2)))
                if compare(ref2, ref) is not None or compare((inp2, a2, k2), ref_inputs) is not None:
                    values = False
    except Exception as e:
        msg = f"{type(e).__name__}: {_first_line(e)}"
        if _BACKEND_BROKE_NATIVE.search(msg):
            # Native PyTorch fails only because the backend is loaded (e.g. its device module):
            # that is the backend's failure, not a sample to skip.
            return {"outcome": "error", "error": {"type": type(e).__name__,
                                                  "message": "native run broken by the backend: " + _first_line(e),
                                                  "where": _where(e.__traceback__)}}
        return {"outcome": "native_error", "note": msg}

    # Backend.
    try:
        wrapped = _wrap_tree(args_of(sample), TorchMLIRTensor)
    except _Unwrappable as e:
        return {"outcome": "native_error", "note": f"not wrappable: {e}"}
    except Exception as e:
        return {"outcome": "error", "error": {"type": type(e).__name__, "message": "wrapping input: " + _first_line(e),
                                               "where": _where(e.__traceback__)}}
    w_inp, w_args, w_kwargs = wrapped
    st = None
    t0 = time.perf_counter()
    try:
        be.reset_stats()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = _seeded(lambda: fn(w_inp, *w_args, **w_kwargs))
        st = be.stats()
        out_cpu, leaked = _to_cpu_tree(out, TorchMLIRTensor)
        inputs_cpu, _ = _to_cpu_tree(wrapped, TorchMLIRTensor)
    except Exception as e:
        if _WANTS_CPU_ARG.search(str(e)):
            # The op insists on a CPU tensor for an argument (e.g. tensor_split's indices); OpInfo
            # samples do not say which tensors are meant to stay on the CPU.
            return {"outcome": "native_error", "note": "op needs a CPU tensor argument: " + _first_line(e)}
        if st is None:
            try:
                st = be.stats()
            except Exception:
                st = {}
        res = {"outcome": "error", "error": {"type": type(e).__name__, "message": _first_line(e),
                                              "where": _where(e.__traceback__)}}
        res.update(_stats_delta(st))
        res["fallbacks"] = dict(st.get("fallbacks", {}) or {})
        res["seconds"] = time.perf_counter() - t0
        return res
    res = _stats_delta(st)
    res["fallbacks"] = {k: dict(v) for k, v in (st.get("fallbacks", {}) or {}).items()}
    res["seconds"] = time.perf_counter() - t0
    res["values_compared"] = values
    if leaked and _has_tensor(args_of(sample)):
        res["note"] = f"{leaked} output tensor(s) not on the device"
    bad = compare(out_cpu, ref, values=values)
    if bad is None:
        bad_in = compare(inputs_cpu, ref_inputs, values=values, label="input")
        if bad_in is not None:
            bad = ("after the call, " + bad_in[0], bad_in[1])
    if bad is not None:
        res["outcome"] = "mismatch"
        res["mismatch"] = bad[0]
        res["max_abs_err"] = bad[1]
        return res
    calls = res["compiled"] + res["metadata"] + res["fallback"]
    if res["fallback"] == 0:
        res["outcome"] = "compiled"
        if calls == 0:
            res["note"] = "no aten call reached the backend"
    elif res["compiled"] == 0:
        res["outcome"] = "fallback"
    else:
        res["outcome"] = "partial"
    return res


def run_entry(entry, max_samples=DEFAULT_MAX_SAMPLES, op_budget=DEFAULT_OP_BUDGET):
    """Run one (op, dtype, mode) entry. Returns the entry result dict (JSON-serialisable)."""
    import torch

    t0 = time.perf_counter()
    result = dict(entry)
    result.update(
        {"class": None, "samples": 0, "samples_native_error": 0, "samples_no_tensor": 0,
         "sample_classes": {}, "calls": {"compiled": 0, "metadata": 0, "fallback": 0},
         "kernels_compiled": 0, "compile_seconds": 0.0, "cache_hits": 0, "fallbacks": {},
         "detail": "", "notes": [], "more_samples": False}
    )
    try:
        op = _find_op(entry["name"], entry["variant"])
        dtype = getattr(torch, entry["dtype"])
        values = not NONDETERMINISTIC_RE.search(entry["name"])
        torch.manual_seed(SEED)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gen = iter(op.sample_inputs("cpu", dtype, requires_grad=False))
            samples = list(itertools.islice(gen, max_samples))
            try:
                result["more_samples"] = next(gen, None) is not None
            except Exception:
                result["more_samples"] = True
    except Exception as e:
        result["class"] = "skipped"
        result["detail"] = f"sample generation failed: {type(e).__name__}: {_first_line(e)}"
        result["seconds"] = time.perf_counter() - t0
        return result

    first_error = first_mismatch = None
    worst_err = None
    outcomes = collections.Counter()
    for i, sample in enumerate(samples):
        if i > 0 and time.perf_counter() - t0 > op_budget:
            result["notes"].append(f"op budget {op_budget:g}s reached after {i} of {len(samples)} samples")
            result["more_samples"] = True
            break
        try:
            r = run_sample(op, sample, entry["inplace"], values)
        except Exception as e:  # a bug in this tool, not the backend; report it as such
            r = {"outcome": "error", "error": {"type": type(e).__name__, "message": "coverage tool: " + _first_line(e),
                                               "where": _where(e.__traceback__)}}
        oc = r["outcome"]
        if oc == "native_error":
            result["samples_native_error"] += 1
            if r.get("note") and len(result["notes"]) < 5:
                result["notes"].append(f"sample {i} skipped: {r['note']}")
            continue
        if oc == "no_tensor":
            result["samples_no_tensor"] += 1
            continue
        result["samples"] += 1
        outcomes[oc] += 1
        for k in ("compiled", "metadata", "fallback"):
            result["calls"][k] += r.get(k, 0)
        result["kernels_compiled"] += r.get("kernels_compiled", 0)
        result["compile_seconds"] += r.get("compile_seconds", 0.0)
        result["cache_hits"] += r.get("cache_hits", 0)
        result["disk_cache_hits"] = result.get("disk_cache_hits", 0) + r.get("disk_cache_hits", 0)
        for aten, fb in (r.get("fallbacks") or {}).items():
            cur = result["fallbacks"].get(aten)
            if cur is None:
                result["fallbacks"][aten] = {"count": int(fb.get("count", 1)), "reason": str(fb.get("reason", "")),
                                             "step": str(fb.get("step", ""))}
            else:
                cur["count"] += int(fb.get("count", 1))
        if r.get("note") and len(result["notes"]) < 5:
            result["notes"].append(f"sample {i}: {r['note']}")
        if oc == "error" and first_error is None:
            first_error = dict(r["error"], sample=i)
        if oc == "mismatch":
            err = r.get("max_abs_err", float("nan"))
            if first_mismatch is None:
                first_mismatch = (i, r["mismatch"])
            if worst_err is None or (err == err and not (err <= worst_err)):
                worst_err = err
                first_mismatch = (i, r["mismatch"])
        if r.get("values_compared") is False and "values not compared (nondeterministic)" not in result["notes"]:
            result["notes"].append("values not compared (nondeterministic)")
    result["sample_classes"] = dict(outcomes)

    if result["samples"] == 0:
        result["class"] = "skipped"
        if result["samples_native_error"]:
            result["detail"] = "every sample raised natively or was not runnable"
            if result["notes"]:
                result["detail"] += f" ({result['notes'][0]})"
        elif result["samples_no_tensor"]:
            result["detail"] = "no sample has a tensor input"
        else:
            result["detail"] = "no samples"
    elif outcomes["error"]:
        result["class"] = "error"
        result["error"] = first_error
        result["detail"] = f"{first_error['type']}: {first_error['message']}"
    elif outcomes["mismatch"]:
        result["class"] = "mismatch"
        result["max_abs_err"] = worst_err
        result["detail"] = f"sample {first_mismatch[0]}: {first_mismatch[1]}"
    elif outcomes["fallback"] == result["samples"]:
        result["class"] = "fallback"
    elif outcomes["compiled"] == result["samples"]:
        result["class"] = "compiled"
    else:
        result["class"] = "partial"
    if result["class"] in ("fallback", "partial") or (result["class"] in ("mismatch", "error") and result["fallbacks"]):
        parts = []
        for aten, fb in sorted(result["fallbacks"].items(), key=lambda kv: -kv[1]["count"]):
            parts.append(f"{aten} [{fb['step']}]: {fb['reason']}")
        fbtext = "; ".join(parts)
        result["detail"] = (result["detail"] + " | fallbacks: " + fbtext) if result["detail"] else fbtext
    result["seconds"] = round(time.perf_counter() - t0, 3)
    result["compile_seconds"] = round(result["compile_seconds"], 3)
    return result


def error_result(entry, message, etype="Crash"):
    r = dict(entry)
    r.update({"class": "error", "samples": 0, "samples_native_error": 0, "samples_no_tensor": 0,
              "sample_classes": {}, "calls": {"compiled": 0, "metadata": 0, "fallback": 0},
              "kernels_compiled": 0, "compile_seconds": 0.0, "cache_hits": 0, "fallbacks": {},
              "error": {"type": etype, "message": message, "where": ""},
              "detail": f"{etype}: {message}", "notes": [], "more_samples": False})
    return r


# ---------------------------------------------------------------------------------------------
# Worker process
# ---------------------------------------------------------------------------------------------


def worker_main():
    """Read entries (one JSON line each) on stdin; write one JSON line per event on the protocol
    pipe (the original stdout). Anything else printed, by Python or native code, goes to stderr."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    opts = json.loads(sys.stdin.readline())

    def send(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    load_op_db()
    backend()
    send({"event": "ready", "pid": os.getpid()})
    crash_on = os.environ.get(ENV_TEST_CRASH)
    hang_on = os.environ.get(ENV_TEST_HANG)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        entry = json.loads(line)
        send({"event": "start", "id": entry["id"], "dtype": entry["dtype"]})
        if crash_on and entry["id"] == crash_on:
            os.abort()
        if hang_on and entry["id"] == hang_on:
            time.sleep(1e6)
        try:
            res = run_entry(entry, opts["max_samples"], opts["op_budget"])
        except BaseException as e:  # noqa: BLE001
            res = error_result(entry, f"coverage tool: {_first_line(e)}", type(e).__name__)
        print(f"[coverage worker] {entry['id']} {entry['dtype']}: {res['class']} {res['detail'][:200]}",
              file=sys.stderr, flush=True)
        send({"event": "done", "result": _json_safe(res)})


def _json_safe(obj):
    if isinstance(obj, float):
        if math.isnan(obj):
            return "nan"
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------
# Parent: scheduling, isolation, progress
# ---------------------------------------------------------------------------------------------


class Progress:
    def __init__(self, total, stream=sys.stderr, enabled=True):
        self.total = total
        self.done = 0
        self.counts = collections.Counter()
        self.running = {}
        self.stream = stream
        self.enabled = enabled
        self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()
        self.t0 = time.time()
        self.last = 0.0
        self.lock = threading.Lock()

    def line(self):
        el = int(time.time() - self.t0)
        counts = " ".join(f"{c[:4]}:{self.counts[c]}" for c in CLASSES if self.counts[c] or c in CLASSES[:5])
        width = 24
        filled = int(width * self.done / max(self.total, 1))
        bar = "#" * filled + "-" * (width - filled)
        running = ",".join(sorted(self.running.values()))[:60]
        return f"[{bar}] {self.done}/{self.total} {el // 60}:{el % 60:02d} {counts} | {running}"

    def update(self, force=False):
        if not self.enabled:
            return
        now = time.time()
        if self.tty:
            if force or now - self.last > 0.2:
                self.stream.write("\r\033[K" + self.line())
                self.stream.flush()
                self.last = now
        elif force or now - self.last > 15:
            self.stream.write(self.line() + "\n")
            self.stream.flush()
            self.last = now

    def start(self, slot, name):
        self.running[slot] = name
        self.update()

    def finish(self, slot, cls):
        self.running.pop(slot, None)
        self.done += 1
        self.counts[cls] += 1
        self.update()

    def close(self):
        if self.enabled:
            if self.tty:
                self.stream.write("\r\033[K" + self.line() + "\n")
            else:
                self.stream.write(self.line() + "\n")
            self.stream.flush()


class _Worker:
    def __init__(self, slot, opts, env, log_path, events):
        self.slot = slot
        self.log = open(log_path, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "torch_mlir_eager.coverage", "--worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env,
            start_new_session=True, text=True, bufsize=1,
        )
        self.proc.stdin.write(json.dumps(opts) + "\n")
        self.proc.stdin.flush()
        self.ready = False
        self.entry = None  # entry being run
        self.started = None  # when the entry (or the worker start-up) began
        self.spawned = time.time()
        self.ran = 0
        self.dead = False
        self.reader = threading.Thread(target=self._read, args=(events,), daemon=True)
        self.reader.start()

    def _read(self, events):
        for line in self.proc.stdout:
            line = line.strip()
            if line:
                try:
                    events.put((self, json.loads(line)))
                except ValueError:
                    pass
        events.put((self, None))

    def send(self, entry):
        self.entry = entry
        self.started = None
        self.proc.stdin.write(json.dumps(entry) + "\n")
        self.proc.stdin.flush()

    def kill(self):
        self.dead = True
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()

    def stop(self):
        self.dead = True
        try:
            self.proc.stdin.close()
        except Exception:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
        try:
            self.log.close()
        except Exception:
            pass


def _signal_name(n):
    try:
        return signal.Signals(n).name
    except ValueError:
        return str(n)


def run_isolated(entries, opts, jobs=2, op_timeout=DEFAULT_OP_TIMEOUT, log_dir=DEFAULT_OUT_DIR,
                 env=None, progress=None, ops_per_worker=0, on_result=None, startup_timeout=300.0):
    """Run entries in `jobs` worker processes fed one entry at a time. Returns results in order."""
    env = dict(os.environ if env is None else env)
    os.makedirs(log_dir, exist_ok=True)
    pending = collections.deque(range(len(entries)))
    results = [None] * len(entries)
    events = queue.Queue()
    workers = {}
    startup_failures = 0
    progress = progress or Progress(len(entries), enabled=False)

    def record(idx, res):
        results[idx] = res
        if on_result:
            on_result(res)

    def spawn(slot):
        w = _Worker(slot, opts, env, os.path.join(log_dir, f"worker-{slot}.log"), events)
        w.started = time.time()
        workers[slot] = w
        return w

    def feed(w):
        if w.dead or not w.ready or w.entry is not None:
            return
        if not pending:
            w.stop()
            workers.pop(w.slot, None)
            return
        if ops_per_worker and w.ran >= ops_per_worker:
            w.stop()
            workers.pop(w.slot, None)
            spawn(w.slot)
            return
        idx = pending.popleft()
        w.idx = idx
        w.send(entries[idx])
        w.started = time.time()
        progress.start(w.slot, entries[idx]["id"])

    for slot in range(max(1, min(jobs, len(entries)))):
        spawn(slot)

    try:
        while workers:
            try:
                w, msg = events.get(timeout=0.5)
            except queue.Empty:
                w, msg = None, None
            if w is not None and not w.dead and workers.get(w.slot) is w:
                if msg is None:  # the worker's stdout closed: it exited
                    try:
                        rc = w.proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        rc = None
                    w.kill()
                    workers.pop(w.slot, None)
                    if w.entry is not None:
                        why = f"crashed: signal {-rc} ({_signal_name(-rc)})" if rc is not None and rc < 0 else f"crashed: worker exited with status {rc}"
                        record(w.idx, error_result(w.entry, why))
                        progress.finish(w.slot, "error")
                        startup_failures = 0
                    elif not w.ready:
                        startup_failures += 1
                        if startup_failures >= 3:
                            raise RuntimeError(
                                f"coverage: worker failed to start 3 times (exit status {rc}); see {log_dir}/worker-{w.slot}.log")
                    if pending:
                        spawn(w.slot)
                elif msg.get("event") == "ready":
                    w.ready = True
                    startup_failures = 0
                    feed(w)
                elif msg.get("event") == "start":
                    w.started = time.time()
                elif msg.get("event") == "done":
                    res = msg["result"]
                    record(w.idx, res)
                    progress.finish(w.slot, res["class"])
                    w.entry = None
                    w.ran += 1
                    feed(w)
            # timeouts
            now = time.time()
            for slot, w in list(workers.items()):
                if w.dead:
                    continue
                if w.entry is not None and w.started is not None and now - w.started > op_timeout:
                    w.kill()
                    workers.pop(slot, None)
                    record(w.idx, error_result(w.entry, f"timeout: no result after {op_timeout:g} s", "Timeout"))
                    progress.finish(slot, "error")
                    if pending:
                        spawn(slot)
                elif not w.ready and now - w.started > startup_timeout:
                    w.kill()
                    workers.pop(slot, None)
                    startup_failures += 1
                    if startup_failures >= 3:
                        raise RuntimeError("coverage: workers do not start (start-up timeout)")
                    spawn(slot)
            progress.update()
    finally:
        for w in list(workers.values()):
            w.kill()
    return results


def run_inprocess(entries, opts, progress=None, on_result=None):
    progress = progress or Progress(len(entries), enabled=False)
    results = []
    for e in entries:
        progress.start(0, e["id"])
        try:
            res = _json_safe(run_entry(e, opts["max_samples"], opts["op_budget"]))
        except Exception as ex:  # noqa: BLE001
            res = _json_safe(error_result(e, f"coverage tool: {_first_line(ex)}", type(ex).__name__))
        results.append(res)
        progress.finish(0, res["class"])
        if on_result:
            on_result(res)
    return results


# ---------------------------------------------------------------------------------------------
# Aggregation and reports
# ---------------------------------------------------------------------------------------------


_NORMALIZERS = [
    (re.compile(r"0x[0-9a-fA-F]+"), "0x…"),
    (re.compile(r"(?<![A-Za-z_])\d+(\.\d+)?(e[-+]?\d+)?"), "N"),
    (re.compile(r"loc\([^)]*\)"), "loc(…)"),
]


def normalize_reason(reason: str) -> str:
    """A grouping key for a fallback reason: op names, IR text and numbers taken out."""
    r = reason.strip()
    if "failed to legalize operation 'torch.operator'" in r:
        return "failed to legalize operation 'torch.operator' (no torch-mlir lowering for <op>)"
    m = re.search(r"failed to legalize operation '([\w.]+)'( that was explicitly marked illegal)?", r)
    if m:
        op = m.group(1)
        if op.startswith("torch.aten.") or op.startswith("torch.prims."):
            op = "torch.aten.<op>"
        return f"failed to legalize operation '{op}'" + (m.group(2) or "")
    m = re.match(r"(\w*DynamicOutputShapeException|\w*DataDependentOutputException)", r)
    if m:
        return m.group(1) + ": <op> (data-dependent output shape)"
    r = re.sub(r"aten::\w+(\.\w+)?\(.*?\) -> [^.]*", "aten::<op>(...)", r)
    r = re.sub(r"\b(torch\.)?(aten|prims)[.:]{1,2}[\w]+(\.[\w]+)?", "aten.<op>", r)
    r = re.sub(r"\[[0-9, ]*\]", "[…]", r)
    for rx, sub in _NORMALIZERS:
        r = rx.sub(sub, r)
    return r[:240]


def summarize(results, not_supported=0):
    counts = collections.Counter(r["class"] for r in results)
    calls = collections.Counter()
    for r in results:
        for k, v in r["calls"].items():
            calls[k] += v
    total_calls = calls["compiled"] + calls["metadata"] + calls["fallback"]
    groups = {}
    by_aten = {}
    by_step = collections.defaultdict(lambda: {"calls": 0, "entries": set(), "kinds": set()})
    for r in results:
        for aten, fb in (r.get("fallbacks") or {}).items():
            step = fb.get("step", "")
            reason = fb.get("reason", "")
            key = (step, normalize_reason(reason))
            g = groups.setdefault(key, {"step": step, "kind": reason_kind(step, reason), "reason": key[1],
                                        "example_reason": reason, "entries": set(), "calls": 0,
                                        "aten_ops": collections.Counter(), "example_entry": r["id"]})
            g["entries"].add((r["id"], r["dtype"]))
            g["calls"] += fb.get("count", 1)
            g["aten_ops"][aten] += fb.get("count", 1)
            a = by_aten.setdefault((aten, key), {"aten_op": aten, "step": step,
                                                          "kind": reason_kind(step, reason),
                                                          "reason": reason, "entries": set(), "calls": 0})
            a["entries"].add((r["id"], r["dtype"]))
            a["calls"] += fb.get("count", 1)
            by_step[step]["calls"] += fb.get("count", 1)
            by_step[step].setdefault("kinds", set()).add(reason_kind(step, reason))
            by_step[step]["entries"].add((r["id"], r["dtype"]))
    reasons = sorted(groups.values(), key=lambda g: (-len(g["entries"]), -g["calls"], g["reason"]))
    reasons = [
        {"step": g["step"], "kind": g["kind"], "reason": g["reason"], "example_reason": g["example_reason"],
         "entries": len(g["entries"]), "calls": g["calls"],
         "aten_ops": [a for a, _ in g["aten_ops"].most_common()], "example_entry": g["example_entry"]}
        for g in reasons
    ]
    atens = sorted(by_aten.values(), key=lambda a: (-len(a["entries"]), -a["calls"], a["aten_op"]))
    atens = [dict(a, entries=len(a["entries"]), example_entries=sorted(x[0] for x in a["entries"])[:5]) for a in atens]
    missing = {}
    for r in results:
        for aten, fb in (r.get("fallbacks") or {}).items():
            reason = fb.get("reason", "")
            m = re.search(r'name = "(torch\.[\w.]+)"', reason) or re.search(
                r"failed to legalize operation '(torch\.(?:aten|prims)\.[\w.]+)'", reason)
            if fb.get("step") == "lower" and m:
                e = missing.setdefault(m.group(1), {"op": m.group(1), "entries": set(), "calls": 0, "aten_ops": set()})
                e["entries"].add((r["id"], r["dtype"]))
                e["calls"] += fb.get("count", 1)
                e["aten_ops"].add(aten)
    missing = sorted(missing.values(), key=lambda e: (-len(e["entries"]), -e["calls"], e["op"]))
    missing = [{"op": e["op"], "entries": len(e["entries"]), "calls": e["calls"],
                "aten_ops": sorted(e["aten_ops"]), "example_entries": sorted(x[0] for x in e["entries"])[:5]}
               for e in missing]
    steps = {s: {"calls": v["calls"], "entries": len(v["entries"]), "kind": "/".join(sorted(v.get("kinds", ())))}
             for s, v in sorted(by_step.items(), key=lambda kv: -kv[1]["calls"])}
    return {
        "classes": {c: counts.get(c, 0) for c in CLASSES},
        "entries": len(results),
        "not_supported_dtype": not_supported,
        "calls": dict(calls),
        "total_calls": total_calls,
        "share_compiled": (calls["compiled"] / total_calls) if total_calls else 0.0,
        "share_compiled_or_metadata": ((calls["compiled"] + calls["metadata"]) / total_calls) if total_calls else 0.0,
        "kernels_compiled": sum(r.get("kernels_compiled", 0) for r in results),
        "compile_seconds": round(sum(float(r.get("compile_seconds", 0) or 0) for r in results), 1),
        "samples": sum(r.get("samples", 0) for r in results),
        "fallback_steps": steps,
        "fallback_reasons": reasons,
        "fallback_by_aten": atens,
        "missing_lowerings": missing,
    }


def _md(s, limit=200) -> str:
    s = str(s).replace("\n", " ").replace("|", "\\|").replace("`", "'")
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return s


def render_markdown(data) -> str:
    meta, summ, results = data["meta"], data["summary"], data["results"]
    out = []
    w = out.append
    w("# Op coverage of torch_mlir_eager\n")
    w("PyTorch's OpInfo database (`torch.testing._internal.common_methods_invocations.op_db`) run through "
      "`TorchMLIRTensor`, compared with native CPU results. Generated by "
      f"`python -m torch_mlir_eager.coverage {meta.get('argv', '')}`.\n")
    w(f"- Date: {meta.get('date')}; duration: {meta.get('duration_s', 0) / 60:.1f} min "
      f"({meta.get('jobs')} worker(s)) on {meta.get('machine', {}).get('cpu', '?')} "
      f"({meta.get('machine', {}).get('cpus', '?')} cores)")
    v = meta.get("versions", {})
    w(f"- Versions: torch {v.get('torch')}, torch-mlir {v.get('torch-mlir')}, "
      f"iree-base-compiler {v.get('iree-base-compiler')}, iree-base-runtime {v.get('iree-base-runtime')}, "
      f"Python {v.get('python')}")
    w(f"- Dtypes: {', '.join(meta.get('dtypes', []))}; in-place variants: {meta.get('inplace')}; "
      f"ops filter: `{meta.get('ops') or 'all'}`")
    w(f"- **Bounded work**: at most **{meta.get('max_samples')} sample inputs per op** (the first ones OpInfo "
      f"generates), a soft budget of {meta.get('op_budget'):g} s per op (no new sample starts after it) and a "
      f"hard timeout of {meta.get('op_timeout'):g} s per op (then `error`). Ops with more samples than that "
      "are only partly exercised; a `compiled` here means the samples run compiled, not every case.")
    w("- Tolerances: `torch.testing.assert_close` defaults for the dtype (float32: rtol 1.3e-6, atol 1e-5), "
      "`equal_nan=True`; dtype and shape must match. Random ops and ops returning uninitialised memory "
      "(and any op whose native result is not reproducible) are compared on dtype and shape only.\n")
    w("## Summary\n")
    w("| class | entries | share |")
    w("|---|---:|---:|")
    n = max(summ["entries"], 1)
    meaning = {
        "compiled": "every call compiled (or pure metadata), outputs match",
        "partial": "some calls fell back to native, outputs match",
        "fallback": "no call compiled, outputs match",
        "mismatch": "outputs differ from native",
        "error": "backend raised / crashed / timed out where native did not",
        "skipped": "no runnable sample (all raise natively, or no tensor input)",
    }
    for c in CLASSES:
        w(f"| **{c}** — {meaning[c]} | {summ['classes'][c]} | {100 * summ['classes'][c] / n:.1f}% |")
    w(f"| total (op, dtype, variant) entries | {summ['entries']} | |")
    w(f"\nOps not run because OpInfo says they do not support the dtype on CPU: {summ['not_supported_dtype']}.\n")
    calls = summ["calls"]
    w("| intercepted aten calls | count | share |")
    w("|---|---:|---:|")
    tc = max(summ["total_calls"], 1)
    for k in ("compiled", "metadata", "fallback"):
        w(f"| {k} | {calls.get(k, 0)} | {100 * calls.get(k, 0) / tc:.1f}% |")
    w(f"| total | {summ['total_calls']} | |")
    w(f"\n**Share of calls compiled: {100 * summ['share_compiled']:.1f}%** "
      f"(compiled or metadata: {100 * summ['share_compiled_or_metadata']:.1f}%). "
      f"Samples run: {summ['samples']}; kernels compiled: {summ['kernels_compiled']} "
      f"in {summ['compile_seconds']:.0f} s of compile time.\n")

    w("## Fallbacks by step\n")
    w("Kind: **project** = something this project can fix: decomposition, tracing, functionalization, "
      "import or argument handling (steps decompose/trace/functionalize/import/run); **upstream** = "
      "torch-mlir has no lowering (step lower) or IREE fails to compile (step compile), although a "
      "decomposition in this project can often route around it; *by design* = no compiled form "
      "intended (random ops, data-dependent output shapes, values read back to Python, host copies); "
      "*numerics* = compiled kernel rejected by validation.\n")
    w("| step | kind | fallback calls | entries |")
    w("|---|---|---:|---:|")
    for s, v in summ["fallback_steps"].items():
        w(f"| {s} | {v['kind']} | {v['calls']} | {v['entries']} |")
    w("")
    w("## Most common fallback reasons\n")
    w("Grouped by step and message (op names, IR and numbers taken out of the message). `entries` counts "
      "(op, dtype, variant) entries with at least one call falling back for this reason; `calls` the "
      "fallen-back calls. The last column is one raw message of the group.\n")
    w("| # | step | kind | reason | entries | calls | aten ops | example (OpInfo: message) |")
    w("|---:|---|---|---|---:|---:|---|---|")
    for i, g in enumerate(summ["fallback_reasons"][:40], 1):
        atens = ", ".join(g["aten_ops"][:6]) + (f" (+{len(g['aten_ops']) - 6})" if len(g["aten_ops"]) > 6 else "")
        w(f"| {i} | {g['step']} | {g['kind']} | {_md(g['reason'], 120)} | {g['entries']} | {g['calls']} "
          f"| {_md(atens, 160)} | {_md(g['example_entry'])}: {_md(g['example_reason'], 110)} |")
    if len(summ["fallback_reasons"]) > 40:
        w(f"\n({len(summ['fallback_reasons']) - 40} more reasons in the JSON file.)")
    w("")
    if summ.get("missing_lowerings"):
        w("## Ops torch-mlir could not lower\n")
        w("The torch-dialect op left over when lowering failed (after this project's decompositions), "
          "and the dispatched aten ops that led to it. A decomposition into lowerable ops in this "
          "project, or a lowering upstream, would compile them.\n")
        w("| torch op left unlowered | entries | calls | dispatched aten ops | examples |")
        w("|---|---:|---:|---|---|")
        for e in summ["missing_lowerings"][:60]:
            w(f"| {e['op']} | {e['entries']} | {e['calls']} | {_md(', '.join(e['aten_ops'][:4]), 120)} "
              f"| {_md(', '.join(e['example_entries'][:3]), 90)} |")
        if len(summ["missing_lowerings"]) > 60:
            w(f"\n({len(summ['missing_lowerings']) - 60} more in the JSON file.)")
        w("")
    w("## Fallbacks by aten op\n")
    w("| aten op | step | kind | entries | calls | reason | examples |")
    w("|---|---|---|---:|---:|---|---|")
    for a in summ["fallback_by_aten"][:60]:
        w(f"| {a['aten_op']} | {a['step']} | {a['kind']} | {a['entries']} | {a['calls']} | {_md(a['reason'], 140)} "
          f"| {_md(', '.join(a['example_entries'][:3]), 80)} |")
    if len(summ["fallback_by_aten"]) > 60:
        w(f"\n({len(summ['fallback_by_aten']) - 60} more in the JSON file.)")
    w("")
    errs = [r for r in results if r["class"] == "error"]
    if errs:
        w("## Errors\n")
        w("| op | dtype | error | where |")
        w("|---|---|---|---|")
        for r in errs:
            e = r.get("error") or {}
            w(f"| {_md(r['id'])} | {r['dtype']} | {_md(e.get('type', '') + ': ' + e.get('message', ''), 200)} "
              f"| {_md(e.get('where', ''), 80)} |")
        w("")
    mism = [r for r in results if r["class"] == "mismatch"]
    if mism:
        w("## Mismatches\n")
        w("| op | dtype | max abs err | detail |")
        w("|---|---|---:|---|")
        for r in mism:
            w(f"| {_md(r['id'])} | {r['dtype']} | {_fmt_err(r.get('max_abs_err'))} | {_md(r['detail'], 200)} |")
        w("")
    w("## Per-op results\n")
    w("samples: samples run (+ skipped because native raised; `+more` when OpInfo has more samples than "
      "were run). calls: compiled / metadata / fallback.\n")
    w("| op | variant | dtype | class | samples | calls c/m/f | detail |")
    w("|---|---|---|---|---|---|---|")
    for r in results:
        name = r["name"] + ("_" if r.get("inplace") else "")
        smp = str(r.get("samples", 0))
        if r.get("samples_native_error"):
            smp += f" (+{r['samples_native_error']} native err)"
        if r.get("more_samples"):
            smp += " +more"
        c = r["calls"]
        detail = r.get("detail", "")
        if r["class"] == "compiled" and not detail:
            detail = ""
        w(f"| {_md(name)} | {_md(r.get('variant', ''))} | {r['dtype']} | {r['class']} | {smp} | "
          f"{c['compiled']}/{c['metadata']}/{c['fallback']} | {_md(detail, 220)} |")
    w("")
    return "\n".join(out)


def _fmt_err(e):
    if e is None:
        return ""
    if isinstance(e, str):
        return e
    return f"{e:.3g}"


def _version(dist):
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def run_metadata():
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "versions": {
            "torch": torch.__version__,
            "torch-mlir": _version("torch-mlir"),
            "iree-base-compiler": _version("iree-base-compiler"),
            "iree-base-runtime": _version("iree-base-runtime"),
            "torch_mlir_eager": _version("torch_mlir_eager"),
            "python": platform.python_version(),
        },
        "machine": {"cpu": cpu, "cpus": os.cpu_count(), "platform": platform.platform(), "arch": platform.machine()},
    }


# ---------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------


def write_baseline(path, results, meta):
    ops = {}
    for r in results:
        key = r["id"] if r["dtype"] == "float32" else f"{r['id']}@{r['dtype']}"
        ops[key] = r["class"]
    data = {
        "_comment": "Class of each op in the coverage baseline subset. Regenerate with: "
                    "python -m torch_mlir_eager.coverage --baseline-set --max-samples "
                    f"{meta['max_samples']} --write-baseline {path}",
        "max_samples": meta["max_samples"],
        "versions": meta.get("versions", {}),
        "date": meta.get("date"),
        "ops": dict(sorted(ops.items())),
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")


def compare_to_baseline(baseline_ops, results):
    """(regressions, improvements, missing): lists of (key, baseline class, new class)."""
    got = {}
    for r in results:
        key = r["id"] if r["dtype"] == "float32" else f"{r['id']}@{r['dtype']}"
        got[key] = r["class"]
    regress, improve, missing = [], [], []
    for key, old in baseline_ops.items():
        new = got.get(key)
        if new is None:
            missing.append((key, old, None))
            continue
        ro, rn = CLASS_RANK.get(old), CLASS_RANK.get(new)
        if ro is None or rn is None:
            if old != new:
                (regress if rn is None or (ro is not None) else improve).append((key, old, new))
            continue
        if rn < ro:
            regress.append((key, old, new))
        elif rn > ro:
            improve.append((key, old, new))
    return regress, improve, missing


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--worker":
        return worker_main()
    p = argparse.ArgumentParser(prog="python -m torch_mlir_eager.coverage", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", help="regex searched in the OpInfo name, name.variant and entry id (e.g. add_)")
    p.add_argument("--baseline-set", action="store_true", help="run the fixed subset of tests/coverage_baseline.json")
    p.add_argument("--dtypes", default="float32", help="comma-separated, e.g. float32,float64 (default float32)")
    p.add_argument("--inplace", choices=("none", "elementwise", "all"), default="elementwise",
                   help="also run in-place variants (add_, ...): for elementwise ops (default), all, or none")
    p.add_argument("--max-samples", type=int, default=DEFAULT_MAX_SAMPLES,
                   help=f"sample inputs per op (default {DEFAULT_MAX_SAMPLES})")
    p.add_argument("--op-budget", type=float, default=DEFAULT_OP_BUDGET,
                   help=f"soft per-op time: no new sample starts after it (default {DEFAULT_OP_BUDGET:g} s)")
    p.add_argument("--op-timeout", type=float, default=DEFAULT_OP_TIMEOUT,
                   help=f"hard per-op timeout, then error (default {DEFAULT_OP_TIMEOUT:g} s)")
    p.add_argument("--jobs", type=int, default=2, help="parallel worker processes (default 2)")
    p.add_argument("--in-process", action="store_true", help="no worker processes (no crash isolation)")
    p.add_argument("--ops-per-worker", type=int, default=0, help="restart a worker after this many ops (0: never)")
    p.add_argument("--out-dir", default=DEFAULT_OUT_DIR, help="logs and kernel cache (default coverage_out)")
    p.add_argument("--out-md", default=None, help="Markdown report (default OUT_DIR/op_coverage.md)")
    p.add_argument("--out-json", default=None, help="JSON results (default OUT_DIR/op_coverage.json)")
    p.add_argument("--write-baseline", metavar="PATH", help="write the classes of the entries run to PATH")
    p.add_argument("--check-baseline", metavar="PATH", help="compare with a baseline; exit 1 on regressions")
    p.add_argument("--render", metavar="JSON",
                   help="only re-render the Markdown report (and --write-baseline) from a JSON file of a run")
    p.add_argument("--list", action="store_true", help="list the selected entries and exit")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    out_md = args.out_md or os.path.join(args.out_dir, "op_coverage.md")
    out_json = args.out_json or os.path.join(args.out_dir, "op_coverage.json")
    if args.render:
        with open(args.render) as f:
            data = json.load(f)
        data["summary"] = summarize(data["results"], data.get("summary", {}).get("not_supported_dtype", 0))
        _write(out_md, render_markdown(data))
        print(f"wrote {out_md}", file=sys.stderr)
        if args.write_baseline:
            write_baseline(args.write_baseline, data["results"], data["meta"])
            print(f"wrote baseline {args.write_baseline}", file=sys.stderr)
        return 0

    os.makedirs(args.out_dir, exist_ok=True)
    os.environ.setdefault("TORCH_MLIR_EAGER_CACHE_DIR", os.path.abspath(os.path.join(args.out_dir, "kernel_cache")))
    os.environ["TORCH_MLIR_EAGER_ASYNC_COMPILE"] = "0"
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    _parse_dtypes(",".join(dtypes))
    names = None
    if args.baseline_set:
        names = baseline_names()
    elif args.check_baseline and not args.ops:
        with open(args.check_baseline) as f:
            names = [k.split("@")[0] for k in json.load(f)["ops"]]
    entries, not_supported = select_entries(args.ops, dtypes, args.inplace, names)
    if args.list:
        for e in entries:
            print(f"{e['id']}\t{e['dtype']}")
        print(f"{len(entries)} entries ({not_supported} op/dtype pairs not supported)", file=sys.stderr)
        return 0
    if not entries:
        print("coverage: no entries selected", file=sys.stderr)
        return 2
    opts = {"max_samples": args.max_samples, "op_budget": args.op_budget}
    progress = Progress(len(entries), enabled=not args.no_progress)
    t0 = time.time()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    # Results also stream to OUT_DIR/results.jsonl, so an interrupted run keeps what it finished.
    stream = open(os.path.join(args.out_dir, "results.jsonl"), "w")

    def on_result(res):
        stream.write(json.dumps(_json_safe(res)) + "\n")
        stream.flush()

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    try:
        if args.in_process:
            results = run_inprocess(entries, opts, progress, on_result=on_result)
        else:
            results = run_isolated(entries, opts, jobs=args.jobs, op_timeout=args.op_timeout, log_dir=args.out_dir,
                                   progress=progress, ops_per_worker=args.ops_per_worker, on_result=on_result)
    finally:
        stream.close()
    progress.close()
    duration = time.time() - t0
    meta = run_metadata()
    meta.update({
        "date": date, "duration_s": round(duration, 1), "argv": " ".join(argv), "dtypes": dtypes,
        "inplace": "baseline subset" if args.baseline_set else args.inplace, "ops": args.ops,
        "max_samples": args.max_samples, "op_budget": args.op_budget, "op_timeout": args.op_timeout,
        "jobs": 1 if args.in_process else args.jobs, "isolated": not args.in_process,
        "kernel_cache_dir": os.environ.get("TORCH_MLIR_EAGER_CACHE_DIR"),
    })
    data = {"meta": meta, "summary": summarize(results, not_supported), "results": results}
    _write(out_json, json.dumps(_json_safe(data), indent=1))
    _write(out_md, render_markdown(data))
    s = data["summary"]
    print(f"coverage: {s['entries']} entries in {duration / 60:.1f} min: "
          + ", ".join(f"{c} {s['classes'][c]}" for c in CLASSES)
          + f"; calls compiled {100 * s['share_compiled']:.1f}%", file=sys.stderr)
    print(f"wrote {out_md} and {out_json}", file=sys.stderr)
    rc = 0
    if args.write_baseline:
        write_baseline(args.write_baseline, results, meta)
        print(f"wrote baseline {args.write_baseline}", file=sys.stderr)
    if args.check_baseline:
        with open(args.check_baseline) as f:
            base = json.load(f)["ops"]
        regress, improve, missing = compare_to_baseline(base, results)
        for k, o, n in regress:
            print(f"REGRESSION {k}: {o} -> {n}", file=sys.stderr)
        for k, o, n in improve:
            print(f"improved {k}: {o} -> {n} (update the baseline)", file=sys.stderr)
        for k, o, _ in missing:
            print(f"missing {k} (baseline {o})", file=sys.stderr)
        rc = 1 if regress else 0
    return rc


def _write(path, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
        if not text.endswith("\n"):
            f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
