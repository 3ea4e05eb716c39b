"""The cache-miss path, run by a compile worker (compile_worker.py), or in the user's process
when the service has no workers: from a `Recipe` to a `Built` kernel, or a `StepError`.

    plan      run the op on fake tensors: output metadata as PyTorch gives it, and which
              results are fresh tensors, which are inputs returned as they are, which inputs
              are written
    trace     the one-op FX graph (functionalized, decomposed)         lowering.trace
    scalars   Python scalars that vary between calls become function arguments, found by
              tracing with two sentinel values (else they are baked in)
    lower     torch dialect -> linalg-on-tensors                        lowering.import_and_lower
    compile   IREE, for the target's flags (or the disk cache)         iree_compile

Any failure raises `StepError(step, message)`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_flatten

from . import argument_checks, layout, lowering, prepack
from .device import COMPILED_DTYPES
from .ops import FUNCTIONAL_REWRITES, MUTATION, OpKind, classify
from .recipe import (
    Built, OutputPlan, Recipe, Slot, StepError, TensorSpec, fill, first_line, output_spec, scalar_slots,
)

log = logging.getLogger("torch_mlir_eager")

ENV_DUMP_DIR = "TORCH_MLIR_EAGER_DUMP_DIR"


def kind_of(recipe: Recipe) -> OpKind | None:
    return classify(recipe.func) if isinstance(recipe.func, torch._ops.OpOverload) else None


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


# ---- plan -------------------------------------------------------------------------------------
def plan_outputs(recipe: Recipe, kind, scalars) -> OutputPlan:
    """Run the op on fake CPU tensors with the inputs' real strides (not meta tensors: some
    meta kernels disagree with the CPU ones on output shapes)."""
    with FakeTensorMode():
        fakes = [torch.empty_strided(s.shape, s.stride, dtype=s.dtype) for s in recipe.specs]
        args, kwargs = fill(recipe.template, fakes, scalars)
        argument_checks.check(recipe.func, kind, args, kwargs)
        results, written = functional_call(recipe.func, kind, args, kwargs)
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
        bound = dict(zip(kind.arg_names, args))
        bound.update(kwargs)
        for name, value in zip(kind.written, written):
            if value is None:
                continue
            for target in _tensor_leaves([bound[name]]):
                if slot_of(target) is None:
                    raise StepError("trace", f"written argument {name} is not a device tensor")
                writes.append(slot_of(target))
                write_shapes.append(tuple(target.shape))
    specs = recipe.specs
    return OutputPlan(
        plan_leaves, tree, out_specs, writes, write_shapes,
        live_inputs=[i for i, s in enumerate(specs) if s.numel > 0],
        live_outputs=[i for i, s in enumerate(out_specs) if s.numel > 0],
        live_writes=[slot for slot, shape in zip(writes, write_shapes) if math.prod(shape) > 0],
        live_write_shapes=[shape for shape in write_shapes if math.prod(shape) > 0],
        input_shapes=[s.shape for s in specs],
    )


def _same_plan(a: OutputPlan, b: OutputPlan) -> bool:
    def shape(p):
        return ([(s.shape, s.stride, s.dtype, s.perm) for s in p.out_specs], p.writes, p.live_write_shapes,
                [x for x in p.leaves if x[0] != "const"], p.tree)

    return shape(a) == shape(b)


# ---- trace --------------------------------------------------------------------------------------
def make_body(recipe: Recipe, plan: OutputPlan, kind, scalars):
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
        args, kwargs = fill(recipe.template, tensors, scalars)
        results, written = functional_call(recipe.func, kind, args, kwargs)
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
            if value.dtype != spec.dtype:
                # stored into the written tensor's dtype, as copy_ would: a bfloat16 batch norm's
                # running stats come back from the functional op in float32, and their bytes
                # were stored into the bfloat16 storage as they were
                value = value.to(spec.dtype)
            # written in place, it keeps its layout; resized (out=), it becomes row-major
            perm = spec.perm if tuple(value.shape) == spec.shape else None
            outs.append((value if perm is None else value.permute(perm)).contiguous())
        return outs

    return body


# Sentinels: values no program uses on purpose, distinct per scalar, exact in float64.
def _sentinels(slots, which: int):
    base_f, base_i = (0.3779296875, 1234567) if which == 0 else (0.6787109375, 7654321)
    return [base_f + i / 64 if s.type is float else base_i + i for i, s in enumerate(slots)]


def _scalar_positions(gm_a, gm_b, values_a, values_b):
    """Where each runtime scalar flows into the graph unchanged: [(node index, arg path, slot)].
    None when the two traces differ in any other way (a value used in a computation, a branch
    taken on it, a shape depending on it): the scalars must then be baked in."""
    nodes_a, nodes_b = list(gm_a.graph.nodes), list(gm_b.graph.nodes)
    if len(nodes_a) != len(nodes_b):
        return None
    slot_a = {(type(v), v): i for i, v in enumerate(values_a)}
    positions = []

    def walk(x, y, path, n):
        if isinstance(x, torch.fx.Node) or isinstance(y, torch.fx.Node):
            return isinstance(x, torch.fx.Node) and isinstance(y, torch.fx.Node) and x.name == y.name
        if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
            return type(x) is type(y) and len(x) == len(y) and all(
                walk(a, b, path + (i,), n) for i, (a, b) in enumerate(zip(x, y)))
        if isinstance(x, dict) and isinstance(y, dict):
            return x.keys() == y.keys() and all(walk(x[k], y[k], path + (k,), n) for k in x)
        if type(x) is type(y) and x == y:
            return True
        i = slot_a.get((type(x), x))
        if i is not None and type(y) is type(values_b[i]) and y == values_b[i]:
            positions.append((n, path, i))
            return True
        return False

    for n, (a, b) in enumerate(zip(nodes_a, nodes_b)):
        if a.op != b.op or a.target != b.target:
            return None
        if not walk(tuple(a.args), tuple(b.args), ("args",), n) or not walk(dict(a.kwargs), dict(b.kwargs), ("kwargs",), n):
            return None
    return positions


def _with_scalar_arguments(gm, positions, slots, values):
    """gm with a placeholder per runtime scalar (after the tensor inputs) used where the
    sentinel stood."""
    graph = gm.graph
    nodes = list(graph.nodes)
    last_input = [n for n in nodes if n.op == "placeholder"][-1]
    scalars = []
    with graph.inserting_after(last_input):
        for slot in reversed(slots):
            node = graph.placeholder(f"scalar{slot.index}")
            node.meta["val"] = values[slot.index]
            scalars.insert(0, node)
    for n, path, i in positions:
        node = nodes[n]
        where, rest = path[0], path[1:]
        container = list(node.args) if where == "args" else dict(node.kwargs)
        container = _replace(container, rest, scalars[i])
        if where == "args":
            node.args = tuple(container)
        else:
            node.kwargs = container
    graph.lint()
    gm.recompile()
    return gm


def _replace(container, path, value):
    if len(path) == 1:
        if isinstance(container, tuple):
            container = list(container)
            container[path[0]] = value
            return tuple(container)
        container[path[0]] = value
        return container
    inner = _replace(container[path[0]], path[1:], value)
    if isinstance(container, tuple):
        container = list(container)
        container[path[0]] = inner
        return tuple(container)
    container[path[0]] = inner
    return container


# ---- build ------------------------------------------------------------------------------------
def build(recipe: Recipe, scalars=()) -> Built:
    """Build the kernel of `recipe`; `scalars` are the call's runtime scalar values (the
    template's ScalarSlots). Raises StepError."""
    start = time.perf_counter()
    kind = kind_of(recipe)
    try:
        plan = plan_outputs(recipe, kind, scalars)
    except StepError:
        raise
    except Exception as e:
        raise StepError("trace", f"{type(e).__name__}: {e}") from None
    for spec in list(recipe.specs) + list(plan.out_specs):
        if spec.dtype not in COMPILED_DTYPES:
            raise StepError("unsupported", f"dtype {spec.dtype} has no IREE element type")
    if recipe.flat:
        _check_flat_plan(recipe, plan)
    slots = scalar_slots(recipe.template)
    built = None
    # a convolution with a pre-packed weight (prepack.py): first where it is faster, and as a
    # second attempt for any plain float32 convolution IREE's own lowering does not compile
    packed = None if (recipe.flat or slots) else prepack.packed_input_of(recipe, plan)
    if packed is not None and packed.preferred:
        built = _try_prepacked(recipe, plan, packed.index)
    if slots:
        try:
            built = _build_runtime_scalars(recipe, kind, plan, slots, scalars)
        except StepError as e:
            log.debug("%s: runtime scalars did not work (%s: %s); baking them in", recipe.name, e.step, e.first_line)
    if built is None:
        try:
            built = _build_traced(recipe, kind, plan, scalars, slots=(), positions=None)
        except StepError:
            built = _try_prepacked(recipe, plan, packed.index) if packed is not None and not packed.preferred else None
            if built is None:
                raise
        built.runtime_scalars = not slots
    built.seconds = time.perf_counter() - start
    return built


def _try_prepacked(recipe, plan, packed_input):
    try:
        return _build_prepacked(recipe, plan, packed_input)
    except Exception as e:  # noqa: BLE001 - the usual path then (or its error)
        step = e.step if isinstance(e, StepError) else type(e).__name__
        log.warning("%s: the pre-packed convolution did not build (%s: %s)", recipe.name, step, first_line(str(e)))
        return None


def warm_up():
    """Build a tiny add through every step (plan, trace, import, lower, IREE), touching no cache.

    A process's first build pays about 1-2 s once (importing torch-mlir and the IREE compiler,
    the first fake tensors and traces, MLIR and LLVM set-up); a compile worker pays it while
    it starts, before any request waits on it."""
    from . import iree_compile

    func = torch.ops.aten.add.Tensor
    spec = TensorSpec((2,), (1,), torch.float32)
    flags = tuple(iree_compile.target_flags("local-task"))
    recipe = Recipe("aten.add.Tensor", func, ((Slot(0), Slot(1)), {}), [spec, spec], "local-task", flags,
                    ("warm-up",))
    kind = kind_of(recipe)
    plan = plan_outputs(recipe, kind, ())
    graph = _trace_with(recipe, kind, plan, (), lowering.decomposition_attempts(func)[0])
    iree_compile.compile_to_vmfb(lowering.import_and_lower(graph).linalg_ir, list(flags))


def _build_runtime_scalars(recipe, kind, plan, slots, scalars):
    sentinels = [_sentinels(slots, 0), _sentinels(slots, 1)]
    for values in sentinels:  # the result's metadata must not depend on the values
        if not _same_plan(plan, plan_outputs(recipe, kind, values)):
            raise StepError("scalars", "the result's shape or dtype depends on a scalar's value")
    traced = [_trace_with(recipe, kind, plan, values, lowering.decomposition_attempts(recipe.func)[0]) for values in sentinels]
    positions = _scalar_positions(traced[0], traced[1], *sentinels)
    if positions is None:
        raise StepError("scalars", "a scalar is used in a computation at trace time")
    return _build_traced(recipe, kind, plan, sentinels[0], slots, positions, gm=traced[0], scalar_values=scalars)


def _build_prepacked(recipe, plan, packed_input) -> Built:
    """A convolution whose weight the kernel takes pre-packed (prepack.py): its module is
    written in linalg, not traced and lowered."""
    plan = dataclasses.replace(plan, packed=(packed_input, prepack.TILE))
    text = prepack.module_text(recipe, plan)
    dump = _Dump(recipe)
    dump.write("linalg.mlir", text)
    from .iree_compile import CPU_BATCH1_CONV_FLAGS

    # the flags of IREE's own convolutions, less the channels-last conversion: this module has no
    # convolution, and the pass breaks an unpack whose outer dims are 1
    flags = [f for f in recipe.flags if f not in CPU_BATCH1_CONV_FLAGS]
    vmfb, from_disk, entry = _compile(text, flags)
    dump.write("compile.log", "ok (pre-packed weight)\nflags: " + " ".join(flags) + "\n")
    return Built(vmfb, plan, tuple(sorted(lowering.written_arguments(text))), from_disk=from_disk, entry=entry)


def _trace_with(recipe, kind, plan, scalars, decompositions):
    functionalize = kind is not None and kind.kind == MUTATION
    try:
        return lowering.trace(
            make_body(recipe, plan, kind, scalars),
            [recipe.specs[i] for i in plan.live_inputs],
            decompositions,
            functionalize,
        )
    except StepError:
        raise
    except Exception as e:
        raise StepError("decompose", f"{type(e).__name__}: {e}") from None


def _build_traced(recipe, kind, plan, scalars, slots, positions, gm=None, scalar_values=()) -> Built:
    """Trace (unless given), import, lower and compile; each decomposition attempt in turn."""
    scalars_for_dump = scalar_values if positions is not None else scalars
    if plan.num_outputs == 0:  # every result is zero-size: nothing to compute
        return Built(b"", plan)
    dump = _Dump(recipe, scalars_for_dump)
    error = None
    attempts = lowering.decomposition_attempts(recipe.func)
    for n, decompositions in enumerate(attempts):
        try:
            graph = gm if (gm is not None and n == 0) else _trace_with(recipe, kind, plan, scalars, decompositions)
            if positions is not None:
                if n > 0:
                    raise StepError("scalars", "runtime scalars are tried with the first decomposition only")
                graph = _with_scalar_arguments(graph, positions, slots, scalar_values)
            dump.write("graph.txt", str(graph.graph))
            any_sizes = None
            if recipe.flat:
                from .flat import SENTINELS

                graph2 = _trace_at_second_sizes(recipe, kind, scalars, decompositions)
                if positions is not None:
                    graph2 = _with_scalar_arguments(graph2, positions, slots, scalar_values)
                any_sizes = (SENTINELS[0], graph2, SENTINELS[1])
            lowered = lowering.import_and_lower(graph, any_sizes)
            dump.write("torch.mlir", lowered.torch_ir)
            dump.write("linalg.mlir", lowered.linalg_ir)
            vmfb, from_disk, entry = _compile(lowered.linalg_ir, recipe.flags)
            copy_inputs = tuple(sorted(lowering.written_arguments(lowered.linalg_ir)))
            dump.write("compile.log", "ok\nflags: " + " ".join(recipe.flags) + "\n")
            return Built(vmfb, plan, copy_inputs, from_disk=from_disk, entry=entry)
        except StepError as e:
            if error is None or _STEP_ORDER.get(e.step, 0) > _STEP_ORDER.get(error.step, 0):
                error = e  # report the attempt that got furthest
            dump.write("error.txt", f"step: {e.step}\n{e.message}\n")
    raise error


# ---- shape-generic kernels (flat.py) ------------------------------------------------------------
# A flat recipe's tensors have sentinel sizes (flat.SENTINELS[0]); a second trace at the other
# sentinels shows that nothing in the module depends on them (lowering.import_and_lower).


def _check_flat_plan(recipe, plan):
    from .flat import SENTINELS

    def generic(shape):  # made of sentinels, or zero-size
        return all(d in SENTINELS[0] for d in shape) or 0 in shape

    if any(not generic(s.shape) or s.perm is not None for s in plan.out_specs) \
            or any(not generic(shape) for shape in plan.write_shapes):
        raise StepError("flat", "the op's results are not shaped by its inputs' sizes alone")


def _trace_at_second_sizes(recipe, kind, scalars, decompositions):
    import dataclasses

    from .flat import SENTINELS

    second = dict(zip(*SENTINELS))
    specs = []
    for s in recipe.specs:
        shape = tuple(second.get(d, d) for d in s.shape)
        specs.append(TensorSpec(shape, layout.contiguous_strides(shape), s.dtype))
    recipe = dataclasses.replace(recipe, specs=specs)
    plan = plan_outputs(recipe, kind, scalars)
    return _trace_with(recipe, kind, plan, scalars, decompositions)


_STEP_ORDER = {"flat": -2, "scalars": -1, "trace": 0, "decompose": 1, "functionalize": 1, "unsupported": 1,
               "import": 2, "lower": 3, "compile": 4, "load": 5}


def _compile(linalg_ir: str, flags):
    """The .vmfb of a lowered module, from the disk cache (keyed by the module's text) or the
    IREE compiler. Returns (vmfb, from_disk, disk entry or None)."""
    from . import iree_compile
    from .disk_cache import entry_key
    from .kernel_index import disk as shared_disk

    disk = shared_disk()
    entry = entry_key(linalg_ir, flags) if disk is not None else None
    if disk is not None:
        failure = disk.get_failure(entry)
        if failure is not None:
            raise StepError(failure.get("step", "compile"), failure.get("message", "remembered failure"))
        blob = disk.get(entry)
        if blob is not None:
            return blob, True, entry
    try:
        vmfb = iree_compile.compile_to_vmfb(linalg_ir, list(flags))
    except iree_compile.IreeCompileError as e:
        if disk is not None and not getattr(e, "transient", False):
            disk.put_failure(entry, "compile", first_line(str(e)))
        raise StepError("compile", str(e)) from None
    if disk is not None:
        disk.put(entry, vmfb)
    return vmfb, False, entry


class _Dump:
    """TORCH_MLIR_EAGER_DUMP_DIR: per new key, the modules, the compiler's verdict, a reproducer."""

    def __init__(self, recipe: Recipe, scalars=()):
        root = os.environ.get(ENV_DUMP_DIR)
        self.dir = None
        if not root:
            return
        from . import repro

        self.dir = repro.dump_dir_for(root, recipe)
        repro.write_reproducer(self.dir, recipe, scalars)

    def write(self, name, text):
        if self.dir is not None:
            with open(os.path.join(self.dir, name), "w") as f:
                f.write(text)
