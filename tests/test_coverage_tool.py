"""Tests of the op-coverage tool itself (torch_mlir_eager.coverage), on a fake backend.

The fake backend (tests/coverage_fake_backend.py) runs every op natively. By default it pretends
that `sub` falls back, `neg` computes a wrong value and `exp` raises; its other bugs (wrong NaN
handling, negative dims, gradients, strided inputs, missing errors, random ops returning zeros)
must each show up as a mismatch in the column meant to find it, attributed to the right kernel
where validation can see it, while a correct fake shows none. No compiler is involved.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from torch_mlir_eager import coverage
from torch_mlir_eager.coverage import samples
from torch_mlir_eager.coverage.compare import compare, exception_difference

HERE = os.path.dirname(os.path.abspath(__file__))
FAKE = "coverage_fake_backend"
# Entries that give every column something to check.
SWEEP = ["add", "mul_", "atan2", "clamp", "maximum", "isfinite", "floor_divide", "index_select", "gather", "sum",
         "softmax", "nn.functional.conv2d", "select", "unsqueeze", "randn_like", "uniform"]


@pytest.fixture
def fake_backend(monkeypatch):
    monkeypatch.syspath_prepend(HERE)
    monkeypatch.setenv(coverage.ENV_BACKEND, FAKE)
    monkeypatch.setenv("PYTHONPATH", HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.delenv("COVERAGE_FAKE_BUGS", raising=False)
    coverage.forget_backend()
    fake = coverage.load_backend()
    monkeypatch.setattr(fake, "BUGS", {"sub_fallback", "neg_wrong", "exp_raises"})
    fake.clear_kernel_cache()
    yield fake
    coverage.forget_backend()


def _entries(*ids):
    entries, _ = coverage.select_entries(names=list(ids))
    assert sorted(e["id"] for e in entries) == sorted(ids)
    return entries


def _run(ids, checks, max_samples=2):
    opts = {"max_samples": max_samples, "op_budget": 30, "checks": list(checks)}
    return {r["id"]: r for r in coverage.run_inprocess(_entries(*ids), opts)}


def test_classes_in_process(fake_backend):
    entries = _entries("add", "sub", "neg", "exp", "transpose", "mul_", "sub_")
    res = {r["id"]: r for r in coverage.run_inprocess(entries, {"max_samples": 2, "op_budget": 30})}
    assert res["add"]["class"] == "compiled"
    assert res["transpose"]["class"] == "compiled"
    assert res["transpose"]["calls"]["metadata"] > 0
    assert res["mul_"]["class"] == "compiled"
    assert res["sub"]["class"] == "fallback"
    assert res["sub_"]["class"] == "fallback"
    assert res["sub"]["fallbacks"]["aten.sub.Tensor"]["step"] == "lower"
    assert res["neg"]["class"] == "mismatch"
    assert res["neg"]["max_abs_err"] == pytest.approx(1.0)
    assert res["exp"]["class"] == "error"
    assert res["exp"]["error"]["type"] == "RuntimeError"
    assert res["exp"]["error"]["message"] == "fake backend: exp is broken"
    summ = coverage.summarize(list(res.values()))
    assert summ["classes"]["fallback"] == 2
    assert summ["fallback_reasons"][0]["step"] == "lower"
    assert summ["fallback_reasons"][0]["kind"] == "upstream"
    md = coverage.render_markdown({"meta": {"max_samples": 2, "op_budget": 30, "op_timeout": 120},
                                   "summary": summ, "results": list(res.values())})
    assert "| sub |" in md and "mismatch" in md


def test_correct_backend_agrees_in_every_column(fake_backend, monkeypatch):
    monkeypatch.setattr(fake_backend, "BUGS", set())
    res = _run(SWEEP, coverage.EXTRA_CHECKS)
    states = {(i, c): col["state"] for i, r in res.items() for c, col in r["columns"].items()}
    assert [k for k, s in states.items() if s in ("mismatch", "error")] == []
    # Every check ran somewhere (a check that never runs cannot fail).
    for column in coverage.COLUMNS:
        assert any(s in ("ok", "partial", "fallback") for (i, c), s in states.items() if c == column), column
    assert states[("atan2", "extremal")] == "ok" and res["atan2"]["columns"]["extremal"]["cases"] >= 3
    assert states[("uniform", "random")] == "fallback" and states[("randn_like", "random")] == "fallback"
    assert states[("index_select", "negative_dims")] == "ok"
    assert states[("nn.functional.conv2d", "gradient")] == "ok"
    assert states[("randn_like", "extremal")] == "n/a"
    summ = coverage.summarize(list(res.values()))
    assert summ["mismatches"] == [] and coverage.build_guards(list(res.values())) == []


# (bug, entry, column that must find it, culprit kernel validation must name or None, evidence)
BUGS = [
    ("nan_to_zero", "atan2", "extremal", "aten.atan2.default", "NaN positions differ"),
    ("nan_to_zero", "sum", "extremal", "aten.sum.default", "NaN put in"),
    ("negative_dims", "index_select", "negative_dims", "aten.index_select.default", "negative dims"),
    ("wrong_gradients", "nn.functional.conv2d", "gradient", "aten.convolution_backward.default", "gradient of input"),
    ("strided_inputs", "add", "layout", "aten.add.Tensor", "noncontiguous"),
    ("no_errors", "nn.functional.conv2d", "error_inputs", None, "returned a value where native raised RuntimeError"),
    ("random_zeros", "randn_like", "random", None, "all zeros"),
    ("random_zeros", "uniform", "random", None, "the input, unchanged"),
]


@pytest.mark.parametrize("bug,entry,column,culprit,evidence", BUGS, ids=[f"{b[0]}-{b[1]}" for b in BUGS])
def test_bug_is_found_in_its_column(fake_backend, monkeypatch, bug, entry, column, culprit, evidence):
    monkeypatch.setattr(fake_backend, "BUGS", {bug})
    r = _run([entry], [column])[entry]
    col = r["columns"][column]
    assert col["state"] == "mismatch", col
    assert r["columns"]["values"]["state"] not in ("mismatch", "error"), "the bug must hide from the values column"
    mismatch = col["mismatch"]
    assert evidence in mismatch["case"] + ": " + mismatch["evidence"]
    att = mismatch["attribution"]
    summ = coverage.summarize([r])
    if culprit:
        assert culprit in [c["op"] for c in att["culprits"]] and att["resolved"] is True
        guard = next(g for g in coverage.build_guards([r]) if g["op"] == culprit)
        assert guard == {"op": culprit, "dtypes": guard["dtypes"], "reason": guard["reason"], "found_by": column,
                         "opinfo": entry}
        assert "float32" in guard["dtypes"] and guard["reason"].startswith(f"{column}: {entry} ")
        assert summ["unattributed"] == []
    else:
        assert att["culprits"] == [] and coverage.build_guards([r]) == []
        assert [(m["id"], m["column"]) for m in summ["unattributed"]] == [(entry, column)]
        assert summ["unattributed"][0]["dispatched"]


@pytest.mark.parametrize("bug,entry,column,kind,case", [
    ("contiguous_outputs", "nn.functional.conv2d", "layout", "strides", "sample 0, channels_last"),
    ("flush_subnormals", "mul", "extremal", "subnormals", "sample 0, grid of subnormal values 8x8"),
])
def test_minor_differences_are_reported_apart(fake_backend, monkeypatch, bug, entry, column, kind, case):
    monkeypatch.setattr(fake_backend, "BUGS", {bug})
    r = _run([entry], [column])[entry]
    assert r["columns"][column]["state"] == "ok"
    minor = coverage.summarize([r])["minor_differences"]
    assert [(m["kind"], m["case"]) for m in minor] == [(kind, case)]
    assert coverage.build_guards([r]) == []


def test_negative_dim_rewrites_mean_the_same_natively():
    x = torch.randn(2, 3)
    base = [samples.Variant("s", x, (1,), {})]
    for name, rank_used in (("unsqueeze", 3), ("sum", 2), ("softmax", 2)):
        op = coverage.find_op(name, "")
        made = samples.negative_dim_variants(op, base, _same_result(op.op))
        assert [v.args for v in made] == [(1 - rank_used,)], name


def _same_result(fn):
    def same(a, b):
        return compare(fn(b.input, *b.args, **b.kwargs), fn(a.input, *a.args, **a.kwargs), scale=0.0) is None

    return same


def test_extremal_grid_and_exception_types():
    op = coverage.find_op("atan2", "")
    x = torch.randn(3)
    made = samples.extremal_variants(op, [samples.Variant("s", x, (x.clone(),), {})], torch.float32, False)
    grid = next(v for v in made if "grid" in v.label)
    ext = samples.extremal_values(torch.float32)
    assert torch.broadcast_shapes(grid.input.shape, grid.args[0].shape) == (len(ext), len(ext))
    assert bool(grid.input.isnan().any()) and bool((grid.args[0] == float("-inf")).any())
    d = compare(torch.tensor([0.0, 1.0]), torch.tensor([float("nan"), 1.0]))
    assert "NaN positions differ at 1" in d.message and d.index == (0,)
    assert exception_difference(IndexError("x"), IndexError("y"), "x")[0] is None
    assert "raised RuntimeError" in exception_difference(IndexError("x"), RuntimeError("y"))[0]
    assert "returned a value" in exception_difference(IndexError("x"), None)[0]


def test_crash_and_timeout_are_isolated(fake_backend, tmp_path):
    entries = _entries("add", "mul", "neg", "abs", "sum")
    env = dict(os.environ)
    env[coverage.ENV_TEST_CRASH] = "mul"
    env[coverage.ENV_TEST_HANG] = "abs"
    res = coverage.run_isolated(entries, {"max_samples": 1, "op_budget": 30}, jobs=2, op_timeout=5,
                                log_dir=str(tmp_path), env=env)
    by = {r["id"]: r for r in res}
    assert by["mul"]["class"] == "error"
    assert by["mul"]["detail"].startswith("Crash: crashed: signal 6")
    assert by["abs"]["class"] == "error"
    assert "timeout" in by["abs"]["detail"]
    assert by["add"]["class"] == "compiled"
    assert by["sum"]["class"] == "compiled"
    assert by["neg"]["class"] == "mismatch"


def test_entry_whose_checks_crash_keeps_its_values_class(fake_backend, tmp_path):
    env = dict(os.environ, COVERAGE_FAKE_BUGS="abort_in_backward")
    res = coverage.run_isolated(_entries("mul"), {"max_samples": 1, "op_budget": 30, "checks": ["gradient"]}, jobs=1,
                                op_timeout=60, log_dir=str(tmp_path), env=env)
    assert res[0]["class"] == "compiled"
    gradient = res[0]["columns"]["gradient"]
    assert gradient["state"] == "error" and gradient["detail"].startswith("crashed: signal 6")


def test_baseline_comparison():
    base = {"a": "compiled", "b": "partial", "c": "fallback", "d": "error", "e": "compiled"}
    results = [{"id": k, "dtype": "float32", "class": c} for k, c in
               {"a": "partial", "b": "compiled", "c": "fallback", "d": "mismatch"}.items()]
    regress, improve, missing = coverage.compare_to_baseline(base, results)
    assert regress == [("a", "compiled", "partial")]
    assert improve == [("b", "partial", "compiled")]
    assert missing == [("e", "compiled", None)]


def test_default_sweep_names_every_op():
    names = coverage.sweep_default_names()
    assert len(names) == len(coverage.SWEEP_DEFAULT_OPS) + len(coverage.selection.SWEEP_DEFAULT_INPLACE)


def test_cli_writes_reports_and_guards(fake_backend, tmp_path):
    env = dict(os.environ, COVERAGE_FAKE_BUGS="sub_fallback,nan_to_zero")
    out = tmp_path / "out"
    guards = tmp_path / "guards.json"
    manual = {"op": "aten.add.Tensor", "dtypes": None, "reason": "hand-written", "found_by": "values",
              "opinfo": "add", "manual": True}
    stale = {"op": "aten.mul.Tensor", "dtypes": ["float32"], "reason": "old run", "found_by": "values", "opinfo": "mul"}
    guards.write_text(json.dumps({"comment": "x", "guards": [manual, stale]}))
    r = subprocess.run(
        [sys.executable, "-m", "torch_mlir_eager.coverage", "--ops", "^(add|sub|atan2)$", "--inplace", "none",
         "--max-samples", "1", "--jobs", "1", "--no-progress", "--out-dir", str(out),
         "--write-baseline", str(tmp_path / "base.json"), "--write-guards", str(guards),
         "--merge-guards", str(guards)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    data = json.loads((out / "op_coverage.json").read_text())
    assert {x["id"]: x["class"] for x in data["results"]} == {"add": "compiled", "sub": "fallback", "atan2": "compiled"}
    assert {x["id"]: x["columns"]["extremal"]["state"] for x in data["results"]} == {
        "add": "mismatch", "sub": "fallback", "atan2": "mismatch"}
    assert data["meta"]["versions"]["torch"]
    md = (out / "op_coverage.md").read_text()
    assert "Share of calls compiled" in md and "## Differential checks" in md and "## Guard list" in md
    written = json.loads(guards.read_text())
    assert written["comment"].startswith("generated by python -m torch_mlir_eager.coverage")
    assert written["guards"][0] == manual  # kept, and wins over the generated aten.add.Tensor guard
    assert [g["op"] for g in written["guards"]] == ["aten.add.Tensor", "aten.atan2.default"]
    assert written["guards"][1]["found_by"] == "extremal" and written["guards"][1]["dtypes"] == ["float32"]
    base = json.loads((tmp_path / "base.json").read_text())
    assert base["ops"] == {"add": "compiled", "sub": "fallback", "atan2": "compiled"}
