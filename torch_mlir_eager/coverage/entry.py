"""Running one (op, dtype, variant) entry: its OpInfo samples through every check, each check a
column of the report.

    values          the first --max-samples samples (the class of the entry, as before)
    extremal        nan/inf/+-0/huge/tiny inputs (samples.extremal_variants)
    layout          non-contiguous, transposed and channels_last inputs
    negative_dims   dim arguments made negative
    gradient        autograd gradients w.r.t. the floating inputs
    error_inputs    OpInfo's error inputs: the backend must raise as PyTorch does
    random          seed-dependent samples: native's values under the same seed, or its distribution

A mismatch in any column is attributed (attribution.attribute) to the kernels validation disables.
Entries whose samples are random get the values (dtype and shape), error_inputs and random
columns only.
"""

from __future__ import annotations

import itertools
import re
import time
import warnings
from typing import NamedTuple

from . import samples as sample_variants
from .attribution import attribute
from .backend import supports_validation
from .cases import error_info, native_behaviour, run_native
from .differential import run_forward
from .error_inputs import error_variants, run_error_input
from .gradients import run_gradient
from .random_ops import run_random
from .selection import find_op
from .tally import ColumnTally

COLUMNS = ("values", "extremal", "layout", "negative_dims", "gradient", "error_inputs", "random")
EXTRA_CHECKS = COLUMNS[1:]
DEFAULT_MAX_SAMPLES = 3
DEFAULT_OP_BUDGET = 30.0
ERROR_INPUTS_PER_OP = 6
LAYOUT_SAMPLES = 1  # the largest sample among the first --max-samples gets the layout variants
# Ops whose result depends on the storage beneath a view, not only on its values: on a non-dense
# input they differ between the CPU and any device by design (`.to(device)` makes a new storage).
STORAGE_READERS = {"as_strided", "as_strided_copy", "as_strided_scatter"}
GRADIENT_SAMPLES = 2  # each needs backward kernels compiled: the first two samples
# Ops named like random ops get this many samples looked at for seed-dependent ones (dropout's
# first samples have p=0); whether a sample is random is decided by running it natively.
RANDOM_SCAN = 10
# Ops returning uninitialised memory: compared on dtype and shape only (native may repeat its garbage).
UNINITIALISED_RE = re.compile(r"^(new_)?empty(_like|_strided|_permuted)?$")
RANDOM_NAME_RE = re.compile(
    r"(^|\.|_)(rand|randn|randint|normal|uniform|bernoulli|multinomial|dropout|exponential|geometric|cauchy"
    r"|log_normal|rrelu|alpha_dropout|feature_alpha_dropout)(_like)?(_|\.|$)")


class _Budget:
    """A soft time budget for the entry: once spent, a column runs only its first case."""

    def __init__(self, seconds):
        self.seconds, self.t0, self.cut = seconds, time.perf_counter(), []

    def allows(self, column, i, n):
        if i == 0 or time.perf_counter() - self.t0 <= self.seconds:
            return True
        self.cut.append(f"op budget {self.seconds:g}s reached: {column} ran {i} of {n} cases")
        return False


def _run_cases(tally, budget, cases):
    """cases: [(label, thunk)]; each thunk returns a case result. Returns the results run."""
    results = []
    for i, (label, thunk) in enumerate(cases):
        if not budget.allows(tally.column, i, len(cases)):
            break
        try:
            r = thunk()
        except Exception as e:  # a bug in this tool, not the backend; report it as such
            r = {"outcome": "error", "error": error_info(e, "coverage tool: ")}
        tally.add(label, r)
        results.append(r)
    return results


def _largest(variants, n):
    import torch

    def size(v):
        return sum(t.numel() for t in sample_variants.tensor_leaves(v.tree()) if isinstance(t, torch.Tensor))

    return sorted(variants, key=size, reverse=True)[:n]


def _same_native_result(fn):
    from .compare import compare

    def same(a, b):
        try:
            ra, rb = run_native(fn, a)[0], run_native(fn, b)[0]
        except Exception:
            return False
        return compare(rb, ra, scale=0.0) is None

    return same


def _load_samples(op, dtype, n):
    """(the first n samples, whether OpInfo has more)."""
    import torch

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gen = iter(op.sample_inputs("cpu", dtype, requires_grad=False))
        first = list(itertools.islice(gen, n))
        try:
            more = next(gen, None) is not None
        except Exception:
            more = True
    return first, more


class _Subject(NamedTuple):
    """What every column of one entry runs on."""
    op: object  # the OpInfo
    fn: object  # its function, or its in-place variant
    inplace: bool
    dtype: object
    variants: list  # the values column's samples
    random_variants: list  # samples whose native result depends on the seed
    max_samples: int
    pointwise: bool
    uninitialised: bool  # the op returns uninitialised memory


def _column_cases(column, x: _Subject):
    """[(label, thunk)] for one extra column, or a reason it does not apply."""
    if column == "random":
        if x.uninitialised:
            return "uninitialised memory: dtype and shape only"
        if not x.random_variants:
            return "no sample depends on the seed"
        return [(v.label, lambda v=v: run_random(x.fn, v)) for v in x.random_variants[:x.max_samples]]
    if column == "error_inputs":
        if x.inplace:
            return "checked on the functional variant"
        if x.op.error_inputs_func is None:
            return "OpInfo has no error inputs for it"
        return [(v.label, lambda v=v, rx=rx: run_error_input(x.fn, v, rx))
                for v, rx in error_variants(x.op, ERROR_INPUTS_PER_OP)]
    if x.random_variants:
        return "random op: see the random column"
    if column == "gradient":
        if not x.op.supports_autograd or not x.dtype.is_floating_point:
            return "no autograd support for this dtype"
        return [(v.label, lambda v=v: run_gradient(x.fn, v, x.inplace)) for v in x.variants[:GRADIENT_SAMPLES]]
    if column == "extremal":
        made = sample_variants.extremal_variants(x.op, x.variants, x.dtype, x.inplace)
    elif column == "layout":
        if x.op.name.split(".")[0] in STORAGE_READERS:
            return "reads the storage itself: a non-dense tensor moved to any device gets another storage"
        made = sample_variants.layout_variants(_largest(x.variants, LAYOUT_SAMPLES))
    else:
        made = sample_variants.negative_dim_variants(x.op, x.variants, _same_native_result(x.fn))
    return [(v.label, lambda v=v: run_forward(x.fn, v, x.inplace, x.pointwise, x.uninitialised)) for v in made]


def _random_variants(fn, values_variants, values_results, more_variants, n):
    """Up to n samples whose native result depends on the seed: among those the values column ran,
    then among the further ones (looked at natively only)."""
    found = [v for v, r in zip(values_variants, values_results) if r.get("native") == "random"]
    for v in more_variants:
        if len(found) >= n:
            break
        try:
            if native_behaviour(fn, v).behaviour == "random":
                found.append(v)
        except Exception:
            continue
    return found


def run_entry(entry, max_samples=DEFAULT_MAX_SAMPLES, op_budget=DEFAULT_OP_BUDGET, checks=()):
    """Run one entry through the values column and the `checks` (extra columns). Returns the
    entry result dict (JSON-serialisable)."""
    import torch

    budget = _Budget(op_budget)
    result = dict(entry, more_samples=False)
    try:
        op = find_op(entry["name"], entry["variant"])
        dtype = getattr(torch, entry["dtype"])
        fn = op.inplace_variant if entry["inplace"] else op.op
        scan = RANDOM_SCAN if "random" in checks and RANDOM_NAME_RE.search(op.name) else 0
        loaded, result["more_samples"] = _load_samples(op, dtype, max(max_samples, scan))
    except Exception as e:
        values = ColumnTally("values")
        values.not_applicable = f"sample generation failed: {type(e).__name__}: {error_info(e)['message']}"
        result.update(values.legacy_fields(), seconds=round(time.perf_counter() - budget.t0, 3))
        result["columns"] = {"values": values.summary()}
        return result
    variants = sample_variants.from_samples(loaded)
    result["more_samples"] = result["more_samples"] or len(variants) > max_samples
    pointwise = sample_variants.is_pointwise(op)
    uninitialised = bool(UNINITIALISED_RE.search(op.name))
    values = ColumnTally("values")
    ran = _run_cases(values, budget, [(v.label, lambda v=v: run_forward(fn, v, entry["inplace"], pointwise, uninitialised))
                                      for v in variants[:max_samples]])
    subject = _Subject(op, fn, entry["inplace"], dtype, variants[:max_samples],
                       _random_variants(fn, variants[:max_samples], ran, variants[max_samples:], max_samples),
                       max_samples, pointwise, uninitialised)
    tallies = {"values": values}
    for column in (c for c in EXTRA_CHECKS if c in checks):
        tally = tallies[column] = ColumnTally(column)
        try:
            cases = _column_cases(column, subject)
        except Exception as e:
            cases = [("making the cases", lambda e=e: {"outcome": "error", "error": error_info(e, "coverage tool: ")})]
        if isinstance(cases, str):
            tally.not_applicable = cases
        elif not cases:
            tally.not_applicable = "no applicable input"
        else:
            _run_cases(tally, budget, cases)
    result.update(values.legacy_fields())
    result["columns"] = {}
    for column, tally in tallies.items():
        recheck = tally.worst.get("recheck") if tally.worst else None
        attribution = attribute(recheck) if recheck is not None and supports_validation() else None
        result["columns"][column] = tally.summary(attribution)
    result["notes"] = (result["notes"] + budget.cut)[:8]
    if budget.cut:
        result["more_samples"] = True
    result["seconds"] = round(time.perf_counter() - budget.t0, 3)
    return result


def with_checks_crashed(result, checks, why):
    """An entry's result from a run of the values column alone, after the run with `checks` crashed
    or hung its worker (`why`): each check is an `error` with that reason."""
    result["columns"] = dict(result.get("columns") or {})
    for column in checks:
        tally = ColumnTally(column)
        tally.crash = f"{why} (with the checks {', '.join(checks)}; the values column was run again alone)"
        result["columns"][column] = tally.summary()
    result["notes"] = result.get("notes", []) + [f"the checks {why}"]
    return result


def error_result(entry, message, etype="Crash"):
    """The result of an entry whose worker crashed or timed out."""
    r = dict(entry)
    r.update({"class": "error", "samples": 0, "samples_native_error": 0, "samples_no_tensor": 0,
              "sample_classes": {}, "calls": {"compiled": 0, "metadata": 0, "fallback": 0},
              "kernels_compiled": 0, "compile_seconds": 0.0, "cache_hits": 0, "fallbacks": {},
              "error": {"type": etype, "message": message, "where": ""},
              "detail": f"{etype}: {message}", "notes": [], "more_samples": False, "columns": {}})
    return r
