"""Pre-packed convolution weights (torch_mlir_eager/prepack.py) on and off.

    python benchmarks/prepack.py [--conv-rounds 30] [--rounds 4] [--repeats 10] [--out ...]

Per convolution: each of ResNet18's convolution shapes at batch 1 and 8 (224) is built both ways in one
process (the kernels of both forms side by side), and the two kernels are called on the same
device buffers in turn, `--conv-rounds` alternations, with native PyTorch's convolution as a
third option; each kernel call includes what its runner does (the packed weight's lookup).

End to end: the switch ($TORCH_MLIR_EAGER_PREPACK) is read when a kernel is built, so the two settings run in
separate processes, taken in turn (on, off, off, on, ...). Each process times its eager forward
against native in the same process, interleaved, both after 0.3 s idle and back to back (as
`run.py`'s two ResNet18 rows), and reports the ratios; the table gives the median and spread of
the ratios over the processes of each setting.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import bench_util as bu  # noqa: E402


# ResNet18's convolutions at batch 1, 224: (name, count, in, out, size, kernel, stride, padding)
CONVS = [("stem 7x7 s2", 1, 3, 64, 224, 7, 2, 3), ("layer1 3x3", 4, 64, 64, 56, 3, 1, 1),
         ("layer2 3x3 s2", 1, 64, 128, 56, 3, 2, 1), ("layer2 3x3", 3, 128, 128, 28, 3, 1, 1),
         ("layer2 1x1 s2", 1, 64, 128, 56, 1, 2, 0), ("layer3 3x3 s2", 1, 128, 256, 28, 3, 2, 1),
         ("layer3 3x3", 3, 256, 256, 14, 3, 1, 1), ("layer3 1x1 s2", 1, 128, 256, 28, 1, 2, 0),
         ("layer4 3x3 s2", 1, 256, 512, 14, 3, 2, 1), ("layer4 3x3", 3, 512, 512, 7, 3, 1, 1),
         ("layer4 1x1 s2", 1, 256, 512, 14, 1, 2, 0)]


def conv_child(rounds: int, batches):
    """Both kernel forms of each convolution in this process, interleaved."""
    import torch
    import torch.nn.functional as F

    from torch_mlir_eager import TorchMLIRTensor, prepack
    from torch_mlir_eager.buffers import dense_buffer
    from torch_mlir_eager.kernel import Kernel
    from torch_mlir_eager.kernel_cache import CACHE

    torch.manual_seed(0)
    rows = []
    for batch, (name, count, cin, cout, size, k, stride, padding) in [(b, c) for b in batches for c in CONVS]:
        x, w = torch.randn(batch, cin, size, size), torch.randn(cout, cin, k, k)
        X, W = TorchMLIRTensor(x), TorchMLIRTensor(w)
        kernels = {}
        for setting in (True, False):
            prepack.ENABLED = setting  # read by the build (in this process: no compile workers)
            prepack.MIN_WEIGHT_ELEMENTS, prepack.MAX_IM2COL_ELEMENTS = 0, 1 << 62  # every one, for the table
            CACHE.clear()
            F.conv2d(X, W, stride=stride, padding=padding)
            kernels[setting] = next(e for e in CACHE._entries.values()
                                    if isinstance(e, Kernel) and e.name == "aten.convolution.default")
        packed, usual = kernels[True], kernels[False]
        assert packed.packed_input is not None and usual.packed_input is None
        options = {"prepacked": lambda k=packed: k(prepack.input_buffers(k, [X, W])),
                   "usual": lambda k=usual: k([dense_buffer(X), dense_buffer(W)]),
                   "native": lambda: F.conv2d(x, w, stride=stride, padding=padding)}
        s = bu.interleaved(options, 3, rounds, warmup=3, settle=0.05, lead=1)
        med = {n: bu.median(v) * 1e3 for n, v in s.items()}
        iqr = {n: [v * 1e3 for v in bu.spread(s[n])] for n in s}
        rows.append({"batch": batch, "conv": name, "count": count, "weight_elements": w.numel(), "ms": med, "iqr_ms": iqr,
                     "prepacked_over_usual": med["prepacked"] / med["usual"]})
        print(f"  b{batch} {name:14s} x{count}  weight {w.numel():>8d}  prepacked {med['prepacked']:.3f} ms  usual "
              f"{med['usual']:.3f} ms  ({med['prepacked'] / med['usual']:.2f}x)  native {med['native']:.3f} ms",
              flush=True)
    print("RESULT " + json.dumps(rows), flush=True)


def child(repeats: int):
    import torch

    import torch_mlir_eager as tme
    from torch_mlir_eager import TorchMLIRTensor
    from torch_mlir_eager.models import resnet18

    torch.manual_seed(0)
    model = resnet18().eval()
    dev_model = tme.to_device(copy.deepcopy(model)).eval()
    out = {}
    for batch in (1, 8):
        x = torch.randn(batch, 3, 224, 224)
        xd = TorchMLIRTensor(x)
        options = {"native": lambda x=x: model(x), "eager": lambda xd=xd: dev_model(xd).cpu()}
        with torch.no_grad():
            tme.reset_stats()
            diff = (dev_model(xd).cpu() - model(x)).abs().max().item()
            st = tme.stats()
            reps = repeats if batch == 1 else max(3, repeats // 2)
            idle = bu.interleaved(options, 1, reps, warmup=1, settle=0.3)
            steady = bu.interleaved(options, 3 if batch == 1 else 1, reps, warmup=0, settle=0.3, lead=1)
        out[f"b{batch}"] = r = {"max_abs_diff": diff, "fallback_calls": st["fallback_calls"],
                                "compiled_calls": st["compiled_calls"], "weights_packed_first_forward": st["weights_packed"]}
        for label, s in (("after_idle", idle), ("steady", steady)):
            nat, eag = bu.median(s["native"]), bu.median(s["eager"])
            r[label] = {"native_ms": nat * 1e3, "eager_ms": eag * 1e3, "ratio": eag / nat}
    print("RESULT " + json.dumps(out), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", default=os.path.join(HERE, "results", "prepack.json"))
    p.add_argument("--conv-rounds", type=int, default=30)
    p.add_argument("--conv-batches", default="1,8")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--conv-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.repeats)
    if args.conv_child:
        return conv_child(args.conv_rounds, [int(b) for b in args.conv_batches.split(",")])
    print("per convolution, both kernels in one process, interleaved:")
    env = dict(os.environ, TORCH_MLIR_EAGER_COMPILE_WORKERS="0", TORCH_MLIR_EAGER_CACHE_DIR="off")
    proc = subprocess.run([sys.executable, __file__, "--conv-child", "--conv-rounds", str(args.conv_rounds),
                           "--conv-batches", args.conv_batches],
                          env=env, capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit("the per-convolution process failed")
    print("\n".join(ln for ln in proc.stdout.splitlines() if not ln.startswith("RESULT ")))
    convs = json.loads(line[len("RESULT "):])
    print("end to end, ResNet18 batch 1 and 8, processes in turn:")
    runs = {"on": [], "off": []}
    order = []
    for r in range(args.rounds):
        order += ["on", "off"] if r % 2 == 0 else ["off", "on"]
    for setting in order:
        env = dict(os.environ, TORCH_MLIR_EAGER_PREPACK="1" if setting == "on" else "0")
        proc = subprocess.run([sys.executable, __file__, "--child", "--repeats", str(args.repeats)],
                              env=env, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"the {setting} process failed")
        result = json.loads(line[len("RESULT "):])
        runs[setting].append(result)
        for b in ("b1", "b8"):
            r = result[b]
            print(f"  {setting:3s} {b}: after idle {r['after_idle']['eager_ms']:.1f} ms "
                  f"({r['after_idle']['ratio']:.2f}x native {r['after_idle']['native_ms']:.1f}), "
                  f"steady {r['steady']['eager_ms']:.1f} ms ({r['steady']['ratio']:.2f}x), "
                  f"diff {r['max_abs_diff']:.2g}, {r['weights_packed_first_forward']} weights packed", flush=True)
    print()
    print("| setting | batch | after idle: eager ms | ratio to native | steady: eager ms | ratio to native |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for setting, rs in runs.items():
        for b in ("b1", "b8"):
            if not rs:
                continue
            cells = {}
            for label in ("after_idle", "steady"):
                ratios = [r[b][label]["ratio"] for r in rs]
                ms = [r[b][label]["eager_ms"] for r in rs]
                cells[label] = {"eager_ms_median": bu.median(ms), "ratio_median": bu.median(ratios),
                                "ratio_min": min(ratios), "ratio_max": max(ratios)}
            summary[f"{setting} {b}"] = cells
            a, t = cells["after_idle"], cells["steady"]
            print(f"| {setting} | {b} | {a['eager_ms_median']:.1f} | {a['ratio_median']:.2f}x "
                  f"({a['ratio_min']:.2f}-{a['ratio_max']:.2f}) | {t['eager_ms_median']:.1f} | "
                  f"{t['ratio_median']:.2f}x ({t['ratio_min']:.2f}-{t['ratio_max']:.2f}) |")
    bu.write_json(args.out, {"machine": bu.machine_description(), "rounds": args.rounds, "repeats": args.repeats,
                             "convs": convs, "summary": summary, "runs": runs})


if __name__ == "__main__":
    main()
