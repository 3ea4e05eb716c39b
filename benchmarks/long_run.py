"""Long runs: what grows with time, and what compiles again.

    python benchmarks/long_run.py [--slices 20000] [--steps 10] [--out benchmarks/results/long_run.json]

  slices      resident memory after N distinct slices of one device tensor (each a new view
              geometry), against the memory before them, and the size of the view memo
  scheduled   kernels built (compiled or loaded) by each step of a 10-step training run of a small
              MLP with SGD + momentum under CosineAnnealingLR, and with Adam
Runs against older versions of the package too (--pythonpath), for before/after figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))

SLICES = textwrap.dedent(
    """
    import gc, json, os, sys, torch
    import torch_mlir_eager as tme
    from torch_mlir_eager import TorchMLIRTensor

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    n = int(sys.argv[1])
    x = TorchMLIRTensor(torch.randn(n + 8))
    for i in range(200):  # warm up the path
        x[i: i + 1 + i % 5]
    gc.collect()
    before = rss()
    marks = {}
    for i in range(n):
        v = x[i: i + 1 + i % 7]  # a new geometry each time
        if (i + 1) % (n // 4) == 0:
            gc.collect()
            marks[i + 1] = rss() - before
    try:
        from torch_mlir_eager import views
        memo = views.memo_size()
    except ImportError:
        from torch_mlir_eager import dispatch
        memo = len(dispatch._view_cache)
    print("RESULT " + json.dumps({"growth_bytes": marks, "memo_entries": memo,
                                  "evictions": tme.stats().get("evictions", {})}))
    """
)

SCHEDULED = textwrap.dedent(
    """
    import copy, json, sys, torch
    import torch_mlir_eager as tme
    from torch_mlir_eager import TorchMLIRTensor

    steps = int(sys.argv[1])
    out = {}
    for name in ("sgd_momentum_cosine", "adam"):
        torch.manual_seed(0)
        model = tme.to_device(torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)))
        if name == "adam":
            opt, sched = torch.optim.Adam(model.parameters(), lr=1e-3), None
        else:
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        x, y = TorchMLIRTensor(torch.randn(16, 32)), TorchMLIRTensor(torch.randint(0, 10, (16,)))
        per_step = []
        for _ in range(steps):
            tme.reset_stats()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step()
            if sched is not None:
                sched.step()
            s = tme.stats()
            per_step.append(s["kernels_compiled"] + s.get("disk_cache_hits", 0))
        out[name] = per_step
    print("RESULT " + json.dumps(out))
    """
)


def run(code, arg, pythonpath, cache_dir):
    env = dict(os.environ, TORCH_MLIR_EAGER_CACHE_DIR=cache_dir)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    # from a neutral folder: `python -c` puts the working directory first on sys.path
    proc = subprocess.run([sys.executable, "-c", code, str(arg)], env=env, capture_output=True, text=True,
                          cwd=tempfile.gettempdir())
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slices", type=int, default=20000)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--pythonpath", default=None)
    p.add_argument("--out", default=os.path.join(HERE, "results", "long_run.json"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        slices = run(SLICES, args.slices, args.pythonpath, cache)
    with tempfile.TemporaryDirectory() as cache:
        scheduled = run(SCHEDULED, args.steps, args.pythonpath, cache)
    mib = 1 << 20
    print(f"| {'figure':<58} | value")
    print(f"|{'-' * 60}|------")
    for k, v in slices["growth_bytes"].items():
        print(f"| {'resident memory growth after ' + k + ' distinct slices':<58} | {v / mib:+.1f} MiB")
    print(f"| {'view metadata memo entries':<58} | {slices['memo_entries']} (evictions {slices['evictions']})")
    for name, per_step in scheduled.items():
        print(f"| {f'kernels built per step, {name}':<58} | {per_step} (after step 1: {sum(per_step[1:])})")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"slices": slices, "scheduled": scheduled}, f, indent=2)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
