"""The cache-miss path: from an op call to a loaded kernel, or to a remembered fallback.

    plan      run the op on fake tensors: output metadata as PyTorch gives it, and which
              results are fresh tensors, which are inputs returned as they are, which inputs
              are written
    trace     the one-op FX graph (functionalized, decomposed)         lowering.trace
    lower     torch dialect -> linalg-on-tensors                        lowering.import_and_lower
    compile   IREE, for the device's target (or the disk cache)         iree_compile
    load      one VM context per kernel                                 kernel.Kernel

Any failure becomes `Fallback(step, first line of the error)`, logged once per op.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_flatten

from . import layout, lowering
from .device import COMPILED_DTYPES, Device
from .kernel import Kernel
from .kernel_cache import Fallback, STATS
from .lowering import StepError, TensorSpec, OutputSpec, fill, first_line, output_spec
from .ops import FUNCTIONAL_REWRITES, MUTATION, OpKind

log = logging.getLogger("torch_mlir_eager")

ENV_DUMP_DIR = "TORCH_MLIR_EAGER_DUMP_DIR"


@dataclass
class Recipe:
    """Everything needed to build one kernel. `func` is an OpOverload or a layout op."""

    name: str
    func: object
    kind: OpKind | None
    template: tuple  # (args, kwargs) with lowering.Slot for each tensor input
    specs: list  # TensorSpec of each tensor input, with the real strides
    device: Device
    key: object = None


@dataclass
class OutputPlan:
    """How the kernel's results become the op's results."""

    leaves: list  # per returned leaf: ("out", i) | ("arg", slot) | ("const", value)
    tree: object  # pytree spec of the op's return value
    out_specs: list  # OutputSpec of each fresh result
    writes: list = field(default_factory=list)  # slot of each written input
    live_inputs: list = field(default_factory=list)  # inputs passed to the kernel (not zero-size)
    live_outputs: list = field(default_factory=list)  # fresh results the kernel returns (not zero-size)
    live_writes: list = field(default_factory=list)  # writes the kernel returns, after live_outputs
    live_write_shapes: list = field(default_factory=list)  # their shapes (out= may resize)

    @functools.cached_property
    def single_fresh(self) -> bool:
        return self.leaves == [("out", 0)] and self.tree.num_leaves == 1 and self.tree.is_leaf()

    @property
    def num_outputs(self):
        return len(self.live_outputs) + len(self.live_writes)


def functional_call(func, kind: OpKind | None, args, kwargs):
    """Call the op; return (its results, the written inputs' new values in schema order)."""
    rewrite = FUNCTIONAL_REWRITES.get(func)
    if rewrite is not None:
        return rewrite(*args, **kwargs)
    results = func(*args, **kwargs)
    if kind is None or kind.kind != MUTATION:
        return results, ()
    bound = dict(zip(kind.arg_names, args))
    bound.update(kwargs)
    return results, tuple(bound.get(name) for name in kind.written)


def _tensor_leaves(values):
    return [v for v in tree_flatten(list(values))[0] if isinstance(v, torch.Tensor)]


def _run_abstract(recipe: Recipe, device):
    fakes = [torch.empty_strided(s.shape, s.stride, dtype=s.dtype, device=device) for s in recipe.specs]
    args, kwargs = fill(recipe.template, fakes)
    return fakes, args, kwargs, functional_call(recipe.func, recipe.kind, args, kwargs)


def plan_outputs(recipe: Recipe) -> OutputPlan:
    """Run the op on fake CPU tensors with the inputs' real strides (not meta tensors: some
    meta kernels disagree with the CPU ones on output shapes)."""
    with lowering.TRACE_LOCK, FakeTensorMode():
        fakes, args, kwargs, (results, written) = _run_abstract(recipe, "cpu")
    leaves, tree = tree_flatten(results)

    def slot_of(t):
        return next((i for i, f in enumerate(fakes) if f is t), None)

    plan_leaves, out_specs = [], []
    for leaf in leaves:
        if not isinstance(leaf, torch.Tensor):
            plan_leaves.append(("const", leaf))
        elif slot_of(leaf) is not None:  # the op returns one of its inputs (in-place, out=)
            plan_leaves.append(("arg", slot_of(leaf)))
        else:
            plan_leaves.append(("out", len(out_specs)))
            out_specs.append(output_spec(leaf))
    writes, write_shapes = [], []
    if written:
        bound = dict(zip(recipe.kind.arg_names, args))
        bound.update(kwargs)
        for name, value in zip(recipe.kind.written, written):
            if value is None:
                continue
            for target in _tensor_leaves([bound[name]]):
                if slot_of(target) is None:
                    raise StepError("trace", f"written argument {name} is not a device tensor")
                writes.append(slot_of(target))
                write_shapes.append(tuple(target.shape))
    specs = recipe.specs
    return OutputPlan(
        plan_leaves, tree, out_specs, writes,
        live_inputs=[i for i, s in enumerate(specs) if s.numel > 0],
        live_outputs=[i for i, s in enumerate(out_specs) if s.numel > 0],
        live_writes=[slot for slot, shape in zip(writes, write_shapes) if math.prod(shape) > 0],
        live_write_shapes=[shape for shape in write_shapes if math.prod(shape) > 0],
    )


def make_body(recipe: Recipe, plan: OutputPlan):
    """The function to trace: inputs in physical order -> [fresh results in physical order] +
    [new values of the written inputs, each in its input's physical order]."""
    specs = recipe.specs

    def body(*live):
        # zero-size inputs are not kernel arguments: they are made inside the graph
        tensors = [None] * len(specs)
        for i, t in zip(plan.live_inputs, live):
            perm = specs[i].perm
            tensors[i] = t if perm is None else t.permute(layout.inverse(perm))
        for i, s in enumerate(specs):
            if tensors[i] is None:
                tensors[i] = torch.empty(s.shape, dtype=s.dtype)
        args, kwargs = fill(recipe.template, tensors)
        results, written = functional_call(recipe.func, recipe.kind, args, kwargs)
        outs = []
        for leaf, entry in zip(tree_flatten(results)[0], plan.leaves):
            if entry[0] == "out" and plan.out_specs[entry[1]].numel > 0:
                spec = plan.out_specs[entry[1]]
                if spec.perm is not None:
                    leaf = leaf.permute(spec.perm)
                outs.append(leaf.contiguous())
        for value, slot in zip(_tensor_leaves(written), plan.writes):
            if value.numel() == 0:
                continue
            spec = specs[slot]
            # written in place, it keeps its layout; resized (out=), it becomes row-major
            perm = spec.perm if tuple(value.shape) == spec.shape else None
            outs.append((value if perm is None else value.permute(perm)).contiguous())
        return outs

    return body


# ---- the miss path ----------------------------------------------------------------------------
_listener = None
_logged_ops: set = set()
_log_lock = threading.Lock()


def set_compile_listener(fn):
    """fn(event, op_name, seconds) with event "start", then "done" (compiled), "loaded" (from the
    disk cache) or "failed"; None removes the listener."""
    global _listener
    _listener = fn


def _notify(event, name, seconds=None):
    if _listener is not None:
        try:
            _listener(event, name, seconds)
        except Exception:  # a listener must never break an op
            log.exception("compile listener failed")


def build(recipe: Recipe):
    """Kernel for `recipe`, or Fallback(step, reason). Never raises for a build problem: an
    unexpected error becomes a Fallback with step `internal`."""
    start = time.perf_counter()
    _notify("start", recipe.name)
    try:
        kernel = _build(recipe)
    except Exception as e:  # noqa: BLE001 - every failure becomes a remembered fallback
        seconds = time.perf_counter() - start
        STATS.compiled(seconds, ok=False)
        if isinstance(e, StepError):
            fallback, message = Fallback(e.step, e.first_line), e.message
        else:
            fallback = Fallback("internal", first_line(f"{type(e).__name__}: {e}"))
            message = "".join(__import__("traceback").format_exception(e))
        _log_failure(recipe.name, fallback, message)
        _notify("failed", recipe.name, seconds)
        return fallback
    seconds = time.perf_counter() - start
    if isinstance(kernel, Fallback):  # a verdict remembered in the disk index
        _notify("failed", recipe.name, seconds)
        return kernel
    STATS.compiled(seconds, ok=True, from_disk=getattr(kernel, "from_disk", False))
    _notify("loaded" if getattr(kernel, "from_disk", False) else "done", recipe.name, seconds)
    return kernel


def _log_failure(name, fallback: Fallback, message: str):
    with _log_lock:
        if name in _logged_ops:
            return
        _logged_ops.add(name)
    log.warning("%s falls back to native PyTorch (%s): %s", name, fallback.step, fallback.reason)
    log.debug("%s: full error:\n%s", name, message)


def _build(recipe: Recipe) -> Kernel:
    try:
        plan = plan_outputs(recipe)
    except StepError:
        raise
    except Exception as e:
        raise StepError("trace", f"{type(e).__name__}: {e}") from None
    for spec in list(recipe.specs) + list(plan.out_specs):
        if spec.dtype not in COMPILED_DTYPES:
            raise StepError("unsupported", f"dtype {spec.dtype} has no IREE element type")
    if plan.num_outputs == 0:  # every result is zero-size: nothing to compute
        return Kernel.empty(recipe.device, recipe.name, plan)
    kernel = _load_indexed(recipe, plan)
    if kernel is not None:
        return kernel
    functionalize = recipe.kind is not None and recipe.kind.kind == MUTATION
    dump = _Dump(recipe)
    error = None
    for decompositions in lowering.decomposition_attempts(recipe.func):
        try:
            try:
                gm = lowering.trace(
                    make_body(recipe, plan),
                    [recipe.specs[i] for i in plan.live_inputs],
                    decompositions,
                    functionalize,
                )
            except StepError:
                raise
            except Exception as e:
                raise StepError("decompose", f"{type(e).__name__}: {e}") from None
            dump.write("graph.txt", str(gm.graph))
            lowered = lowering.import_and_lower(gm)
            dump.write("torch.mlir", lowered.torch_ir)
            dump.write("linalg.mlir", lowered.linalg_ir)
            vmfb, from_disk, entry = _compile(lowered.linalg_ir, recipe.device, recipe.name)
            copy_inputs = tuple(sorted(lowering.written_arguments(lowered.linalg_ir)))
            _index(recipe, entry, copy_inputs)
            try:
                kernel = Kernel(recipe.device, vmfb, recipe.name, plan, from_disk=from_disk, copy_inputs=copy_inputs)
            except Exception as e:
                raise StepError("load", f"{type(e).__name__}: {e}") from None
            dump.write("compile.log", "ok\nflags: " + " ".join(recipe.device.compile_flags) + "\n")
            return kernel
        except StepError as e:
            if error is None or _STEP_ORDER.get(e.step, 0) > _STEP_ORDER.get(error.step, 0):
                error = e  # report the attempt that got furthest
            dump.write("error.txt", f"step: {e.step}\n{e.message}\n")
    raise error


_STEP_ORDER = {"trace": 0, "decompose": 1, "functionalize": 1, "import": 2, "lower": 3, "compile": 4, "load": 5}


def _compile(linalg_ir: str, device: Device, name: str):
    from . import iree_compile

    disk = _disk_cache()
    entry = None
    if disk is not None:
        from .disk_cache import entry_key

        entry = entry_key(linalg_ir, device.compile_flags)
        failure = disk.get_failure(entry)
        if failure is not None:
            raise StepError(failure.get("step", "compile"), failure.get("message", "remembered failure"))
        blob = disk.get(entry)
        if blob is not None:
            return blob, True, entry
    try:
        vmfb = iree_compile.compile_to_vmfb(linalg_ir, device.compile_flags)
    except iree_compile.IreeCompileError as e:
        if disk is not None and not getattr(e, "transient", False):
            disk.put_failure(entry, "compile", first_line(str(e)))
        raise StepError("compile", str(e)) from None
    if disk is not None:
        disk.put(entry, vmfb)
    return vmfb, False, entry


# The disk cache is keyed by the lowered module (what determines the binary). A second index,
# keyed by the op key and this package's own source, maps straight to that entry, so that a new
# process loads a known kernel without tracing and lowering it again. It also remembers
# validation verdicts: a key found wrong stays a fallback in later processes.
def source_digest(here: str = os.path.dirname(__file__)) -> str:
    """A hash of every module of the package and of its guard list: whatever shapes keys,
    templates, decompositions and plans. Changing any of them makes a new index."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(os.listdir(here)):
        if name.endswith(".py") or name == "guards.json":
            h.update(name.encode())
            with open(os.path.join(here, name), "rb") as f:
                h.update(f.read())
    return h.hexdigest()


_SOURCE_DIGEST = None


def _stable(x) -> str:
    """A text for a key that is the same in every process."""
    if isinstance(x, (tuple, list)):
        return "(" + ",".join(_stable(v) for v in x) + ")"
    if isinstance(x, type):
        return x.__name__
    if callable(x) and not isinstance(x, torch._ops.OpOverload) and hasattr(x, "__name__"):
        return x.__name__
    return str(x)


def _index_key(key, device: Device):
    global _SOURCE_DIGEST
    if _SOURCE_DIGEST is None:
        _SOURCE_DIGEST = source_digest()
    from .disk_cache import entry_key

    return entry_key(f"op-index\n{_stable(key)}\n{_SOURCE_DIGEST}", device.compile_flags)


def _index(recipe: Recipe, entry, copy_inputs):
    disk = _disk_cache()
    if disk is not None and entry is not None and recipe.key is not None:
        disk.put_index(_index_key(recipe.key, recipe.device), {"kernel": entry, "copy_inputs": list(copy_inputs)})


def remember_fallback(key, device: Device, fallback: Fallback):
    """Record in the disk index that `key` runs natively (a validation verdict)."""
    disk = _disk_cache()
    if disk is not None and key is not None:
        disk.put_index(_index_key(key, device), {"fallback": [fallback.step, fallback.reason]})


def _load_indexed(recipe: Recipe, plan: OutputPlan):
    """The Kernel (or remembered Fallback) the disk index has for the recipe's key, or None."""
    disk = _disk_cache()
    if disk is None or recipe.key is None:
        return None
    record = disk.get_index(_index_key(recipe.key, recipe.device))
    if record is None:
        return None
    if "fallback" in record:
        step, reason = record["fallback"]
        return Fallback(step, reason)
    try:
        vmfb = disk.get(record["kernel"])
    except (KeyError, ValueError):  # a record of another shape
        return None
    if vmfb is None:
        return None
    try:
        return Kernel(recipe.device, vmfb, recipe.name, plan, from_disk=True, copy_inputs=record.get("copy_inputs", ()))
    except Exception:
        return None


_disk = None
_disk_opened = False


def _disk_cache():
    global _disk, _disk_opened
    if not _disk_opened:
        _disk_opened = True
        try:
            from .disk_cache import open_default_cache

            _disk = open_default_cache()
        except Exception as e:  # no cache is better than a broken op
            log.warning("disk kernel cache disabled: %s", e)
            _disk = None
    return _disk


class _Dump:
    """TORCH_MLIR_EAGER_DUMP_DIR: per new key, the modules, the compiler's verdict, a reproducer."""

    def __init__(self, recipe: Recipe):
        root = os.environ.get(ENV_DUMP_DIR)
        self.dir = None
        if not root:
            return
        from . import repro

        self.dir = repro.dump_dir_for(root, recipe)
        repro.write_reproducer(self.dir, recipe)

    def write(self, name, text):
        if self.dir is not None:
            with open(os.path.join(self.dir, name), "w") as f:
                f.write(text)
