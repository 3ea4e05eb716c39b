"""Where local-task's thread pool starts to beat local-sync's inline execution: the same compiled
kernel loaded on both CPU drivers, timed interleaved in one process over a range of work sizes.

    python benchmarks/crossover.py [--rounds 30] [--out benchmarks/results/crossover.json]

Work is counted as the hybrid device counts it (device.work_of): elements read and written for
elementwise and data-movement ops, multiply-adds for matmuls and convolutions. The hybrid CPU
device (the default) runs a kernel on local-task when its work is at least the crossover.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402

import bench_util as bu  # noqa: E402


def cases():
    """(label, op, make inputs) over growing sizes."""
    for n in (1 << k for k in range(6, 23, 2)):  # 64 .. 4M elements
        yield f"add {n}", lambda a, b: a + b, (lambda n=n: [torch.randn(n), torch.randn(n)])
    for n in (8, 16, 32, 64, 128, 256, 512):
        yield f"mm {n}x{n}x{n}", torch.mm, (lambda n=n: [torch.randn(n, n), torch.randn(n, n)])
    for c, hw in ((8, 8), (16, 16), (32, 16), (64, 28), (64, 56)):
        yield (f"conv3x3 {c}ch {hw}x{hw}", lambda x, w: torch.nn.functional.conv2d(x, w, padding=1),
               (lambda c=c, hw=hw: [torch.randn(1, c, hw, hw), torch.randn(c, c, 3, 3)]))
    for n in (1 << k for k in range(8, 21, 3)):
        yield f"sum {n}", lambda a: a.sum(), (lambda n=n: [torch.randn(n)])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--out", default=os.path.join(HERE, "results", "crossover.json"))
    args = p.parse_args()

    from torch_mlir_eager import TorchMLIRTensor, device as devmod
    from torch_mlir_eager.kernel import Kernel
    from torch_mlir_eager.kernel_cache import CACHE

    rows = []
    for label, op, make in cases():
        inputs = make()
        want = op(*inputs)
        d = [TorchMLIRTensor(x, device="local-sync") for x in inputs]
        got = op(*d)  # compiles (or loads) the kernel
        torch.testing.assert_close(got.cpu(), want, atol=1e-3, rtol=1e-3)
        kernel = next(e for k, e in reversed(CACHE.entries()) if isinstance(e, Kernel) and e.launches)
        sync_dev, task_dev = devmod.get_device("local-sync"), devmod.get_device("local-task")
        k_sync = Kernel(sync_dev, kernel.vmfb, kernel.name, kernel.plan)
        k_task = Kernel(task_dev, kernel.vmfb, kernel.name, kernel.plan)
        from torch_mlir_eager.buffers import dense_buffer

        buffers = [dense_buffer(t) for t in d]
        work = devmod.work_of(kernel.name, [tuple(t.shape) for t in d], [s.shape for s in kernel.plan.out_specs])
        inner = max(1, min(200, int(2e5 // max(work, 1))))
        samples = bu.interleaved({"local-sync": lambda: k_sync(buffers), "local-task": lambda: k_task(buffers)},
                                 inner, args.rounds, warmup=3)
        med = {k: statistics.median(v) * 1e6 for k, v in samples.items()}
        iqr = {k: [x * 1e6 for x in bu.spread(v)] for k, v in samples.items()}
        rows.append({"case": label, "work": work, "sync_us": med["local-sync"], "task_us": med["local-task"],
                     "iqr_sync_us": iqr["local-sync"], "iqr_task_us": iqr["local-task"],
                     "task_over_sync": med["local-task"] / med["local-sync"]})
        print(f"{label:<24} work {work:>12.3g}  sync {med['local-sync']:>10.1f} us  task {med['local-task']:>10.1f} us"
              f"  task/sync {med['local-task'] / med['local-sync']:.2f}", flush=True)
    wins = sorted(r["work"] for r in rows if r["task_over_sync"] < 0.9)
    losses = sorted(r["work"] for r in rows if r["task_over_sync"] > 1.0)
    print(f"\nlocal-task wins (>10% faster) from work {wins[0] if wins else None:.3g}; "
          f"largest work where local-sync is faster: {max(losses) if losses else None}")
    if args.out:
        bu.write_json(args.out, {"machine": bu.machine_description(), "rounds": args.rounds, "rows": rows})


if __name__ == "__main__":
    main()
