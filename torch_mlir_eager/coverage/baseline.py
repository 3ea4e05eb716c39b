"""Baselines: the class of each entry of a run, saved (tests/coverage_baseline.json), and a later
run compared with it (regressions, improvements, entries gone)."""

from __future__ import annotations

import json
import os

# Ordering used for regressions: higher is better; mismatch and error are equally bad.
CLASS_RANK = {"compiled": 3, "partial": 2, "fallback": 1, "mismatch": 0, "error": 0}


def baseline_key(r) -> str:
    return r["id"] if r["dtype"] == "float32" else f"{r['id']}@{r['dtype']}"


def write_baseline(path, results, meta):
    ops = {baseline_key(r): r["class"] for r in results}
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
    got = {baseline_key(r): r["class"] for r in results}
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
