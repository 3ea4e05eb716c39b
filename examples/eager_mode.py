"""The basics of torch_mlir_eager: every op below runs as an IREE kernel compiled through
torch-mlir, and its value is printed next to native PyTorch's.

    python examples/eager_mode.py [--device local-sync]
"""

import argparse

import torch

import torch_mlir_eager
from torch_mlir_eager import TorchMLIRTensor


def show(name, got, want):
    got_host = got.detach().cpu()
    err = (got_host.double() - want.detach().double()).abs().max().item()
    print(f"{name:<22} max |eager - native| = {err:.2e}")
    print(f"  eager : {got_host.flatten()[:6].tolist()}")
    print(f"  native: {want.detach().flatten()[:6].tolist()}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=torch_mlir_eager.default_device(), help="IREE driver")
    args = parser.parse_args()
    torch.manual_seed(0)
    a, b, w = torch.randn(2, 3), torch.randn(2, 3), torch.randn(3, 4)
    da, db, dw = (TorchMLIRTensor(t, device=args.device) for t in (a, b, w))
    torch_mlir_eager.reset_stats()

    show("add", da + db, a + b)
    show("mul by a scalar", da * 2.5, a * 2.5)
    show("matmul", da @ dw, a @ w)

    ca, cda = a.clone(), TorchMLIRTensor(a, device=args.device)
    view = cda.t()  # a view: new metadata over the same device storage, no kernel
    cda.relu_()  # in place: the view sees the new values
    ca.relu_()
    show("relu_ seen via a view", view, ca.t())

    x = TorchMLIRTensor(a, device=args.device).requires_grad_()
    loss = (x @ dw).tanh().sum()
    loss.backward()
    xr = a.clone().requires_grad_()
    (xr @ w).tanh().sum().backward()
    show("backward: x.grad", x.grad, xr.grad)

    s = torch_mlir_eager.stats()
    print(f"\ndevice: {args.device}")
    transfers = sum(fb["count"] for fb in s["fallbacks"].values() if fb["step"] == "transfer")
    print(f"calls: {s['compiled_calls']} compiled, {s['metadata_calls']} metadata, "
          f"{s['fallback_calls']} fallback ({transfers} of them copies to the host for printing)")
    print(f"kernels: {s['kernels_compiled']} compiled in {s['compile_seconds']:.1f}s "
          f"({s['disk_cache_hits']} from the disk cache), {s['cache_hits']} cache hits")
    for op, fb in sorted(s["fallbacks"].items()):
        print(f"  fallback {op}: {fb['count']}x ({fb['step']}: {fb['reason']})")


if __name__ == "__main__":
    main()
