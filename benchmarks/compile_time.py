"""Compile time of ResNet18's kernel kinds, per compiler flag set, interleaved in one process.

    python benchmarks/compile_time.py [--rounds 5] [--out benchmarks/results/compile_time.json]

A cold first forward waits for every build in turn, so a build's time is start-up time. The
lowered modules of a relu, an add, a 3x3 convolution (with its op-class flags) and ResNet18's
max pool are made once (in this process, cache off); then each is compiled in-process with every
flag set, round after round, the order rotating. Reports the median and the middle half of each
(module, flag set), as a ratio to the baseline set, and the size of the .vmfb.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import bench_util as bu  # noqa: E402

NO_DEBUG = "--iree-llvmcpu-debug-symbols=false"
# each set is the device's target flags with this flag removed or kept
FLAG_SETS = {
    "with debug symbols (IREE's default)": ("drop", NO_DEBUG),
    "--iree-llvmcpu-debug-symbols=false": ("keep", NO_DEBUG),
}


def lowered_modules():
    """{name: (linalg text, op name)} of the kernels ResNet18's first block builds."""
    dump = tempfile.mkdtemp(prefix="tme-compile-time-")
    os.environ["TORCH_MLIR_EAGER_DUMP_DIR"] = dump
    os.environ["TORCH_MLIR_EAGER_CACHE_DIR"] = "off"
    os.environ["TORCH_MLIR_EAGER_COMPILE_WORKERS"] = "0"
    import torch
    import torch.nn.functional as F

    from torch_mlir_eager import TorchMLIRTensor

    x = TorchMLIRTensor(torch.randn(1, 64, 56, 56))
    w = TorchMLIRTensor(torch.randn(64, 64, 3, 3))
    torch.relu(x)
    torch.add(x, x * 2)
    F.conv2d(x, w, padding=1)
    F.max_pool2d(x, 3, 2, 1)
    modules = {}
    for path in glob.glob(os.path.join(dump, "*", "linalg.mlir")):
        op = os.path.basename(os.path.dirname(path)).rsplit("-", 1)[0]
        short = op.split(".")[1]
        if short in ("relu", "add", "convolution", "max_pool2d_with_indices"):
            with open(path) as f:
                modules[short] = (f.read(), op)
    return modules


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=os.path.join(HERE, "results", "compile_time.json"))
    args = p.parse_args()
    modules = lowered_modules()
    from torch_mlir_eager import iree_compile

    base = iree_compile.target_flags("local-task")
    names = list(FLAG_SETS)
    times = {(m, s): [] for m in modules for s in names}
    sizes = {}
    for r in range(args.rounds):
        for m, (text, op) in modules.items():
            order = names[r % len(names):] + names[:r % len(names)]
            for s in order:
                how, flag = FLAG_SETS[s]
                flags = [f for f in iree_compile.op_flags(base, op) if f != flag]
                if how == "keep":
                    flags.append(flag)
                t0 = time.perf_counter()
                vmfb = iree_compile.compile_to_vmfb(text, flags, mode="inprocess")
                times[(m, s)].append(time.perf_counter() - t0)
                sizes[(m, s)] = len(vmfb)
    rows, report = [], {"machine": bu.machine_description(), "rounds": args.rounds, "results": []}
    for m in modules:
        baseline = statistics.median(times[(m, names[0])])
        for s in names:
            xs = sorted(times[(m, s)])
            med = statistics.median(xs)
            q1, q3 = xs[len(xs) // 4], xs[(3 * len(xs)) // 4]
            rows.append((m, s, f"{med:.3f}", f"{q1:.3f}-{q3:.3f}", f"{med / baseline:.2f}x", sizes[(m, s)]))
            report["results"].append({"module": m, "flags": s, "median_s": med, "q1_s": q1, "q3_s": q3,
                                      "ratio": med / baseline, "vmfb_bytes": sizes[(m, s)], "samples_s": xs})
    widths = [max(len(str(r[i])) for r in rows + [("module", "flags", "median s", "middle half", "ratio", "vmfb")])
              for i in range(6)]
    header = ("module", "flags", "median s", "middle half", "ratio", "vmfb")
    for row in [header] + rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)))
    bu.write_json(args.out, report)


if __name__ == "__main__":
    main()
