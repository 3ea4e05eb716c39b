"""Adding up a run: entries per class, calls, fallbacks grouped by step, reason and aten op, the
ops torch-mlir could not lower, and for the differential checks the states per column, every
mismatch with its culprit kernels, the unattributed ones, and stride / zero-sign differences."""

from __future__ import annotations

import collections
import re

from .entry import COLUMNS
from .tally import CLASSES, STATES

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


def _fallback_groups(results):
    """(by step, by reason group, by aten op) of every entry's fallbacks (values column)."""
    groups, by_aten = {}, {}
    by_step = collections.defaultdict(lambda: {"calls": 0, "entries": set(), "kinds": set()})
    for r in results:
        for aten, fb in (r.get("fallbacks") or {}).items():
            step, reason, n = fb.get("step", ""), fb.get("reason", ""), fb.get("count", 1)
            kind = reason_kind(step, reason)
            key = (step, normalize_reason(reason))
            g = groups.setdefault(key, {"step": step, "kind": kind, "reason": key[1], "example_reason": reason,
                                        "entries": set(), "calls": 0, "aten_ops": collections.Counter(),
                                        "example_entry": r["id"]})
            g["entries"].add((r["id"], r["dtype"]))
            g["calls"] += n
            g["aten_ops"][aten] += n
            a = by_aten.setdefault((aten, key), {"aten_op": aten, "step": step, "kind": kind, "reason": reason,
                                                 "entries": set(), "calls": 0})
            a["entries"].add((r["id"], r["dtype"]))
            a["calls"] += n
            by_step[step]["calls"] += n
            by_step[step]["kinds"].add(kind)
            by_step[step]["entries"].add((r["id"], r["dtype"]))
    steps = {s: {"calls": v["calls"], "entries": len(v["entries"]), "kind": "/".join(sorted(v["kinds"]))}
             for s, v in sorted(by_step.items(), key=lambda kv: -kv[1]["calls"])}
    reasons = [
        {"step": g["step"], "kind": g["kind"], "reason": g["reason"], "example_reason": g["example_reason"],
         "entries": len(g["entries"]), "calls": g["calls"],
         "aten_ops": [a for a, _ in g["aten_ops"].most_common()], "example_entry": g["example_entry"]}
        for g in sorted(groups.values(), key=lambda g: (-len(g["entries"]), -g["calls"], g["reason"]))
    ]
    atens = [dict(a, entries=len(a["entries"]), example_entries=sorted(x[0] for x in a["entries"])[:5])
             for a in sorted(by_aten.values(), key=lambda a: (-len(a["entries"]), -a["calls"], a["aten_op"]))]
    return steps, reasons, atens


def _missing_lowerings(results):
    """The torch-dialect ops left over when lowering failed, with the aten ops that led to them."""
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
    return [{"op": e["op"], "entries": len(e["entries"]), "calls": e["calls"], "aten_ops": sorted(e["aten_ops"]),
             "example_entries": sorted(x[0] for x in e["entries"])[:5]}
            for e in sorted(missing.values(), key=lambda e: (-len(e["entries"]), -e["calls"], e["op"]))]


def _column_states(results):
    """{column: {state: entries, "cases": n, "calls": {...}}} over the columns the run had."""
    out = {}
    for r in results:
        for column, col in (r.get("columns") or {}).items():
            c = out.setdefault(column, dict({s: 0 for s in STATES}, cases=0,
                                            calls={"compiled": 0, "metadata": 0, "fallback": 0}))
            c[col["state"]] += 1
            c["cases"] += col.get("cases", 0)
            for k in c["calls"]:
                c["calls"][k] += col.get("calls", {}).get(k, 0)
    return {column: out[column] for column in COLUMNS if column in out}


def mismatches(results):
    """Every (entry, column) with a mismatching case: its evidence and attribution."""
    out = []
    for r in results:
        for column in COLUMNS:
            m = ((r.get("columns") or {}).get(column) or {}).get("mismatch")
            if not m:
                continue
            att = m.get("attribution") or {}
            out.append({"id": r["id"], "dtype": r["dtype"], "column": column, "case": m["case"],
                        "evidence": m["evidence"], "max_abs_err": m.get("max_abs_err"),
                        "culprits": [c["op"] for c in att.get("culprits", [])],
                        "culprit_reasons": {c["op"]: c["reason"] for c in att.get("culprits", [])},
                        "resolved": att.get("resolved"), "dispatched": att.get("dispatched", []),
                        "attribution_note": att.get("note")})
    return out


def _minor_differences(results):
    out = []
    for r in results:
        for column, col in (r.get("columns") or {}).items():
            for kind, m in (col.get("minor") or {}).items():
                out.append({"id": r["id"], "dtype": r["dtype"], "column": column, "kind": kind, "case": m["case"],
                            "detail": m["detail"]})
    return out


def summarize(results, not_supported=0):
    counts = collections.Counter(r["class"] for r in results)
    calls = collections.Counter()
    for r in results:
        for k, v in r["calls"].items():
            calls[k] += v
    total_calls = calls["compiled"] + calls["metadata"] + calls["fallback"]
    steps, reasons, atens = _fallback_groups(results)
    found = mismatches(results)
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
        "missing_lowerings": _missing_lowerings(results),
        "columns": _column_states(results),
        "mismatches": found,
        "unattributed": [m for m in found if not m["culprits"]],
        "minor_differences": _minor_differences(results),
    }
