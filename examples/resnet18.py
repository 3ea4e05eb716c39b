#!/usr/bin/env python
"""ResNet18 run eagerly on an IREE device, every aten op compiled by torch-mlir + IREE.

Examples:
    python examples/resnet18.py                      # seeded random weights and input
    python examples/resnet18.py --image cat.jpg --weights resnet18_torchvision.pt
    python examples/resnet18.py --batch 4 --device local-sync
    python examples/resnet18.py --train              # one SGD step, compared with native

The same model runs natively in PyTorch on the same input; the script prints both top-5
predictions, the largest difference of the logits and what the backend compiled, served from
metadata or handed back to PyTorch (and why). The exit code is 0 when the results agree
(eval: 1e-4 absolute on the logits; train: 1e-3 relative on the loss and updated weights).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import torch
import torch.nn.functional as F

try:
    import torch_mlir_eager as tme
    from torch_mlir_eager import TorchMLIRTensor
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import torch_mlir_eager as tme
    from torch_mlir_eager import TorchMLIRTensor

from torch_mlir_eager.models import preprocess, resnet18

EVAL_ATOL = 1e-4
TRAIN_RTOL = 1e-3


# ----------------------------------------------------------------------------- progress


class CompileProgress:
    """Per-kernel compile progress on stderr: one line, updated in place on a terminal."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = stream.isatty()
        self.compiled = 0
        self.loaded = 0
        self.failed = 0
        self.seconds = 0.0
        self._width = 0

    def __call__(self, event, op_name, seconds):
        if event == "done":
            self.compiled += 1
            self.seconds += seconds or 0.0
            detail = f"{op_name} {seconds or 0.0:.2f}s"
        elif event == "loaded":
            self.loaded += 1
            detail = f"{op_name} from the disk cache"
        elif event == "failed":
            self.failed += 1
            detail = f"{op_name} failed"
        else:  # "start"
            detail = f"{op_name} ..."
        if self.tty:
            self._write(detail)

    def _line(self, detail):
        line = f"compiling kernels: {self.compiled}"
        if self.loaded:
            line += f", {self.loaded} loaded from the disk cache"
        if self.failed:
            line += f", {self.failed} failed"
        return f"{line} ({detail})" if detail else line

    def _write(self, detail):
        line = self._line(detail)
        pad = max(0, self._width - len(line))
        self._width = len(line)
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()

    def __enter__(self):
        tme.set_compile_listener(self)
        return self

    def __exit__(self, *exc):
        tme.set_compile_listener(None)
        if self.compiled or self.failed:
            summary = f"{self.seconds:.2f}s compiling"
            if self.tty:
                self._write(summary)
                self.stream.write("\n")
            else:
                self.stream.write(self._line(summary) + "\n")
            self.stream.flush()
        return False


# ----------------------------------------------------------------------------- helpers


def host(t):
    t = t.detach()
    return t.cpu() if isinstance(t, TorchMLIRTensor) else t


def print_stats(stats, title="backend statistics"):
    print(f"\n{title}:")
    print(
        f"  aten calls: {stats.get('compiled_calls', 0)} compiled, "
        f"{stats.get('metadata_calls', 0)} metadata only, "
        f"{stats.get('fallback_calls', 0)} fell back to PyTorch"
    )
    disk = stats.get("disk_cache_hits")
    from_disk = f", {disk} loaded from the disk cache" if disk else ""
    print(
        f"  kernels: {stats.get('kernels_compiled', 0)} compiled{from_disk} "
        f"({stats.get('compile_seconds', 0.0):.2f}s building), "
        f"{stats.get('compile_failures', 0)} compile failures; in-memory cache "
        f"{stats.get('cache_hits', 0)} hits / {stats.get('cache_misses', 0)} misses"
    )
    fallbacks = stats.get("fallbacks") or {}
    if fallbacks:
        print("  ops that fell back to PyTorch:")
        for op, info in sorted(fallbacks.items(), key=lambda kv: -kv[1].get("count", 0)):
            step = info.get("step")
            where = f" [{step}]" if step else ""
            reason = " ".join(str(info.get("reason", "")).split())
            if len(reason) > 300:
                reason = reason[:297] + "..."
            print(f"    {op} x{info.get('count', 0)}{where}: {reason}")
    else:
        print("  no op fell back to PyTorch")


def top5_table(eager_logits, native_logits, max_items=4):
    pe, pn = eager_logits.softmax(-1), native_logits.softmax(-1)
    for i in range(min(pe.shape[0], max_items)):
        ve, ie = pe[i].topk(5)
        vn, in_ = pn[i].topk(5)
        if pe.shape[0] > 1:
            print(f"\nsample {i}:")
        print(f"  {'rank':>4}  {'IREE class':>10} {'prob':>9}   {'native class':>12} {'prob':>9}")
        for r in range(5):
            print(
                f"  {r + 1:>4}  {ie[r].item():>10d} {ve[r].item():>9.5f}   "
                f"{in_[r].item():>12d} {vn[r].item():>9.5f}"
            )
    if pe.shape[0] > max_items:
        print(f"\n({pe.shape[0] - max_items} more samples not shown)")


def build_model(args):
    torch.manual_seed(args.seed)
    if args.weights:
        state = torch.load(args.weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        num_classes = state["fc.weight"].shape[0]
        model = resnet18(num_classes=num_classes)
        model.load_state_dict(state)
        print(f"weights: {args.weights} ({num_classes} classes)")
    else:
        model = resnet18()
        print(f"weights: random (torchvision initialisation, seed {args.seed})")
    return model


def make_input(args, gen):
    if args.image:
        x = preprocess(args.image).unsqueeze(0)
        if args.batch > 1:
            x = x.expand(args.batch, -1, -1, -1).contiguous()
        print(f"input: {args.image} -> {tuple(x.shape)}")
    else:
        x = torch.randn(args.batch, 3, args.size, args.size, generator=gen)
        print(f"input: random {tuple(x.shape)} (seed {args.seed})")
    return x


# ----------------------------------------------------------------------------- modes


def run_eval(args, model, device):
    gen = torch.Generator().manual_seed(args.seed)
    x = make_input(args, gen)
    model.eval()

    t0 = time.perf_counter()
    with torch.no_grad():
        native = model(x)
    t_native = time.perf_counter() - t0

    dev_model = tme.to_device(copy.deepcopy(model), device).eval()
    with torch.no_grad(), CompileProgress():
        # every kernel of the forward, built in parallel on the compile workers (or loaded)
        t0 = time.perf_counter()
        summary = tme.precompile(dev_model, x, progress=False)
        t_precompile = time.perf_counter() - t0
    print(f"precompile: {summary['kernels']} kernels ({summary['compiled']} compiled, {summary['loaded']} "
          f"from the disk cache) in {t_precompile:.2f} s")
    tme.reset_stats()
    with torch.no_grad(), CompileProgress():
        t0 = time.perf_counter()
        eager = dev_model(TorchMLIRTensor(x, device=device))
        stats = tme.stats()  # the forward alone, before the copy back to the host
        eager = host(eager)
        t_first = time.perf_counter() - t0

    with torch.no_grad():
        t0 = time.perf_counter()
        eager2 = host(dev_model(TorchMLIRTensor(x, device=device)))
        t_warm = time.perf_counter() - t0

    print(f"\ntop-5 predictions (class index, probability), IREE {device} vs native PyTorch:")
    top5_table(eager, native)

    diff = (eager - native).abs().max().item()
    diff2 = (eager2 - native).abs().max().item()
    print(f"\nmax |logits(IREE) - logits(native)| = {diff:.3g} (second run: {diff2:.3g})")
    print(
        f"time: native {t_native * 1e3:.1f} ms; IREE precompile {t_precompile:.2f} s, first run "
        f"{t_first * 1e3:.1f} ms, second run {t_warm * 1e3:.1f} ms"
    )
    print_stats(stats, "backend statistics (first forward)")

    ok = diff <= EVAL_ATOL and diff2 <= EVAL_ATOL
    verdict = "PASS" if ok else "FAIL"
    print(
        f"\n{verdict}: logits {'agree with' if ok else 'differ from'} native PyTorch "
        f"(max abs diff {max(diff, diff2):.3g}, tolerance {EVAL_ATOL:g})"
    )
    return 0 if ok else 1


def max_rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def relu_sign_flips(model, x, device):
    """ReLU inputs whose sign differs between the native and the IREE forward (train mode).

    ReLU's derivative jumps at 0, so an input within float32 rounding of 0 can legitimately
    take the other branch and change the gradients by far more than the rounding itself.
    """

    def record(m, store):
        for name, mod in m.named_modules():
            if isinstance(mod, torch.nn.ReLU):
                mod.register_forward_pre_hook(
                    lambda mod, inp, name=name: store.append((name, host(inp[0]).clone()))
                )

    native, dev = [], []
    ref = copy.deepcopy(model)
    record(ref, native)
    dm = tme.to_device(copy.deepcopy(model), device)
    record(dm, dev)
    with torch.no_grad():
        ref(x)
        dm(TorchMLIRTensor(x, device=device))
    flips = [(n, int(((a > 0) != (b > 0)).sum())) for (n, a), (_, b) in zip(native, dev)]
    return [f for f in flips if f[1]]


def run_train(args, model, device):
    gen = torch.Generator().manual_seed(args.seed)
    x = make_input(args, gen)
    num_classes = model.fc.out_features
    y = torch.randint(0, num_classes, (x.shape[0],), generator=gen)
    model.train()

    def step(m, inp, target):
        opt = torch.optim.SGD(m.parameters(), lr=args.lr)
        opt.zero_grad()
        loss = F.cross_entropy(m(inp), target)
        loss.backward()
        grads = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
        opt.step()
        return loss, grads

    ref_model = copy.deepcopy(model)
    t0 = time.perf_counter()
    ref_loss, ref_grads = step(ref_model, x, y)
    t_native = time.perf_counter() - t0
    ref_loss, ref_grads = host(ref_loss), {n: host(g) for n, g in ref_grads.items()}

    dev_model = tme.to_device(copy.deepcopy(model), device)
    tme.reset_stats()
    with CompileProgress():
        t0 = time.perf_counter()
        loss, grads = step(
            dev_model, TorchMLIRTensor(x, device=device), TorchMLIRTensor(y, device=device)
        )
        stats = tme.stats()  # before any copy back to the host
        loss, grads = host(loss), {n: host(g) for n, g in grads.items()}
        t_first = time.perf_counter() - t0
    tme.to_host(dev_model)

    ref_params = dict(ref_model.named_parameters())
    params = dict(dev_model.named_parameters())
    ref_bufs = dict(ref_model.named_buffers())
    bufs = dict(dev_model.named_buffers())

    loss_rel = max_rel(loss, ref_loss)
    p_rel, p_name = max((max_rel(host(params[n]), ref_params[n].detach()), n) for n in ref_params)
    missing = sorted(set(ref_grads) - set(grads))
    g_rel, g_name = max(
        (max_rel(grads[n], ref_grads[n]), n) for n in ref_grads if n in grads
    )
    b_rel, b_name = max((max_rel(host(bufs[n]), ref_bufs[n]), n) for n in ref_bufs)

    print(f"\none SGD step (lr {args.lr}), batch {x.shape[0]}, labels seeded random:")
    print(f"  loss: IREE {loss.item():.6f}, native {ref_loss.item():.6f} (rel diff {loss_rel:.3g})")
    print(f"  updated weights: max rel diff {p_rel:.3g} ({p_name})")
    print(f"  gradients:       max rel diff {g_rel:.3g} ({g_name})")
    if missing:
        print(f"  gradients missing on the IREE side: {', '.join(missing)}")
    print(f"  BatchNorm running statistics: max rel diff {b_rel:.3g} ({b_name})")
    print(f"time: native {t_native * 1e3:.1f} ms; IREE {t_first:.2f} s (includes compiling)")
    print_stats(stats, "backend statistics (forward + backward + optimizer step)")

    ok = loss_rel <= TRAIN_RTOL and p_rel <= TRAIN_RTOL and not missing
    if not ok:
        flips = relu_sign_flips(model, x, device)
        if flips:
            where = ", ".join(f"{n} ({c})" for n, c in flips)
            print(
                f"\nnote: ReLU inputs changed sign between native and IREE in {where}: values "
                f"within float32 rounding of 0 took the other branch of ReLU's derivative, which "
                f"changes the gradients legitimately. Try another --seed."
            )
    verdict = "PASS" if ok else "FAIL"
    print(
        f"\n{verdict}: training step {'agrees with' if ok else 'differs from'} native PyTorch "
        f"(loss rel {loss_rel:.3g}, weights rel {p_rel:.3g}, tolerance {TRAIN_RTOL:g})"
    )
    return 0 if ok else 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", help="state dict saved with torch.save (e.g. torchvision's)")
    p.add_argument("--image", help="image file (needs Pillow); default: a seeded random batch")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, input and labels")
    p.add_argument("--batch", type=int, default=None, help="batch size (eval 1, train 2)")
    p.add_argument("--size", type=int, default=None, help="input height/width (eval 224, train 64)")
    p.add_argument("--device", default=None,
                   help=f"IREE driver: hybrid, local-task or local-sync (default: {tme.default_device()})")
    p.add_argument("--train", action="store_true", help="run one SGD training step instead")
    p.add_argument("--lr", type=float, default=0.1, help="learning rate for --train")
    args = p.parse_args(argv)

    if args.batch is None:
        args.batch = 2 if args.train else 1
    if args.size is None:
        args.size = 64 if args.train else 224
    device = args.device or tme.default_device()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; IREE device: {device}")

    model = build_model(args)
    return run_train(args, model, device) if args.train else run_eval(args, model, device)


if __name__ == "__main__":
    sys.exit(main())
