"""Adding up the cases of one check (column) of one entry into its class and report fields.

A column's class, from its cases: `error` if the backend raised on one, else `mismatch` if one
disagreed with native, else by the calls' statistics `fallback` (every case ran natively),
`compiled` (none fell back) or `partial`; `skipped` when no case ran. New columns report it as a
state: ok (compiled), partial, fallback, mismatch, error, n/a (skipped or not applicable).
"""

from __future__ import annotations

import collections

CLASSES = ("compiled", "partial", "fallback", "mismatch", "error", "skipped")
STATES = ("ok", "partial", "fallback", "mismatch", "error", "n/a")
_STATE_OF_CLASS = {"compiled": "ok", "skipped": "n/a"}
MAX_NOTES = 5
# Differences reported apart from mismatches (they matter less, and make no guard).
MINOR_KINDS = ("strides", "zero_signs", "subnormals", "native_paths")


class ColumnTally:
    def __init__(self, column: str):
        self.column = column
        self.cases = 0
        self.native_error = 0
        self.no_tensor = 0
        self.outcomes = collections.Counter()
        self.calls = {"compiled": 0, "metadata": 0, "fallback": 0}
        self.kernels_compiled = 0
        self.compile_seconds = 0.0
        self.cache_hits = 0
        self.disk_cache_hits = 0
        self.fallbacks = {}
        self.notes = []
        self.first_error = None
        self.worst = None  # {case, message, max_abs_err, recheck}
        self.mismatches = 0
        self.minor = {}  # a MINOR_KINDS kind -> {case, detail}
        self.not_applicable = None  # why the column does not apply
        self.crash = None  # how the column's cases crashed or hung the worker

    def note(self, text):
        if len(self.notes) < MAX_NOTES and text not in self.notes:
            self.notes.append(text)

    def add(self, label: str, r: dict):
        oc = r["outcome"]
        if oc == "native_error":
            self.native_error += 1
            if r.get("note"):
                self.note(f"{label} skipped: {r['note']}")
            return
        if oc == "no_tensor":
            self.no_tensor += 1
            return
        self.cases += 1
        self.outcomes[oc] += 1
        for k in self.calls:
            self.calls[k] += r.get(k, 0)
        self.kernels_compiled += r.get("kernels_compiled", 0)
        self.compile_seconds += r.get("compile_seconds", 0.0)
        self.cache_hits += r.get("cache_hits", 0)
        self.disk_cache_hits += r.get("disk_cache_hits", 0)
        for aten, fb in (r.get("fallbacks") or {}).items():
            cur = self.fallbacks.get(aten)
            if cur is None:
                self.fallbacks[aten] = {"count": int(fb.get("count", 1)), "reason": str(fb.get("reason", "")),
                                        "step": str(fb.get("step", ""))}
            else:
                cur["count"] += int(fb.get("count", 1))
        if r.get("note"):
            self.note(f"{label}: {r['note']}")
        for kind in MINOR_KINDS:
            if r.get(kind) and kind not in self.minor:
                self.minor[kind] = {"case": label, "detail": r[kind]}
        if oc == "error" and self.first_error is None:
            self.first_error = dict(r["error"], sample=label)
        if oc == "mismatch":
            self.mismatches += 1
            err = r.get("max_abs_err", float("nan"))
            if self.worst is None or (err == err and not (err <= self.worst["max_abs_err"])):
                self.worst = {"case": label, "message": r["mismatch"], "max_abs_err": err, "recheck": r.get("recheck")}

    def klass(self) -> str:
        if self.crash:
            return "error"
        if self.cases == 0:
            return "skipped"
        if self.outcomes["error"]:
            return "error"
        if self.outcomes["mismatch"]:
            return "mismatch"
        if self.outcomes["fallback"] == self.cases:
            return "fallback"
        if self.outcomes["compiled"] == self.cases:
            return "compiled"
        return "partial"

    def state(self) -> str:
        k = self.klass()
        return _STATE_OF_CLASS.get(k, k)

    def detail(self) -> str:
        k = self.klass()
        if self.crash:
            return self.crash
        if k == "skipped":
            if self.not_applicable:
                text = self.not_applicable
            elif self.native_error:
                text = "every sample raised natively or was not runnable"
                if self.notes:
                    text += f" ({self.notes[0]})"
            elif self.no_tensor:
                text = "no sample has a tensor input"
            else:
                text = "no samples"
        elif k == "error":
            text = f"{self.first_error['type']}: {self.first_error['message']}"
        elif k == "mismatch":
            text = f"{self.worst['case']}: {self.worst['message']}"
        else:
            text = ""
        if k in ("fallback", "partial") or (k in ("mismatch", "error") and self.fallbacks):
            parts = [f"{aten} [{fb['step']}]: {fb['reason']}"
                     for aten, fb in sorted(self.fallbacks.items(), key=lambda kv: -kv[1]["count"])]
            text = (text + " | fallbacks: " + "; ".join(parts)) if text else "; ".join(parts)
        return text

    def mismatch_report(self, attribution=None):
        if self.worst is None:
            return None
        rep = {"case": self.worst["case"], "evidence": self.worst["message"], "max_abs_err": self.worst["max_abs_err"]}
        if attribution is not None:
            rep["attribution"] = attribution
        return rep

    def summary(self, attribution=None) -> dict:
        """The column's fields in an entry's `columns`."""
        out = {"state": self.state(), "cases": self.cases, "mismatches": self.mismatches, "calls": dict(self.calls),
               "detail": self.detail(), "notes": list(self.notes)}
        if self.fallbacks:
            out["fallbacks"] = self.fallbacks
        rep = self.mismatch_report(attribution)
        if rep is not None:
            out["mismatch"] = rep
        if self.minor:
            out["minor"] = self.minor
        return out

    def legacy_fields(self) -> dict:
        """The values column as an entry's top-level fields (class, samples, calls, ...)."""
        out = {"class": self.klass(), "samples": self.cases, "samples_native_error": self.native_error,
               "samples_no_tensor": self.no_tensor, "sample_classes": dict(self.outcomes), "calls": dict(self.calls),
               "kernels_compiled": self.kernels_compiled, "compile_seconds": round(self.compile_seconds, 3),
               "cache_hits": self.cache_hits, "disk_cache_hits": self.disk_cache_hits, "fallbacks": self.fallbacks,
               "detail": self.detail(), "notes": list(self.notes)}
        if out["class"] == "error":
            out["error"] = self.first_error
        if out["class"] == "mismatch":
            out["max_abs_err"] = self.worst["max_abs_err"]
        return out
