"""python -m torch_mlir_eager.coverage: options, a run, its reports, baselines and guard list."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import sys
import time

from . import __doc__ as PACKAGE_DOC
from .baseline import compare_to_baseline, write_baseline
from .entry import DEFAULT_MAX_SAMPLES, DEFAULT_OP_BUDGET, EXTRA_CHECKS
from .guards import build_guards, merge, read_manual, write_guards
from .markdown import render_markdown
from .progress import Progress
from .selection import SWEEP_DEFAULT_MAX_SAMPLES, baseline_names, parse_dtypes, select_entries, sweep_default_names
from .summary import summarize
from .tally import CLASSES
from .worker import DEFAULT_OP_TIMEOUT, DEFAULT_OUT_DIR, json_safe, run_inprocess, run_isolated, worker_main

# Entries with every check do several times the work of the values column alone.
DEFAULT_OP_TIMEOUT_ALL_CHECKS = 300.0


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


def parse_checks(spec: str):
    if spec in ("all", ""):
        return list(EXTRA_CHECKS)
    if spec == "none":
        return []
    checks = [c.strip() for c in spec.split(",") if c.strip() and c.strip() != "values"]
    unknown = [c for c in checks if c not in EXTRA_CHECKS]
    if unknown:
        raise SystemExit(f"coverage: unknown check(s) {', '.join(unknown)}; known: {', '.join(EXTRA_CHECKS)}")
    return checks


def _parser():
    p = argparse.ArgumentParser(prog="python -m torch_mlir_eager.coverage", description=PACKAGE_DOC,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", help="regex searched in the OpInfo name, name.variant and entry id (e.g. add_)")
    p.add_argument("--baseline-set", action="store_true", help="run the fixed subset of tests/coverage_baseline.json")
    p.add_argument("--sweep-default", action="store_true",
                   help="the bounded default sweep: a fixed list of common ops, every check, "
                        f"{SWEEP_DEFAULT_MAX_SAMPLES} samples per op; exit 1 on any mismatch")
    p.add_argument("--checks", default="all",
                   help=f"checks besides values: all (default), none, or a list of {','.join(EXTRA_CHECKS)}")
    p.add_argument("--dtypes", default="float32", help="comma-separated, e.g. float32,float64 (default float32)")
    p.add_argument("--inplace", choices=("none", "elementwise", "all"), default="elementwise",
                   help="also run in-place variants (add_, ...): for elementwise ops (default), all, or none")
    p.add_argument("--max-samples", type=int, default=None,
                   help=f"sample inputs per op (default {DEFAULT_MAX_SAMPLES}; {SWEEP_DEFAULT_MAX_SAMPLES} with "
                        "--sweep-default)")
    p.add_argument("--op-budget", type=float, default=DEFAULT_OP_BUDGET,
                   help=f"soft per-op time: no new case starts after it (default {DEFAULT_OP_BUDGET:g} s)")
    p.add_argument("--op-timeout", type=float, default=None,
                   help=f"hard per-op timeout, then error (default {DEFAULT_OP_TIMEOUT:g} s, "
                        f"{DEFAULT_OP_TIMEOUT_ALL_CHECKS:g} s with checks besides values)")
    p.add_argument("--jobs", type=int, default=2, help="parallel worker processes (default 2)")
    p.add_argument("--in-process", action="store_true", help="no worker processes (no crash isolation)")
    p.add_argument("--ops-per-worker", type=int, default=0, help="restart a worker after this many ops (0: never)")
    p.add_argument("--out-dir", default=DEFAULT_OUT_DIR, help="logs and kernel cache (default coverage_out)")
    p.add_argument("--out-md", default=None, help="Markdown report (default OUT_DIR/op_coverage.md)")
    p.add_argument("--out-json", default=None, help="JSON results (default OUT_DIR/op_coverage.json)")
    p.add_argument("--write-baseline", metavar="PATH", help="write the classes of the entries run to PATH")
    p.add_argument("--check-baseline", metavar="PATH", help="compare with a baseline; exit 1 on regressions")
    p.add_argument("--write-guards", metavar="PATH",
                   help="write the guard list (culprit kernels of the attributed mismatches) to PATH")
    p.add_argument("--merge-guards", metavar="PATH",
                   help="with --write-guards: keep the hand-written (\"manual\": true) guards of PATH")
    p.add_argument("--fail-on-mismatch", action="store_true", help="exit 1 when any column has a mismatch")
    p.add_argument("--render", metavar="JSON",
                   help="only re-render the Markdown report (and --write-baseline, --write-guards) from a run's JSON")
    p.add_argument("--list", action="store_true", help="list the selected entries and exit")
    p.add_argument("--no-progress", action="store_true")
    return p


def _write(path, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")


def _outputs(args, data, argv):
    """Guards, Markdown and baseline of a run (or a re-rendered one)."""
    out_md = args.out_md or os.path.join(args.out_dir, "op_coverage.md")
    guards = build_guards(data["results"])
    if args.write_guards:
        guards = merge(guards, read_manual(args.merge_guards))
        write_guards(args.write_guards, guards, "python -m torch_mlir_eager.coverage " + " ".join(argv))
        print(f"wrote {len(guards)} guard(s) to {args.write_guards}", file=sys.stderr)
    data["guards"] = guards
    _write(out_md, render_markdown(data))
    print(f"wrote {out_md}", file=sys.stderr)
    if args.write_baseline:
        write_baseline(args.write_baseline, data["results"], data["meta"])
        print(f"wrote baseline {args.write_baseline}", file=sys.stderr)


def _selection(args):
    names = None
    if args.sweep_default:
        names = sweep_default_names()
    elif args.baseline_set:
        names = baseline_names()
    elif args.check_baseline and not args.ops:
        with open(args.check_baseline) as f:
            names = [k.split("@")[0] for k in json.load(f)["ops"]]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    parse_dtypes(",".join(dtypes))
    return select_entries(args.ops, dtypes, args.inplace, names), dtypes


def _run(entries, opts, args, op_timeout):
    progress = Progress(len(entries), enabled=not args.no_progress)
    # Results also stream to OUT_DIR/results.jsonl, so an interrupted run keeps what it finished.
    with open(os.path.join(args.out_dir, "results.jsonl"), "w") as stream:
        def on_result(res):
            stream.write(json.dumps(json_safe(res)) + "\n")
            stream.flush()

        if args.in_process:
            results = run_inprocess(entries, opts, progress, on_result=on_result)
        else:
            results = run_isolated(entries, opts, jobs=args.jobs, op_timeout=op_timeout, log_dir=args.out_dir,
                                   progress=progress, ops_per_worker=args.ops_per_worker, on_result=on_result)
    progress.close()
    return results


def _check_baseline(path, results):
    with open(path) as f:
        base = json.load(f)["ops"]
    regress, improve, missing = compare_to_baseline(base, results)
    for k, o, n in regress:
        print(f"REGRESSION {k}: {o} -> {n}", file=sys.stderr)
    for k, o, n in improve:
        print(f"improved {k}: {o} -> {n} (update the baseline)", file=sys.stderr)
    for k, o, _ in missing:
        print(f"missing {k} (baseline {o})", file=sys.stderr)
    return bool(regress)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--worker":
        return worker_main()
    args = _parser().parse_args(argv)
    if args.render:
        with open(args.render) as f:
            data = json.load(f)
        data["summary"] = summarize(data["results"], data.get("summary", {}).get("not_supported_dtype", 0))
        _outputs(args, data, argv)
        return 0
    checks = list(EXTRA_CHECKS) if args.sweep_default else parse_checks(args.checks)
    max_samples = args.max_samples or (SWEEP_DEFAULT_MAX_SAMPLES if args.sweep_default else DEFAULT_MAX_SAMPLES)
    op_timeout = args.op_timeout or (DEFAULT_OP_TIMEOUT_ALL_CHECKS if checks else DEFAULT_OP_TIMEOUT)
    os.makedirs(args.out_dir, exist_ok=True)
    os.environ.setdefault("TORCH_MLIR_EAGER_CACHE_DIR", os.path.abspath(os.path.join(args.out_dir, "kernel_cache")))
    os.environ["TORCH_MLIR_EAGER_ASYNC_COMPILE"] = "0"
    (entries, not_supported), dtypes = _selection(args)
    if args.list:
        for e in entries:
            print(f"{e['id']}\t{e['dtype']}")
        print(f"{len(entries)} entries ({not_supported} op/dtype pairs not supported)", file=sys.stderr)
        return 0
    if not entries:
        print("coverage: no entries selected", file=sys.stderr)
        return 2
    opts = {"max_samples": max_samples, "op_budget": args.op_budget, "checks": checks}
    t0 = time.time()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    results = _run(entries, opts, args, op_timeout)
    duration = time.time() - t0
    meta = run_metadata()
    meta.update({
        "date": date, "duration_s": round(duration, 1), "argv": " ".join(argv), "dtypes": dtypes,
        "inplace": ("default sweep" if args.sweep_default else "baseline subset" if args.baseline_set else args.inplace),
        "ops": args.ops, "max_samples": max_samples, "op_budget": args.op_budget, "op_timeout": op_timeout,
        "checks": ["values"] + checks, "jobs": 1 if args.in_process else args.jobs, "isolated": not args.in_process,
        "kernel_cache_dir": os.environ.get("TORCH_MLIR_EAGER_CACHE_DIR"),
    })
    data = {"meta": meta, "summary": summarize(results, not_supported), "results": results}
    _outputs(args, data, argv)
    out_json = args.out_json or os.path.join(args.out_dir, "op_coverage.json")
    _write(out_json, json.dumps(json_safe(data), indent=1))
    s = data["summary"]
    found = s["mismatches"]
    print(f"coverage: {s['entries']} entries in {duration / 60:.1f} min: "
          + ", ".join(f"{c} {s['classes'][c]}" for c in CLASSES)
          + f"; calls compiled {100 * s['share_compiled']:.1f}%; mismatches found: {len(found)} "
          + f"({len(s['unattributed'])} unattributed, {len(data['guards'])} guard(s))", file=sys.stderr)
    print(f"wrote {out_json}", file=sys.stderr)
    rc = 0
    if args.check_baseline and _check_baseline(args.check_baseline, results):
        rc = 1
    if (args.fail_on_mismatch or args.sweep_default) and found:
        for m in found:
            print(f"MISMATCH {m['id']} [{m['column']}] {m['case']}: {m['evidence'][:200]}", file=sys.stderr)
        rc = 1
    return rc
