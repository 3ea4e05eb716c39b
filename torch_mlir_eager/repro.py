"""Diagnostics: TORCH_MLIR_EAGER_DUMP_DIR=DIR writes, for each new key, a folder with

    graph.txt      the one-op FX graph (after functionalization and decompositions)
    torch.mlir     the torch-dialect module as imported (refined types)
    linalg.mlir    the module lowered by torch-mlir, as given to IREE
    compile.log    the compiler's verdict and flags, or error.txt with the failing step and error
    repro.py       a standalone script that rebuilds the op from its recorded metadata and runs it
                   through torch-mlir and IREE, comparing with native PyTorch

`repro.py` is what a compiler engineer attaches to a bug report.
"""

from __future__ import annotations

import hashlib
import os
import re

import torch

from .recipe import Slot, fill

_TEMPLATE = '''\
"""Reproducer for {name}, written by torch_mlir_eager.

Rebuilds the op from its recorded argument metadata with random inputs, compiles it with
torch-mlir + IREE through torch_mlir_eager (printing the failing step and error, if any), runs it,
and compares with native PyTorch. Needs: torch, torch-mlir, iree-base-compiler/runtime,
torch_mlir_eager. Run: python repro.py
"""
import torch
import torch_mlir_eager
from torch_mlir_eager import TorchMLIRTensor

torch.manual_seed(0)
DEVICE = {driver!r}
op = {op_expr}


def make(shape, stride, dtype):
    if dtype == torch.bool:
        base = torch.rand(shape) > 0.5
    elif dtype.is_floating_point:
        base = torch.randn(shape, dtype=torch.float32).to(dtype)
    else:
        base = torch.randint(-5, 6, shape, dtype=dtype)
    out = torch.empty_strided(shape, stride, dtype=dtype)
    out.copy_(base)
    return out


inputs = [
{inputs}
]
args, kwargs = {template}


def fill(x, values):
    if isinstance(x, Slot):
        return values[x.i]
    if isinstance(x, (list, tuple)):
        return type(x)(fill(v, values) for v in x)
    if isinstance(x, dict):
        return {{k: fill(v, values) for k, v in x.items()}}
    return x


class Slot:
    def __init__(self, i):
        self.i = i


args, kwargs = eval({template_src!r}, {{"Slot": Slot, "torch": torch, "inf": float("inf"), "nan": float("nan")}})
native = op(*fill(args, [t.clone() for t in inputs]), **fill(kwargs, [t.clone() for t in inputs]))
torch_mlir_eager.reset_stats()
device_inputs = [TorchMLIRTensor(t, device=DEVICE) for t in inputs]
result = op(*fill(args, device_inputs), **fill(kwargs, device_inputs))
stats = torch_mlir_eager.stats()
print("calls: compiled", stats["compiled_calls"], "metadata", stats["metadata_calls"],
      "fallback", stats["fallback_calls"])
for name, fb in stats["fallbacks"].items():
    print(f"FALLBACK {{name}} at step {{fb['step']}}: {{fb['reason']}}")


def leaves(x):
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in leaves(v)]
    return []


for got, want in zip(leaves(result), leaves(native)):
    got = got.cpu()
    err = (got.double() - want.double()).abs().max().item() if want.numel() else 0.0
    print("output", tuple(want.shape), want.dtype, "max abs error", err)
'''


def _op_expr(func) -> str:
    if isinstance(func, torch._ops.OpOverload):
        ns, rest = str(func).split(".", 1)
        packet, overload = rest.rsplit(".", 1)
        return f"torch.ops.{ns}.{packet}.{overload}"
    return "None  # a layout kernel (gather/scatter), not an aten op"


def _template_src(template) -> str:
    def render(x):
        if isinstance(x, Slot):
            return f"Slot({x.index})"
        if isinstance(x, list):
            return "[" + ", ".join(render(v) for v in x) + "]"
        if isinstance(x, tuple):
            return "(" + "".join(render(v) + ", " for v in x) + ")"
        if isinstance(x, dict):
            return "{" + ", ".join(f"{k!r}: {render(v)}" for k, v in x.items()) + "}"
        if isinstance(x, (torch.dtype, torch.memory_format, torch.layout)):
            return str(x)
        if isinstance(x, torch.device):
            return f"torch.device({str(x)!r})"
        return repr(x)

    return render(template)


def dump_dir_for(root: str, recipe) -> str:
    digest = hashlib.sha256(repr((recipe.specs, recipe.template, recipe.flags)).encode()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", recipe.name)[:80]
    path = os.path.join(root, f"{safe}-{digest}")
    os.makedirs(path, exist_ok=True)
    return path


def write_reproducer(path: str, recipe, scalars=()) -> None:
    inputs = "\n".join(
        f"    make({tuple(s.shape)!r}, {tuple(s.stride)!r}, {s.dtype}),"
        for s in recipe.specs
    )
    # runtime scalars are written with this call's values
    src = _template_src(fill(recipe.template, [Slot(i) for i in range(len(recipe.specs))], scalars))
    text = _TEMPLATE.format(
        name=recipe.name,
        driver=recipe.driver,
        op_expr=_op_expr(recipe.func),
        inputs=inputs,
        template="(), {}",
        template_src=src,
    )
    with open(os.path.join(path, "repro.py"), "w") as f:
        f.write(text)
