"""Building and lowering the single-op module (in a compile worker).

    body --trace--> one-op FX graph (fake tensors, decompositions applied)
         --import--> torch dialect with refined types (torch-mlir FxImporter)
         --lower--> linalg-on-tensors (torch-mlir pass pipelines)

Every step raises `StepError(step, message)` so that a fallback can say where it failed.
make_fx keeps global state (the FX patcher), so one process traces one graph at a time: the
compile workers are single-threaded processes. The IREE compile step lives in
`iree_compile.py`; running the result lives in `kernel.py`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx

from .decompositions import PROJECT_DECOMPOSITIONS, SOLE_DECOMPOSITIONS
from .recipe import StepError


# ---- trace: the one-op FX graph ---------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def torch_mlir_decompositions():
    from torch_mlir.extras.fx_decomp_util import get_decomposition_table

    return get_decomposition_table()


@functools.lru_cache(maxsize=None)
def _core_aten_decompositions():
    from torch._decomp import core_aten_decompositions

    return dict(core_aten_decompositions())


def decomposition_attempts(func) -> list:
    """The decomposition tables to try, in order: torch-mlir's (what its FX path uses) with this
    project's over it (`decompositions.py`), then with PyTorch's core-ATen decomposition of
    `func`, then with any PyTorch decomposition of `func` (those may leave prims ops, which
    torch-mlir lowers only in part). A project decomposition that does not apply to a call
    (it returns NotImplemented, say for integers) leaves the op to the later attempts too, unless
    PyTorch's decompositions of the op are known to give other numbers (`SOLE_DECOMPOSITIONS`)."""
    base = dict(torch_mlir_decompositions())
    base.update(PROJECT_DECOMPOSITIONS)
    attempts = [base]
    if not isinstance(func, torch._ops.OpOverload) or func in torch_mlir_decompositions() or func in SOLE_DECOMPOSITIONS:
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


def import_and_lower(gm: torch.fx.GraphModule, any_sizes=None) -> LoweredModule:
    """Import the one-op graph into the torch dialect and lower it to linalg-on-tensors.

    `any_sizes`: (sizes, gm2, sizes2), for a shape-generic kernel (flat.py). `gm` and `gm2` are
    the same op traced with inputs of the sentinel sizes `sizes` and `sizes2`; when their modules
    differ only in those sizes inside tensor types, the module is lowered with those sizes
    dynamic (`?`), so the kernel takes inputs of any sizes. Otherwise StepError("flat")."""
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
            if any_sizes is not None:
                sizes, gm2, sizes2 = any_sizes
                importer = FxImporter(context=ctx)
                importer.import_stateless_graph(gm2.graph)
                torch_ir = _any_sizes(torch_ir, sizes, str(importer.module), sizes2)
                module = ir.Module.parse(torch_ir, context=ctx)
        except StepError:
            raise
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


def _any_sizes(torch_ir: str, sizes, torch_ir2: str, sizes2) -> str:
    """The module traced at `sizes` with those sizes made dynamic (`?`) in its tensor types, if
    the trace at `sizes2` is the same module but for them; else StepError("flat")."""
    generic, generic2 = _dynamic(torch_ir, sizes), _dynamic(torch_ir2, sizes2)
    if generic != generic2 or any(re.search(rf"\b{n}\b", generic) for n in sizes):
        raise StepError("flat", "the op's module depends on its inputs' sizes")
    return generic


def _dynamic(torch_ir: str, sizes) -> str:
    names = {str(n) for n in sizes}

    def dims(m):
        return "vtensor<[" + ",".join("?" if d in names else d for d in m.group(1).split(",")) + "]"

    return re.sub(r"vtensor<\[([0-9,?]*)\]", dims, torch_ir)


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
    tensors = re.findall(r"%arg(\d+): tensor<", header.group(1)) if header else []  # not scalar arguments
    return frozenset(int(i) for i in tensors)
