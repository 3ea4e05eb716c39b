"""Start-up cost of the eager backend: warm starts from the disk cache, cold starts on the compile
workers, and non-blocking compilation.

    python benchmarks/startup.py [--sizes 64,224] [--workers 1,2] [--out benchmarks/results/startup.json]

Each scenario runs ResNet18 (eval, batch 1) in a new process; every figure is a ratio against a
baseline measured in that same process:
  cold            empty disk cache, blocking compiles: first forward (and / warm forward)
  precompile-N    empty disk cache, N compile workers: precompile(model, x) then the first
                  forward, against the blocking cold first forward
  warm            a second process sharing the cache: first forward / its warm forward, with
                  what the first forward spends its time on
  async           empty cache, non-blocking compiles: first forward / native eager forward, and
                  how many forwards pass before every call runs compiled
The script also runs against older versions of the package (features it lacks are skipped), so
that before/after figures come from the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = textwrap.dedent(
    """
    import json, statistics, sys, time
    t_start = time.perf_counter()
    import torch
    import torch_mlir_eager as tme
    from torch_mlir_eager import TorchMLIRTensor
    from torch_mlir_eager.models import resnet18
    t_import = time.perf_counter() - t_start

    mode, size = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    model = resnet18().eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        native = []
        for _ in range(5):
            t0 = time.perf_counter(); model(x); native.append(time.perf_counter() - t0)
    dev_model = tme.to_device(model)
    dx = TorchMLIRTensor(x)
    if mode == "async":
        tme.set_async_compile(True)
    out = {"native_s": statistics.median(native), "import_s": t_import}
    loads = []
    if hasattr(tme, "set_compile_listener"):
        tme.set_compile_listener(lambda ev, name, s: loads.append((ev, s)) if ev in ("loaded", "done") else None)
    with torch.no_grad():
        if mode == "precompile":
            t0 = time.perf_counter(); summary = tme.precompile(dev_model, x, progress=False)
            out["precompile_s"] = time.perf_counter() - t0
            out["precompile"] = summary
        tme.reset_stats()
        t0 = time.perf_counter(); dev_model(dx); out["first_s"] = time.perf_counter() - t0
        s = tme.stats()
        out.update(kernels_compiled=s["kernels_compiled"], disk_cache_hits=s["disk_cache_hits"],
                   compile_seconds=s["compile_seconds"], first_fallback_calls=s["fallback_calls"],
                   kernel_load_s=sum(v for ev, v in loads if ev == "loaded"))
        out["heavy_modules"] = [m for m in ("torch_mlir", "iree.compiler", "torch._dynamo") if m in sys.modules]
        if mode == "async":
            forwards, times = 1, [out["first_s"]]
            while forwards < 500:
                tme.reset_stats()
                t0 = time.perf_counter(); dev_model(dx); times.append(time.perf_counter() - t0)
                forwards += 1
                if tme.stats()["fallback_calls"] == 0:
                    break
                time.sleep(0.05)
            out["forwards_until_all_compiled"] = forwards
            out["seconds_until_all_compiled"] = sum(times)
            tme.synchronize_compiles()
        warm = []
        for _ in range(7):
            t0 = time.perf_counter(); dev_model(dx); warm.append(time.perf_counter() - t0)
        out["warm_s"] = statistics.median(warm)
    print("RESULT " + json.dumps(out))
    """
)


def run_child(mode, size, cache_dir, pythonpath=None, **env):
    full_env = dict(os.environ, TORCH_MLIR_EAGER_CACHE_DIR=cache_dir, **{k: str(v) for k, v in env.items()})
    if pythonpath:
        full_env["PYTHONPATH"] = pythonpath + os.pathsep + full_env.get("PYTHONPATH", "")
    # from a neutral folder: `python -c` puts the working directory first on sys.path
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(size)], env=full_env,
                          capture_output=True, text=True, cwd=tempfile.gettempdir())
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{mode} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def has_precompile(pythonpath) -> bool:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    code = "import torch_mlir_eager as t; print(hasattr(t, 'precompile'))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=tempfile.gettempdir()).stdout.strip() == "True"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="64,224")
    p.add_argument("--workers", default="1,2", help="worker counts for the precompile scenario")
    p.add_argument("--pythonpath", default=None, help="measure the package found there (e.g. an older checkout)")
    p.add_argument("--skip-async", action="store_true")
    p.add_argument("--out", default=os.path.join(HERE, "results", "startup.json"))
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    workers = [int(w) for w in args.workers.split(",") if w]
    precompile = has_precompile(args.pythonpath)
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "sizes": {}}
    rows = []
    for size in sizes:
        r = report["sizes"][size] = {}
        with tempfile.TemporaryDirectory() as shared:
            r["cold"] = run_child("cold", size, shared, args.pythonpath)
            r["warm"] = run_child("warm", size, shared, args.pythonpath)
        if precompile:
            for n in workers:
                with tempfile.TemporaryDirectory() as fresh:
                    r[f"precompile-{n}"] = run_child("precompile", size, fresh, args.pythonpath,
                                                     TORCH_MLIR_EAGER_COMPILE_WORKERS=n)
        if not args.skip_async:
            with tempfile.TemporaryDirectory() as fresh:
                r["async"] = run_child("async", size, fresh, args.pythonpath)
        cold, warm = r["cold"], r["warm"]
        rows.append((f"{size}: cold process, blocking: first forward", f"{cold['first_s']:.2f} s",
                     f"{cold['first_s'] / cold['warm_s']:.0f}x warm",
                     f"{cold['kernels_compiled']} kernels compiled, {cold['compile_seconds']:.1f} s in builds"))
        for n in workers:
            pc = r.get(f"precompile-{n}")
            if pc:
                total = pc["precompile_s"] + pc["first_s"]
                rows.append((f"{size}: cold, precompile with {n} worker(s) + first forward", f"{total:.2f} s",
                             f"{total / cold['first_s']:.2f}x blocking",
                             f"precompile {pc['precompile_s']:.1f} s ({pc['precompile']['kernels']} kernels), "
                             f"forward {pc['first_s']:.2f} s, {pc['kernels_compiled']} compiled in it"))
        rows.append((f"{size}: second process (warm disk cache): first forward", f"{warm['first_s']:.3f} s",
                     f"{warm['first_s'] / warm['warm_s']:.2f}x warm",
                     f"{warm['kernels_compiled']} compiled, {warm['disk_cache_hits']} from disk "
                     f"({warm['kernel_load_s'] * 1e3:.0f} ms loading them); imported: {', '.join(warm['heavy_modules']) or 'no compiler stack'}"))
        rows.append((f"{size}: warm forward", f"{warm['warm_s'] * 1e3:.1f} ms",
                     f"{warm['warm_s'] / warm['native_s']:.2f}x native", ""))
        a = r.get("async")
        if a:
            rows.append((f"{size}: cold, non-blocking compiles: first forward", f"{a['first_s']:.2f} s",
                         f"{a['first_s'] / a['native_s']:.1f}x native",
                         f"{a['first_fallback_calls']} calls native while compiling; "
                         f"{a['forwards_until_all_compiled']} forwards, {a['seconds_until_all_compiled']:.1f} s until all compiled"))
    print(f"ResNet18 eval, batch 1; {report['machine']}")
    print(f"| {'scenario':<58} | {'time':>9} | {'ratio':>16} | notes")
    print(f"|{'-' * 60}|{'-' * 11}|{'-' * 18}|------")
    for row in rows:
        print(f"| {row[0]:<58} | {row[1]:>9} | {row[2]:>16} | {row[3]}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
