"""Building and lowering the single-op module.

    OpCall --trace--> one-op FX graph (fake tensors, decompositions applied)
           --import--> torch dialect with refined types (torch-mlir FxImporter)
           --lower--> linalg-on-tensors (torch-mlir pass pipelines)

Every step raises `StepError(step, message)` so that a fallback can say where it failed.
The IREE compile step lives in `iree_compile.py`; running the result lives in `kernel.py`.
"""

from __future__ import annotations

import functools
import math
import re
import threading
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx

from .layout import contiguous_strides, physical_order


class StepError(Exception):
    """A failure at one step of building a kernel. `step` names it for the statistics."""

    def __init__(self, step: str, message: str):
        super().__init__(message)
        self.step = step
        self.message = message

    @property
    def first_line(self) -> str:
        return first_line(self.message)


def first_line(message: str) -> str:
    for line in str(message).splitlines():
        line = line.strip()
        if line:
            return line[:300]
    return "(no message)"


# ---- the op call, abstracted ------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSpec:
    """What a kernel needs to know about one tensor input: logical shape, strides and dtype.
    The kernel takes it as a dense buffer in its physical order (`perm`, see layout.py)."""

    shape: tuple
    stride: tuple
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def perm(self):
        return physical_order(self.shape, self.stride)[0]

    @property
    def physical_shape(self) -> tuple:
        perm = self.perm
        return self.shape if perm is None else tuple(self.shape[d] for d in perm)


class Slot:
    """Stands for the i-th tensor input inside an argument template."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index

    def __repr__(self):
        return f"Slot({self.index})"


def fill(template, values):
    """Replace every Slot in a nested args/kwargs template by values[slot.index]."""
    if isinstance(template, Slot):
        return values[template.index]
    if isinstance(template, (list, tuple)):
        return type(template)(fill(t, values) for t in template)
    if isinstance(template, dict):
        return {k: fill(v, values) for k, v in template.items()}
    return template


@dataclass
class OutputSpec:
    """One tensor result: its metadata as PyTorch gives it, and the physical order the kernel
    writes it in (`perm`: the result is `out.permute(perm).contiguous()`), so that its strides
    match PyTorch's without a copy."""

    shape: tuple
    stride: tuple
    dtype: torch.dtype
    perm: tuple | None  # None: the kernel writes it contiguous (and `stride` is contiguous)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def physical_shape(self) -> tuple:
        if self.perm is None:
            return self.shape
        return tuple(self.shape[d] for d in self.perm)


def output_spec(t: torch.Tensor) -> OutputSpec:
    """The kernel writes a result in its physical order when its strides are dense (row-major,
    channels_last, any permutation), so its strides match PyTorch's; any other result (gaps,
    overlaps) gets the same values with contiguous strides."""
    shape, stride = tuple(t.shape), tuple(t.stride())
    perm, dense = physical_order(shape, stride)
    if not dense:
        return OutputSpec(shape, contiguous_strides(shape), t.dtype, None)
    return OutputSpec(shape, stride, t.dtype, perm)


# ---- trace: the one-op FX graph ---------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def torch_mlir_decompositions():
    from torch_mlir.extras.fx_decomp_util import get_decomposition_table

    return get_decomposition_table()


@functools.lru_cache(maxsize=None)
def _core_aten_decompositions():
    from torch._decomp import core_aten_decompositions

    return dict(core_aten_decompositions())


def _log10(x):
    return torch.log(x) * 0.4342944819032518  # IREE 3.13 cannot link log10f on llvm-cpu


def _erfc(x):
    return 1 - torch.erf(x)  # torch-mlir has no erfc; PyTorch's decomposition leaves prims.erfc


def _hypot(a, b):
    return torch.sqrt(a * a + b * b)  # torch-mlir has no hypot; PyTorch's leaves prims.hypot


# Decompositions of this project's own, for ops whose direct lowering fails downstream.
PROJECT_DECOMPOSITIONS = {
    torch.ops.aten.log10.default: _log10,
    torch.ops.aten.erfc.default: _erfc,
    torch.ops.aten.hypot.default: _hypot,
}


def decomposition_attempts(func) -> list:
    """The decomposition tables to try, in order: torch-mlir's (what its FX path uses), then
    with PyTorch's core-ATen decomposition of `func`, then with any PyTorch decomposition of
    `func` (those may leave prims ops, which torch-mlir lowers only in part)."""
    base = dict(torch_mlir_decompositions())
    base.update(PROJECT_DECOMPOSITIONS)
    attempts = [base]
    if not isinstance(func, torch._ops.OpOverload) or func in base:
        return attempts
    from torch._decomp import decomposition_table

    for source in (_core_aten_decompositions(), decomposition_table):
        extra = source.get(func)
        if extra is not None and all(extra is not a.get(func) for a in attempts):
            table = dict(base)
            table[func] = extra
            attempts.append(table)
    return attempts


def trace(body, specs, decompositions, functionalize: bool) -> torch.fx.GraphModule:
    """The FX graph of `body(*tensors) -> [tensors]` on fake dense inputs of `specs` (in
    their physical order).

    With `functionalize`, writes into inputs become value-returning ops (PyTorch's
    functionalization); the trailing copies back into the inputs are dropped, because `body`
    returns the new values and the caller writes them into the storages.
    """
    with TRACE_LOCK:
        return _trace(body, specs, decompositions, functionalize)


# make_fx and fake-tensor tracing keep global state (the FX patcher): trace one graph at a time.
# Compiles (the expensive part) still run in parallel.
TRACE_LOCK = threading.RLock()


def _trace(body, specs, decompositions, functionalize: bool) -> torch.fx.GraphModule:
    fn = body
    if functionalize:
        fn = torch.func.functionalize(body, remove="mutations")
    mode = FakeTensorMode()
    with mode:
        fakes = [torch.empty(s.physical_shape, dtype=s.dtype) for s in specs]
        gm = make_fx(fn, decomposition_table=decompositions, tracing_mode="real")(*fakes)
    graph = gm.graph
    for node in list(graph.nodes):
        if (node.op == "call_function" and node.target is torch.ops.aten.copy_.default
                and node.args[0].op == "placeholder" and not node.users):
            graph.erase_node(node)
    graph.eliminate_dead_code()  # functionalization leaves dead view copies behind
    from .device import COMPILED_DTYPES

    for node in graph.nodes:
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            if any(a.alias_info is not None and a.alias_info.is_write for a in node.target._schema.arguments):
                raise StepError("functionalize", f"{node.target} still writes into an input after functionalization")
        val = node.meta.get("val")
        for v in val if isinstance(val, (list, tuple)) else [val]:
            if isinstance(v, torch.Tensor) and v.dtype not in COMPILED_DTYPES:
                raise StepError("unsupported", f"{node.target} makes a {v.dtype} tensor, which has no IREE element type")
    graph.lint()
    gm.recompile()
    return gm


# ---- import and lower -------------------------------------------------------------------------
@dataclass
class LoweredModule:
    torch_ir: str  # torch dialect, refined types, as imported
    linalg_ir: str  # linalg-on-tensors, what IREE compiles


_TORCH_PIPELINE = (
    "builtin.module(func.func(torch-match-quantized-custom-ops), "
    "torchdynamo-export-to-torch-backend-pipeline{ extra-library=})"
)
_LINALG_PIPELINE = (
    "builtin.module(torch-backend-to-linalg-on-tensors-backend-pipeline{allow-non-finites=True})"
)


def import_and_lower(gm: torch.fx.GraphModule) -> LoweredModule:
    from torch_mlir import ir
    from torch_mlir.dialects import torch as torch_d
    from torch_mlir.extras.fx_importer import FxImporter
    from torch_mlir.passmanager import PassManager

    ctx = ir.Context()
    torch_d.register_dialect(ctx)
    diagnostics: list[str] = []

    def on_diagnostic(d):
        diagnostics.append(str(d))
        for note in d.notes:
            diagnostics.append("  " + str(note))
        return True

    handler = ctx.attach_diagnostic_handler(on_diagnostic)
    try:
        try:
            importer = FxImporter(context=ctx)
            importer.import_stateless_graph(gm.graph)
            module = importer.module
            torch_ir = str(module)
        except Exception as e:
            raise StepError("import", f"{type(e).__name__}: {e}" + _diag(diagnostics)) from None
        for name, pipeline in (("lower", _TORCH_PIPELINE), ("lower", _LINALG_PIPELINE)):
            diagnostics.clear()
            try:
                with ctx:
                    ctx.emit_error_diagnostics = True
                    PassManager.parse(pipeline).run(module.operation)
            except Exception as e:
                msg = "\n".join(diagnostics) if diagnostics else str(e)
                raise StepError(name, msg) from None
            if diagnostics and any(d.startswith("error") or "error:" in d for d in diagnostics):
                raise StepError(name, "\n".join(diagnostics))
        return LoweredModule(torch_ir=torch_ir, linalg_ir=str(module))
    finally:
        handler.detach()


def _diag(diagnostics):
    return ("\n" + "\n".join(diagnostics)) if diagnostics else ""


# Ops that can update a destination operand in place. When the lowered module has one, IREE may
# write into the caller's input buffer (iree-org/iree#16168), directly or through a reshape of
# it, so every input of such a kernel is passed as a copy.
_IN_PLACE_CAPABLE = re.compile(
    r"tm_tensor\.|iree_linalg_ext\.|tensor\.insert|tensor\.scatter|outs\([^)]*%arg\d|into\s+%arg\d"
)


def written_arguments(linalg_ir: str) -> frozenset:
    """Function arguments the compiled code may update in place: all of them when the module
    has an op that writes into a destination operand that is not a fresh tensor."""
    if not _IN_PLACE_CAPABLE.search(linalg_ir):
        return frozenset()
    header = re.search(r"func\.func @main\(([^)]*)\)", linalg_ir)
    count = len(re.findall(r"%arg\d+", header.group(1))) if header else 0
    return frozenset(range(count))
