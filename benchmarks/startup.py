"""Start-up cost of the eager backend: the persistent kernel cache and non-blocking compilation.

    python benchmarks/startup.py [--size 224] [--out benchmarks/results/startup.json]

Each scenario runs ResNet18 (eval, batch 1) in a new process; every figure is a ratio against a
baseline measured in that same process:
  cold       empty disk cache, blocking compiles: first forward / warm forward
  second     a second process sharing the cache: kernels compiled (must be 0), first / warm
  async      empty cache, non-blocking compiles: first forward / native eager forward, and how
             many forwards pass before every call runs compiled
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = textwrap.dedent(
    """
    import json, statistics, sys, time, torch
    import torch_mlir_eager as tme
    from torch_mlir_eager import TorchMLIRTensor
    from torch_mlir_eager.models import resnet18

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
    tme.reset_stats()
    out = {"native_s": statistics.median(native)}
    with torch.no_grad():
        t0 = time.perf_counter(); dev_model(dx); out["first_s"] = time.perf_counter() - t0
        s = tme.stats()
        out.update(kernels_compiled=s["kernels_compiled"], disk_cache_hits=s["disk_cache_hits"],
                   compile_seconds=s["compile_seconds"], first_fallback_calls=s["fallback_calls"])
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
        for _ in range(5):
            t0 = time.perf_counter(); dev_model(dx); warm.append(time.perf_counter() - t0)
        out["warm_s"] = statistics.median(warm)
    print("RESULT " + json.dumps(out))
    """
)


def run_child(mode, size, cache_dir):
    env = dict(os.environ, TORCH_MLIR_EAGER_CACHE_DIR=cache_dir)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(size)], env=env, capture_output=True, text=True
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{mode} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--out", default=os.path.join(HERE, "results", "startup.json"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as shared, tempfile.TemporaryDirectory() as fresh:
        cold = run_child("cold", args.size, shared)
        second = run_child("second", args.size, shared)
        async_ = run_child("async", args.size, fresh)
    rows = [
        ("cold process: first forward", f"{cold['first_s']:.2f} s",
         f"{cold['first_s'] / cold['warm_s']:.0f}x warm", f"{cold['kernels_compiled']} kernels compiled in {cold['compile_seconds']:.1f} s"),
        ("second process (shared disk cache): first forward", f"{second['first_s']:.2f} s",
         f"{second['first_s'] / second['warm_s']:.1f}x warm", f"{second['kernels_compiled']} compiled, {second['disk_cache_hits']} from disk"),
        ("cold process, non-blocking compiles: first forward", f"{async_['first_s']:.2f} s",
         f"{async_['first_s'] / async_['native_s']:.1f}x native", f"{async_['first_fallback_calls']} calls ran natively while compiling"),
        ("non-blocking: forwards until every call is compiled", str(async_["forwards_until_all_compiled"]),
         f"{async_['seconds_until_all_compiled']:.1f} s", ""),
        ("warm forward (for reference)", f"{second['warm_s'] * 1e3:.1f} ms",
         f"{second['warm_s'] / second['native_s']:.2f}x native", ""),
    ]
    print(f"ResNet18 eval, batch 1, {args.size}x{args.size}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"| {'scenario':<55} | {'time':>10} | {'ratio':>14} | notes")
    print(f"|{'-' * 57}|{'-' * 12}|{'-' * 16}|------")
    for r in rows:
        print(f"| {r[0]:<55} | {r[1]:>10} | {r[2]:>14} | {r[3]}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"size": args.size, "cold": cold, "second": second, "async": async_}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
