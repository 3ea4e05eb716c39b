"""Which (op, dtype, variant) entries a run covers: PyTorch's OpInfo database, entry ids, the
baseline subset of tests/coverage_baseline.json and the bounded default sweep."""

from __future__ import annotations

import re
import sys
import types
import unittest
import warnings

# The fixed subset that tests/test_coverage_baseline.py tracks (OpInfo names, name.variant).
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

# The bounded default sweep (`--sweep-default`): common ops that exercise every check. Once the
# backend's known bugs are fixed or guarded it must report no mismatch in any column.
SWEEP_DEFAULT_OPS = [
    # elementwise: extremal values, layouts, gradients, error inputs
    "add", "sub", "mul", "div.no_rounding_mode", "atan2", "maximum", "minimum", "clamp", "where",
    "pow", "floor_divide", "remainder", "isfinite", "isnan", "exp", "log", "sqrt", "rsqrt",
    "sigmoid", "tanh", "abs", "neg", "nn.functional.relu", "nn.functional.gelu", "eq", "lt",
    # reductions and normalisations: NaN/inf injection, negative dims
    "sum", "mean", "amax", "argmax", "max.reduction_with_dim", "softmax", "log_softmax", "cumsum",
    "sort", "var", "nn.functional.layer_norm",
    # indexing and shapes: negative dims, layouts, error inputs
    "index_select", "gather", "scatter", "cat", "stack", "select", "unsqueeze", "transpose",
    "flatten", "narrow", "masked_fill",
    # linear algebra and nn: channels_last, gradients
    "matmul", "addmm", "nn.functional.linear", "nn.functional.conv2d", "nn.functional.max_pool2d",
    "nn.functional.avg_pool2d",
    # random ops
    "randn", "rand_like", "randn_like", "uniform", "normal", "normal.in_place", "bernoulli",
    "nn.functional.dropout", "exponential", "multinomial",
]
SWEEP_DEFAULT_INPLACE = ["add", "mul", "clamp", "sigmoid", "div.no_rounding_mode"]
SWEEP_DEFAULT_MAX_SAMPLES = 2

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


def full_name(op) -> str:
    """`add`, `div.floor_rounding`: the OpInfo name with its variant."""
    return f"{op.name}.{op.variant_test_name}" if op.variant_test_name else op.name


def is_ufunc(op) -> bool:
    from torch.testing._internal.opinfo.core import BinaryUfuncInfo, UnaryUfuncInfo

    return isinstance(op, (UnaryUfuncInfo, BinaryUfuncInfo))


def entry_id(name: str, variant: str, inplace: bool) -> str:
    """`add`, `add_`, `div.floor_rounding`, `div_.floor_rounding`."""
    base = name + ("_" if inplace else "")
    return f"{base}.{variant}" if variant else base


def parse_dtypes(spec: str):
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


def dtype_name(dt) -> str:
    return str(dt).replace("torch.", "")


def select_entries(ops_regex=None, dtypes=("float32",), inplace="elementwise", names=None):
    """The (op, dtype, mode) entries to run, in op_db order.

    `ops_regex` is searched in both `name` and `name.variant`; `names` (exact entry ids such as
    "add_" or "div.floor_rounding") selects entries directly and overrides `inplace`.
    Returns (entries, not_supported) where entries are dicts and not_supported counts ops
    skipped because they do not support a dtype on CPU.
    """
    import torch

    rx = re.compile(ops_regex) if ops_regex else None
    wanted = set(names) if names is not None else None
    dts = [getattr(torch, d) if isinstance(d, str) else d for d in dtypes]
    entries, not_supported = [], 0
    for op in load_op_db():
        full = full_name(op)
        modes = [False]
        if op.inplace_variant is not None and (
            inplace == "all" or (inplace == "elementwise" and is_ufunc(op)) or wanted is not None
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
                entries.append({"id": eid, "name": op.name, "variant": op.variant_test_name, "inplace": ip,
                                "dtype": dtype_name(dt)})
    return entries, not_supported


def find_op(name, variant):
    for op in load_op_db():
        if op.name == name and op.variant_test_name == variant:
            return op
    raise KeyError(f"no OpInfo {name!r} variant {variant!r}")


def _entry_ids(functional, inplace):
    by_full = {}
    for op in load_op_db():
        by_full.setdefault(full_name(op), op)
    names = []
    for n in functional:
        op = by_full.get(n)
        if op is not None:
            names.append(entry_id(op.name, op.variant_test_name, False))
    for n in inplace:
        op = by_full.get(n)
        if op is not None and op.inplace_variant is not None:
            names.append(entry_id(op.name, op.variant_test_name, True))
    return names


def baseline_names():
    """Entry ids of the fixed baseline subset (those that exist in this torch's op_db)."""
    return _entry_ids(BASELINE_OPS, BASELINE_INPLACE)


def sweep_default_names():
    """Entry ids of the bounded default sweep (those that exist in this torch's op_db)."""
    return _entry_ids(SWEEP_DEFAULT_OPS, SWEEP_DEFAULT_INPLACE)
