"""Attribution: which aten kernels a mismatch comes from.

The failing case runs again in the backend's validation mode, with no kernel remembered from
before: each kernel the call builds is checked against native PyTorch on its first run, and the
ones that disagree are disabled (fallbacks of step `validate`). Those are the culprits. The run
also records every aten op the call dispatched, with its input dtypes, as evidence when
validation finds nothing (a wrong dtype, a missing error, a random op, a host fallback).
"""

from __future__ import annotations

import re

from .backend import dispatch_recorder, load_backend, supports_validation, validation
from .compare import first_line

# Validation compares the uninitialised memory these return and disables them: never culprits.
UNINITIALISED_ATEN_RE = re.compile(r"^aten\.(new_)?empty(_like|_strided|_permuted)?\.")


def attribute(recheck) -> dict:
    """{culprits: [{op, reason, dtypes}], resolved: whether the case agrees once they are
    disabled, dispatched: [aten ops]}; `recheck(around_call)` runs the case's backend half again."""
    if not supports_validation():
        return {"culprits": [], "dispatched": [], "note": "the backend has no validation mode"}
    be = load_backend()
    recorder = dispatch_recorder()
    try:
        with validation():
            problem = recheck(lambda: recorder)
            st = be.stats()
    except Exception as e:  # the rerun raised: keep what was recorded
        return {"culprits": [], "dispatched": sorted(recorder.ops),
                "note": f"the rerun in validation mode raised {type(e).__name__}: {first_line(e)}"}
    disabled = sorted(name for name, fb in (st.get("fallbacks") or {}).items() if fb.get("step") == "validate")
    culprits = [{"op": name, "reason": str(st["fallbacks"][name].get("reason", "")),
                 "dtypes": sorted(recorder.ops.get(name, ()))}
                for name in disabled if not UNINITIALISED_ATEN_RE.match(name)]
    out = {"culprits": culprits, "resolved": problem is None, "dispatched": sorted(recorder.ops)}
    ignored = [name for name in disabled if UNINITIALISED_ATEN_RE.match(name)]
    if ignored:
        out["note"] = f"validation also disabled {', '.join(ignored)} (uninitialised memory: not a culprit)"
    elif problem is None and not culprits:
        out["note"] = "agrees in validation mode without a kernel disabled (validation runs native first)"
    return out
