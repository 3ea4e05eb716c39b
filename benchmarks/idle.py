"""ResNet18 batch 1 after idle against back to back: where the difference goes.

    python benchmarks/idle.py [--rounds 12] [--out benchmarks/results/idle.json]

`run.py` reports the eager forward two ways: on its own after 0.3 s idle, and in a steady state of
back-to-back forwards. This script shows why they differ. Each round runs, in a shuffled order,
one eager forward after each idle time (0, 2, 10, 50 and 300 ms; 0 = right after another
forward) and one native forward after 300 ms. It then times every kernel of the eager forward
(`kernel_timing`) after 300 ms idle and after another forward, and counts the stalls: kernels
that took at least 1 ms more than their median in the back-to-back forwards.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402

import bench_util as bu  # noqa: E402

IDLE_MS = (0, 2, 10, 50, 300)
STALL_S = 1e-3


def _cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--out", default=os.path.join(HERE, "results", "idle.json"))
    args = p.parse_args()

    import torch_mlir_eager as tme
    from torch_mlir_eager import TorchMLIRTensor
    from torch_mlir_eager.models import resnet18
    from torch_mlir_eager.timing import kernel_timing

    torch.manual_seed(0)
    rng = random.Random(0)
    model = resnet18().eval()
    x = torch.randn(1, 3, 224, 224)
    dev_model = tme.to_device(copy.deepcopy(model)).eval()
    xd = TorchMLIRTensor(x)
    eager = lambda: dev_model(xd).cpu()  # noqa: E731

    walls = {ms: [] for ms in IDLE_MS}
    cpus = {ms: [] for ms in IDLE_MS}
    native = []
    kernels = {"after 300 ms idle": [], "back to back": []}
    with torch.no_grad():
        for _ in range(3):
            eager()
            model(x)
        for _ in range(args.rounds):
            for turn in rng.sample(list(IDLE_MS) + ["native"] + list(kernels), len(IDLE_MS) + 1 + len(kernels)):
                eager()
                if turn == "native":
                    time.sleep(0.3)
                    t0 = time.perf_counter()
                    model(x)
                    native.append(time.perf_counter() - t0)
                elif turn in kernels:
                    if turn != "back to back":
                        time.sleep(0.3)
                    with kernel_timing() as records:
                        eager()
                    kernels[turn].append([seconds for _, seconds in records])
                    names = [name for name, _ in records]
                else:
                    if turn:
                        time.sleep(turn / 1e3)
                    c0, t0 = _cpu_seconds(), time.perf_counter()
                    eager()
                    walls[turn].append(time.perf_counter() - t0)
                    cpus[turn].append(_cpu_seconds() - c0)

    ms = 1e3
    nat = bu.median(native)
    print(f"native forward after 300 ms idle: {nat * ms:.1f} ms")
    print(f"{'idle before':>12}  {'eager ms':>9}  {'middle half':>13}  {'x native':>8}  {'CPU ms':>7}")
    rows = []
    for idle in IDLE_MS:
        q1, q3 = bu.spread(walls[idle])
        med = bu.median(walls[idle])
        print(f"{idle:>9} ms  {med * ms:9.1f}  {q1 * ms:5.1f}-{q3 * ms:5.1f}  {med / nat:8.2f}  "
              f"{bu.median(cpus[idle]) * ms:7.1f}")
        rows.append({"idle_ms": idle, "eager_ms": med * ms, "iqr_ms": [q1 * ms, q3 * ms],
                     "ratio": med / nat, "cpu_ms": bu.median(cpus[idle]) * ms,
                     "samples_ms": [v * ms for v in walls[idle]]})

    n = len(names)
    typical = [bu.median([r[i] for r in kernels["back to back"]]) for i in range(n)]
    stalls = {}
    for label, forwards in kernels.items():
        per_forward = [[(names[i], r[i] - typical[i]) for i in range(n) if r[i] - typical[i] >= STALL_S]
                       for r in forwards]
        lost = [sum(extra for _, extra in s) for s in per_forward]
        stalls[label] = {"forwards": len(forwards),
                         "stalls_per_forward": bu.median([len(s) for s in per_forward]),
                         "stall_ms_per_forward": bu.median(lost) * ms,
                         "kernel_ms_per_forward": bu.median([sum(r) for r in forwards]) * ms,
                         "stalled_ops": sorted({name for s in per_forward for name, _ in s})}
        print(f"{label}: kernels {stalls[label]['kernel_ms_per_forward']:.1f} ms per forward, "
              f"{stalls[label]['stalls_per_forward']} stalls (>= 1 ms over the kernel's back-to-back "
              f"median) losing {stalls[label]['stall_ms_per_forward']:.1f} ms; in "
              f"{', '.join(stalls[label]['stalled_ops']) or 'none'}")
    report = {"machine": bu.machine_description(), "native_ms": nat * ms, "idle": rows, "stalls": stalls}
    bu.write_json(args.out, report)


if __name__ == "__main__":
    main()
