"""Tests of the op-coverage tool itself (torch_mlir_eager.coverage), on a fake backend.

The fake backend (tests/coverage_fake_backend.py) runs every op natively and pretends that `sub`
falls back, `neg` computes a wrong value and `exp` raises, so these tests need no compiler and
take seconds.
"""

import json
import os
import subprocess
import sys

import pytest

from torch_mlir_eager import coverage

HERE = os.path.dirname(os.path.abspath(__file__))
FAKE = "coverage_fake_backend"


@pytest.fixture
def fake_backend(monkeypatch):
    monkeypatch.syspath_prepend(HERE)
    monkeypatch.setenv(coverage.ENV_BACKEND, FAKE)
    monkeypatch.setenv("PYTHONPATH", HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setattr(coverage, "_BACKEND", None)
    yield
    coverage._BACKEND = None


def _entries(*ids):
    entries, _ = coverage.select_entries(names=list(ids))
    assert sorted(e["id"] for e in entries) == sorted(ids)
    return entries


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


def test_baseline_comparison():
    base = {"a": "compiled", "b": "partial", "c": "fallback", "d": "error", "e": "compiled"}
    results = [{"id": k, "dtype": "float32", "class": c} for k, c in
               {"a": "partial", "b": "compiled", "c": "fallback", "d": "mismatch"}.items()]
    regress, improve, missing = coverage.compare_to_baseline(base, results)
    assert regress == [("a", "compiled", "partial")]
    assert improve == [("b", "partial", "compiled")]
    assert missing == [("e", "compiled", None)]


def test_cli_writes_reports(fake_backend, tmp_path):
    env = dict(os.environ)
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "torch_mlir_eager.coverage", "--ops", "^(add|sub)$", "--inplace", "none",
         "--max-samples", "1", "--jobs", "1", "--no-progress", "--out-dir", str(out),
         "--write-baseline", str(tmp_path / "base.json")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    data = json.loads((out / "op_coverage.json").read_text())
    assert {x["id"]: x["class"] for x in data["results"]} == {"add": "compiled", "sub": "fallback"}
    assert data["meta"]["versions"]["torch"]
    assert "Share of calls compiled" in (out / "op_coverage.md").read_text()
    base = json.loads((tmp_path / "base.json").read_text())
    assert base["ops"] == {"add": "compiled", "sub": "fallback"}
