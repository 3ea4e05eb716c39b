"""Compiler flag sets per op class, judged by interleaved A/B runs in one process.

    python benchmarks/kernel_flags.py [--rounds 30] [--resnet-rounds 15] [--out benchmarks/results/kernel_flags.json]

For each op class of ResNet18 and of a transformer block (3x3 convolutions at each stage, the 7x7
stem, 1x1 downsamples, the classifier matmul, attention-sized matmuls), the same op is compiled
with every flag set and the kernels are timed in turn, round after round (the order rotating), so
that the machine's noise (2x between runs here) falls on all of them alike. Median and the middle
half (25th-75th percentile) of the per-call times are reported, as a ratio to the baseline. Then
ResNet18 (eval, batch 1, 224) runs whole with each flag set, interleaved the same way.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import bench_util as bu  # noqa: E402

FLAG_SETS = {
    "baseline": [],
    "O3": ["--iree-opt-level=O3"],
    "data-tiling+ukernels": ["--iree-opt-data-tiling", "--iree-llvmcpu-enable-ukernels=all"],
    "im2col": ["--iree-global-opt-use-im2col-for-convs"],
    "im2col+data-tiling+ukernels": ["--iree-global-opt-use-im2col-for-convs", "--iree-opt-data-tiling",
                                    "--iree-llvmcpu-enable-ukernels=all"],
    "img2col-preprocessing": ["--iree-preprocessing-pass-pipeline="
                              "builtin.module(util.func(iree-preprocessing-convert-conv2d-to-img2col))"],
    "channels-last": ["--iree-preprocessing-pass-pipeline="
                      "builtin.module(util.func(iree-preprocessing-convert-conv-to-channels-last))"],
    # on top of the convolution flags now in effect (iree_compile.CPU_OP_CLASS_FLAGS): the data-tiled
    # matmul without ukernels, and the data-tiled matmul's distribution tile at other sizes
    "no-ukernels": ["--iree-llvmcpu-enable-ukernels=none"],
    "tile-bytes-16k": ["--iree-llvmcpu-matmul-tile-bytes=16384"],
    "tile-bytes-64k": ["--iree-llvmcpu-matmul-tile-bytes=65536"],
    "tile-bytes-256k": ["--iree-llvmcpu-matmul-tile-bytes=262144"],
    # batch-1 convolutions without the channels-last conversion now in effect for them
    "no-channels-last": ["--iree-preprocessing-pass-pipeline="],
    # the im2col'd matmul without data tiling: no relayout of the weights (9.4 MB for the 512-channel
    # 3x3) on every call, at the cost of the plain matmul's codegen
    "no-data-tiling": ["--iree-opt-data-tiling=false"],
    # 3x3 stride-1 convolutions as Winograd F(6x6, 3x3): input transform, batched matmul, output
    # transform (the other convolutions keep the flags above)
    "winograd": ["--iree-preprocessing-pass-pipeline="
                 "builtin.module(util.func(iree-linalg-ext-convert-conv2d-to-winograd{replace-all-convs=true}))"],
}

OPS = {
    "conv3x3 64ch 56x56": (lambda x, w: F.conv2d(x, w, padding=1), [(1, 64, 56, 56), (64, 64, 3, 3)]),
    "conv3x3 128ch 28x28": (lambda x, w: F.conv2d(x, w, padding=1), [(1, 128, 28, 28), (128, 128, 3, 3)]),
    "conv3x3 256ch 14x14": (lambda x, w: F.conv2d(x, w, padding=1), [(1, 256, 14, 14), (256, 256, 3, 3)]),
    "conv3x3 512ch 7x7": (lambda x, w: F.conv2d(x, w, padding=1), [(1, 512, 7, 7), (512, 512, 3, 3)]),
    "conv7x7 s2 stem 224": (lambda x, w: F.conv2d(x, w, stride=2, padding=3), [(1, 3, 224, 224), (64, 3, 7, 7)]),
    "conv1x1 s2 128->256": (lambda x, w: F.conv2d(x, w, stride=2), [(1, 128, 28, 28), (256, 128, 1, 1)]),
    "linear 512->1000": (lambda x, w: F.linear(x, w), [(1, 512), (1000, 512)]),
    "matmul 64x128x384": (lambda a, b: a @ b, [(64, 128), (128, 384)]),
    "bmm attention 4x64x32x64": (lambda a, b: a @ b, [(4, 64, 32), (4, 32, 64)]),
}


def _device_with(flags, name):
    """A hybrid device whose compile flags have `flags` appended (one per flag set)."""
    from torch_mlir_eager import device as devmod

    d = devmod.Device("hybrid")
    d.driver = name  # its own keys and kernels
    d.compile_flags = d.compile_flags + list(flags)
    devmod._devices[name] = d
    return d


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--resnet-rounds", type=int, default=15)
    p.add_argument("--sets", default=",".join(FLAG_SETS))
    p.add_argument("--ops", default="", help="comma-separated substrings of the op names to run (default: all)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "kernel_flags.json"))
    args = p.parse_args()

    import torch_mlir_eager as tme
    from torch_mlir_eager import TorchMLIRTensor
    from torch_mlir_eager.models import resnet18

    sets = [s for s in args.sets.split(",") if s]
    devices = {name: _device_with(FLAG_SETS[name], f"hybrid+{name}") for name in sets}
    report = {"machine": bu.machine_description(), "rounds": args.rounds, "ops": {}, "resnet18": {}}
    torch.manual_seed(0)
    ops = {n: v for n, v in OPS.items() if not args.ops or any(o in n for o in args.ops.split(","))}
    for op_name, (fn, shapes) in ops.items():
        inputs = [torch.randn(s) for s in shapes]
        want = fn(*inputs)
        calls, usable = {}, {}
        for name, d in devices.items():
            dev_inputs = [TorchMLIRTensor(x, device=d.driver) for x in inputs]
            tme.reset_stats()
            got = fn(*dev_inputs)
            s = tme.stats()
            ok = s["fallback_calls"] == 0 and torch.allclose(got._host(), want, atol=1e-3, rtol=1e-3)
            if s["fallback_calls"] == 0:
                err = ((got._host() - want).abs().max() / want.abs().max()).item()
                print(f"  {op_name} {name}: max error / max |value| = {err:.2e}", flush=True)
            usable[name] = ok if s["fallback_calls"] == 0 else f"fell back: {list(s['fallbacks'].values())[0]['reason'][:120]}"
            if ok:
                calls[name] = lambda fn=fn, dev_inputs=dev_inputs: fn(*dev_inputs)
        inner = 3 if "conv3x3 64ch" in op_name or "stem" in op_name else 10
        samples = bu.interleaved(calls, inner, args.rounds, warmup=2) if calls else {}
        base = statistics.median(samples["baseline"]) if "baseline" in samples else None
        rows = {}
        for name in sets:
            if name not in samples:
                rows[name] = {"usable": usable[name]}
                continue
            med = statistics.median(samples[name])
            rows[name] = {"median_us": med * 1e6, "iqr_us": [v * 1e6 for v in bu.spread(samples[name])],
                          "vs_baseline": med / base if base else None}
        report["ops"][op_name] = rows
        print(f"{op_name}:", ", ".join(
            f"{n} {r['median_us']:.0f}us ({r['vs_baseline']:.2f}x)" if "median_us" in r else f"{n}: {r['usable']}"
            for n, r in rows.items()), flush=True)

    model = resnet18().eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        want = model(x)
        forwards = {}
        for name, d in devices.items():
            m = tme.to_device(copy.deepcopy(model), d.driver).eval()
            dx = TorchMLIRTensor(x, device=d.driver)
            tme.reset_stats()
            got = m(dx)
            s = tme.stats()
            if s["fallback_calls"] == 0 and torch.allclose(got._host(), want, atol=1e-3, rtol=1e-3):
                forwards[name] = lambda m=m, dx=dx: m(dx)._host()
            else:
                report["resnet18"][name] = {"usable": False, "fallbacks": s["fallbacks"]}
        forwards["native"] = lambda: model(x)
        samples = bu.interleaved(forwards, 1, args.resnet_rounds, warmup=1)
    base = statistics.median(samples["baseline"]) if "baseline" in samples else None
    nat = statistics.median(samples["native"])
    for name, v in samples.items():
        med = statistics.median(v)
        report["resnet18"][name] = {"median_ms": med * 1e3, "iqr_ms": [t * 1e3 for t in bu.spread(v)],
                                    "vs_baseline": med / base if base else None, "vs_native": med / nat}
        print(f"ResNet18 {name}: {med * 1e3:.1f} ms ({med / base:.2f}x baseline, {med / nat:.2f}x native)", flush=True)
    if args.out:
        bu.write_json(args.out, report)


if __name__ == "__main__":
    main()
