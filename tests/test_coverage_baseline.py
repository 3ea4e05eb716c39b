"""Op-coverage regression test: a fixed subset of ~90 common OpInfo entries must not get worse.

tests/coverage_baseline.json records the class of each entry as measured by the coverage tool
(compiled > partial > fallback > mismatch/error). An entry that gets worse fails its test; one
that gets better passes with a warning asking to refresh the baseline:

    python -m torch_mlir_eager.coverage --baseline-set --max-samples 2 \
        --write-baseline tests/coverage_baseline.json

The whole subset runs once per session, with the same number of samples per op as the baseline
was written with, in two worker processes (kernels are shared within each; an op that crashes
the process costs only its own test). TORCH_MLIR_EAGER_COVERAGE_INPROCESS=1 runs it in the test
process instead. About 2 minutes on 2 cores with a cold kernel cache.
"""

import json
import os
import warnings

import pytest

from torch_mlir_eager import coverage

BASELINE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "coverage_baseline.json")
UPDATE_CMD = ("python -m torch_mlir_eager.coverage --baseline-set --max-samples {n} "
              "--write-baseline tests/coverage_baseline.json")


def _baseline():
    with open(BASELINE) as f:
        return json.load(f)


_BASE = _baseline()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    names = sorted({k.split("@")[0] for k in _BASE["ops"]})
    dtypes = sorted({k.split("@")[1] if "@" in k else "float32" for k in _BASE["ops"]})
    entries, _ = coverage.select_entries(names=names, dtypes=dtypes)
    opts = {"max_samples": _BASE.get("max_samples", 2), "op_budget": 30.0}
    if os.environ.get("TORCH_MLIR_EAGER_COVERAGE_INPROCESS", "") in ("1", "true", "yes"):
        coverage.load_backend()  # imports the backend and turns off background compiles
        res = coverage.run_inprocess(entries, opts)
    else:
        env = dict(os.environ, TORCH_MLIR_EAGER_ASYNC_COMPILE="0")
        res = coverage.run_isolated(entries, opts, jobs=2, op_timeout=120.0,
                                    log_dir=str(tmp_path_factory.mktemp("coverage_logs")), env=env)
    out = {}
    for r in res:
        key = r["id"] if r["dtype"] == "float32" else f"{r['id']}@{r['dtype']}"
        out[key] = r
    return out


@pytest.mark.parametrize("key", sorted(_BASE["ops"]))
def test_not_worse_than_baseline(results, key):
    old = _BASE["ops"][key]
    r = results.get(key)
    assert r is not None, f"{key}: not in this torch's op_db any more (baseline: {old})"
    new = r["class"]
    regress, improve, _ = coverage.compare_to_baseline({key: old}, [r])
    if regress:
        pytest.fail(f"{key}: {old} -> {new}: {r.get('detail', '')}", pytrace=False)
    if improve:
        msg = (f"{key} improved: {old} -> {new}. Update the baseline: "
               + UPDATE_CMD.format(n=_BASE.get("max_samples", 2)))
        print(msg)
        warnings.warn(msg, stacklevel=1)
