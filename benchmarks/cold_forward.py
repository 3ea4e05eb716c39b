"""First ResNet18 forward in a fresh process, with the persistent kernel cache off.

Run by run.py in a subprocess with TORCH_MLIR_EAGER_CACHE_DIR=off; prints one JSON line.
Baseline: the first native forward in the same process (itself cold: allocator, oneDNN).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

T_START = time.perf_counter()

import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--device", default=None)
    args = p.parse_args()

    import torch_mlir_eager as tme
    from torch_mlir_eager import TorchMLIRTensor
    from torch_mlir_eager.models import resnet18

    t_import = time.perf_counter() - T_START
    device = args.device or tme.default_device()
    torch.manual_seed(0)
    model = resnet18().eval()
    x = torch.randn(args.batch, 3, args.size, args.size)

    with torch.no_grad():
        t0 = time.perf_counter()
        ref = model(x)
        t_native = time.perf_counter() - t0

    dev_model = tme.to_device(copy.deepcopy(model), device).eval()
    xd = TorchMLIRTensor(x, device=device)
    tme.reset_stats()
    with torch.no_grad():
        t0 = time.perf_counter()
        out = dev_model(xd)
        stats = dict(tme.stats())  # the forward alone, before the copy back to the host
        out = out.cpu()
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        dev_model(xd).cpu()
        t_second = time.perf_counter() - t0

    print(json.dumps({
        "device": device,
        "import_s": t_import,
        "native_first_s": t_native,
        "eager_first_s": t_first,
        "eager_second_s": t_second,
        "max_abs_diff": (out - ref).abs().max().item(),
        "kernels_compiled": stats.get("kernels_compiled"),
        "compile_seconds": stats.get("compile_seconds"),
        "compile_failures": stats.get("compile_failures"),
        "fallback_calls": stats.get("fallback_calls"),
        "cache_dir_env": os.environ.get("TORCH_MLIR_EAGER_CACHE_DIR"),
    }))


if __name__ == "__main__":
    main()
