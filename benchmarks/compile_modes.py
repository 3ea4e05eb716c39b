"""Measure the ways of running the IREE compiler on one-op linalg modules.

Modes:
  inprocess   torch_mlir_eager.iree_compile, libIREECompiler via iree.compiler.api
  subprocess  torch_mlir_eager.iree_compile, one `iree-compile` process per module
  compile_str iree.compiler.compile_str (also a subprocess; reference point)

For each mode: sequential compile time per module (median/min over --reps), then the wall
time of compiling the same batch on --threads threads at once (a ThreadPoolExecutor, as
the core uses), and the resident-memory growth of the process over the in-process runs.
Prints a table and writes benchmarks/results/compile_modes.json.

    python benchmarks/compile_modes.py [--reps 3] [--threads 2] [--driver local-sync]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.fx.experimental.proxy_tensor import make_fx

RESULTS = Path(__file__).resolve().parent / "results" / "compile_modes.json"


def linalg_text(fn, *args) -> str:
    import torch_mlir.fx as tfx

    gm = make_fx(fn)(*args)
    return str(tfx.stateless_fx_import(gm, output_type="linalg-on-tensors"))


def modules() -> dict[str, str]:
    r = torch.randn
    return {
        "add_8": linalg_text(lambda a, b: torch.ops.aten.add.Tensor(a, b), r(8), r(8)),
        "relu_64x56x56": linalg_text(lambda a: torch.ops.aten.relu(a), r(1, 64, 56, 56)),
        "mm_128x256x64": linalg_text(lambda a, b: torch.ops.aten.mm(a, b), r(128, 256), r(256, 64)),
        "conv_64x56x56_3x3": linalg_text(
            lambda x, w: torch.ops.aten.convolution(
                x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1
            ),
            r(1, 64, 56, 56),
            r(64, 64, 3, 3),
        ),
    }


def cpu_s() -> float:
    """CPU seconds of this process (all threads) plus its reaped children: less
    sensitive than wall time to other load on a shared machine."""
    a = resource.getrusage(resource.RUSAGE_SELF)
    b = resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def make_compilers(flags):
    from torch_mlir_eager.iree_compile import compile_to_vmfb

    def compile_str(text):
        import iree.compiler as ic

        # compile_str builds its own command line: pass the flags as extra_args and no
        # target_backends (the flags name the target device).
        return ic.compile_str(text, target_backends=[], extra_args=list(flags))

    return {
        "inprocess": lambda text: compile_to_vmfb(text, flags, mode="inprocess"),
        "subprocess": lambda text: compile_to_vmfb(text, flags, mode="subprocess"),
        "compile_str": compile_str,
    }


def check_add(vmfb: bytes, driver: str) -> None:
    import iree.runtime as rt

    drv = "local-sync" if driver.startswith("local") else driver
    m = rt.load_vm_flatbuffer(vmfb, driver=drv)
    a = np.arange(8, dtype=np.float32)
    b = np.full(8, 0.5, dtype=np.float32)
    np.testing.assert_allclose(m.main(a, b).to_host(), a + b)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--driver", default="local-sync")
    ap.add_argument("--modes", default="inprocess,subprocess,compile_str")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)

    from torch_mlir_eager.iree_compile import ASYNC_FLAGS, target_flags

    # the module is called through IREE's plain Python API, which passes no fences: without the
    # backend's asynchronous calling convention
    flags = [f for f in target_flags(args.driver) if f not in ASYNC_FLAGS]
    mods = modules()
    compilers = make_compilers(flags)
    modes = [m for m in args.modes.split(",") if m]

    # Warm up each mode once (library load, first-use initialisation) and check output.
    warm = {}
    for mode in modes:
        t0 = time.perf_counter()
        vmfb = compilers[mode](mods["add_8"])
        warm[mode] = time.perf_counter() - t0
        check_add(vmfb, args.driver)

    # Sequential: interleave modes per repetition so machine drift hits all alike.
    seq: dict[str, dict[str, list[float]]] = {m: {k: [] for k in mods} for m in modes}
    seq_cpu: dict[str, dict[str, list[float]]] = {m: {k: [] for k in mods} for m in modes}
    load_start = loadavg()
    rss_before = rss_mb()
    for _ in range(args.reps):
        for name, text in mods.items():
            for mode in modes:
                c0 = cpu_s()
                t0 = time.perf_counter()
                compilers[mode](text)
                seq[mode][name].append(time.perf_counter() - t0)
                seq_cpu[mode][name].append(cpu_s() - c0)
    rss_after_seq = rss_mb()

    # Parallel: the same batch (every module, reps times) on N threads.
    batch = [text for _ in range(args.reps) for text in mods.values()]
    par = {}
    for mode in modes:
        fn = compilers[mode]
        c0 = cpu_s()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.threads) as ex:
            outs = list(ex.map(fn, batch))
        wall = time.perf_counter() - t0
        cpu = cpu_s() - c0
        assert all(isinstance(o, (bytes, bytearray)) and len(o) > 0 for o in outs)
        seq_sum = sum(sum(v) for v in seq[mode].values())
        par[mode] = {
            "compiles": len(batch),
            "wall_s": wall,
            "per_compile_s": wall / len(batch),
            "sequential_sum_s": seq_sum,
            "speedup_vs_sequential": seq_sum / wall,
            "cpu_s": cpu,
            "cpu_per_compile_s": cpu / len(batch),
        }
    rss_after_par = rss_mb()

    # Table.
    print(f"driver={args.driver} cpus={os.cpu_count()} reps={args.reps} threads={args.threads}")
    print("flags:", " ".join(flags))
    print()
    print("first compile in process (warm-up, s): " + ", ".join(f"{m}={warm[m]:.3f}" for m in modes))
    print()
    hdr = f"{'module':<20}" + "".join(f"{m + ' med':>16}{m + ' min':>16}" for m in modes)
    print("sequential, seconds per compile")
    print(hdr)
    for name in mods:
        row = f"{name:<20}"
        for mode in modes:
            v = seq[mode][name]
            row += f"{statistics.median(v):>16.3f}{min(v):>16.3f}"
        print(row)
    tot = f"{'sum of medians':<20}"
    for mode in modes:
        tot += f"{sum(statistics.median(v) for v in seq[mode].values()):>16.3f}{'':>16}"
    print(tot)
    cpu_row = f"{'CPU s/compile (med)':<20}"
    for mode in modes:
        allc = [x for v in seq_cpu[mode].values() for x in v]
        cpu_row += f"{statistics.median(allc):>16.3f}{'':>16}"
    print(cpu_row)
    print()
    print(f"parallel, {args.threads} threads, {len(batch)} compiles")
    print(f"{'mode':<14}{'wall s':>10}{'s/compile':>12}{'seq sum s':>12}{'speedup':>10}{'CPU s/compile':>15}")
    for mode in modes:
        p = par[mode]
        print(
            f"{mode:<14}{p['wall_s']:>10.2f}{p['per_compile_s']:>12.3f}"
            f"{p['sequential_sum_s']:>12.2f}{p['speedup_vs_sequential']:>10.2f}"
            f"{p['cpu_per_compile_s']:>15.3f}"
        )
    print()
    load_end = loadavg()
    print(f"load average (1 min) at start {load_start:.2f}, at end {load_end:.2f} "
          f"(over {os.cpu_count()} CPUs: other load skews wall times)")
    print(
        f"RSS MB: before sequential {rss_before:.0f}, after sequential {rss_after_seq:.0f}, "
        f"after parallel {rss_after_par:.0f}"
    )

    result = {
        "driver": args.driver,
        "flags": flags,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "reps": args.reps,
        "threads": args.threads,
        "warmup_s": warm,
        "sequential_s": seq,
        "sequential_median_s": {
            m: {k: statistics.median(v) for k, v in seq[m].items()} for m in modes
        },
        "sequential_cpu_s": seq_cpu,
        "parallel": par,
        "loadavg": {"start": load_start, "end": load_end},
        "rss_mb": {
            "before_sequential": rss_before,
            "after_sequential": rss_after_seq,
            "after_parallel": rss_after_par,
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
