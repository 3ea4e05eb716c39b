"""The life of an aten op on TorchMLIRTensors.

    dispatch(func, args, kwargs)
      special    a path of its own (special.py): copies that share a buffer,    -> as it says
                 .cpu(), resize_, squeeze_/t_, ...
      VIEW       new metadata over the same device storage (views.py)          -> metadata
      NATIVE     random ops, values read back to Python: run in PyTorch on     -> fallback
                 host copies, written arguments uploaded back (fallback.py)
      otherwise  run_op:
                 key    the op + argument metadata + scalars (keys.py; nothing is built)
                 guard  a known-wrong kernel for these dtypes or values (guards.py) -> fallback
                 entry  cache[key]; a miss builds a Kernel or a Fallback
                        (compile_service.py: a compile worker runs compiler.py); a
                        pointwise or eval batch-norm call on row-major inputs looks
                        up its op's shape-generic kernel first (flat.py)
                 Kernel    its index inputs are bounds-checked (bounds.py); it runs on the
                           device buffers (buffers.py); fresh results become new tensors,
                           new values of written inputs replace their storages  -> compiled
                 Fallback  its decomposition, when it has one, runs through      -> metadata
                           dispatch, each part compiled on its own (decomposed.py);
                           else it runs in PyTorch on host copies, results back -> fallback

Every intercepted call is counted exactly once, in `record`; one that raises (PyTorch's error for
bad input) as a fallback whose step is "raises".
"""

from __future__ import annotations

from torch.utils._pytree import tree_unflatten

from . import bounds, compile_service, decomposed, flat, guards, prepack, runners, special, views
from .buffers import dense_buffer, take_host_work_note, write
from .config import config
from .fallback import run_native
from .kernel import Kernel
from .kernel_cache import CACHE, COMPILED, METADATA, STATS, Fallback, Pending
from .keys import OpCall, abstract
from .ops import FUNCTIONAL, NATIVE, VIEW, classify
from .recipe import first_line
from .tensor import TorchMLIRTensor
from .validation import run_validated

COMPILING = Fallback("compiling", "kernel is compiling in the background")
PER_CHANNEL_VIEW = Fallback("unsupported", "views of per-channel quantized tensors run natively (as copies)")


def dispatch(func, args, kwargs):
    kind = classify(func)
    fast = None  # the hit path: a key's prebuilt runner (runners.py)
    if _runnable(func, kind):
        fast = runners.fast_key(func, args, kwargs, kind.scalar_args)
        runner = runners.RUNNERS.get(fast) if fast is not None else None
        if runner is not None:
            result = runner(args)
            if result is not None:
                record_runner(kind.name, runner.outcome)
                return result
    try:
        result, outcome = run_call(func, kind, args, kwargs, fast)
    except Exception as e:  # PyTorch's error for bad input (from its meta function or its kernel)
        record(kind.name, Fallback("raises", first_line(f"{type(e).__name__}: {e}")))
        raise
    record(kind.name, outcome)
    return result


def run_call(func, kind, args, kwargs, fast=None):
    handler = special.handler_for(func, kind)
    if handler is None and kwargs and special.targets_other_device(kwargs):
        handler = special.run_on_host
    if handler is not None:
        return handler(func, kind, args, kwargs)
    if kind.kind == VIEW:
        result = views.run_view(func, args, kwargs)
        if result is views.NOT_A_VIEW:
            return run_op(func, kind, args, kwargs)
        if result is None:
            return run_native(func, kind, args, kwargs), PER_CHANNEL_VIEW
        return result, METADATA
    if kind.kind == NATIVE:
        return run_native(func, kind, args, kwargs), Fallback(kind.native_step, kind.reason)
    return run_op(func, kind, args, kwargs, fast)


_RUNNABLE: dict = {}


def _runnable(func, kind) -> bool:
    """Whether calls of `func` may have a runner (runners.py): compiled ops with no guard and
    no path of their own, or one that only ever adds cheaper answers before run_op (a runner
    then computes the copy that clone/_to_copy could have shared)."""
    ok = _RUNNABLE.get(func)
    if ok is None:
        handler = special.handler_for(func, kind)
        ok = _RUNNABLE[func] = (kind.kind not in (VIEW, NATIVE) and not kind.inplace_view
                                and kind.guard is None and not guards.is_value_checked(func)
                                and (handler is None or func in special.RUNNABLE))
    return ok


def run_op(func, kind, args, kwargs, fast=None):
    call = abstract(func, kind, args, kwargs)
    if call.host_only:
        return run_native(func, kind, args, kwargs), host_only_outcome(call)
    if kind.guard is not None and kind.guard.applies(call.tensors):
        return run_native(func, kind, args, kwargs), Fallback("guard", kind.guard.reason)
    problem = guards.call_guard(func, call)  # uint8, integer division by zero
    if problem is not None:
        return run_native(func, kind, args, kwargs), Fallback("guard", problem)
    entry, key, call = lookup(call)
    if isinstance(entry, Kernel):
        if entry.plan.uint8_out or guards.has_uint8(call):
            problem = guards.call_guard(func, call, tuple(spec.dtype for spec in entry.plan.out_specs))
            if problem is not None:
                return run_native(func, kind, args, kwargs), Fallback("guard", problem)
        if kind.bounds:
            problem = bounds.violation(kind, call)
            if problem is not None:  # PyTorch raises its own error (or gives its own result)
                return run_native(func, kind, args, kwargs), Fallback("bounds", problem)
        if config.validate and not entry.validated:
            return run_validated(entry, call, key, run_kernel)
        if fast is None and func in special.RUNNABLE and _runnable(func, kind):  # through its special path
            fast = runners.fast_key(func, args, kwargs, kind.scalar_args)
        if fast is not None and (entry.takes_scalars or not call.scalars):
            runners.install(fast, entry, call, args)
        return run_kernel(entry, call), COMPILED if entry.launches else METADATA
    if isinstance(entry, Fallback) and entry.step in decomposed.DECOMPOSABLE_STEPS and kind.kind == FUNCTIONAL:
        result = run_decomposed(func, kind, args, kwargs)
        if result is not None:
            return result, METADATA
    return run_native(func, kind, args, kwargs), entry if isinstance(entry, Fallback) else COMPILING


def run_decomposed(func, kind, args, kwargs):
    """The op run as its decomposition, each part through dispatch; None when it has none (or
    the decomposition fails: the caller then runs the op natively, which gives its error)."""
    try:
        result = decomposed.run(func, args, kwargs)
    except Exception as e:  # noqa: BLE001
        compile_service.log.debug("%s: eager decomposition failed (%s); running it natively", kind.name, e)
        return None
    if result is not None:
        STATS.decomposed_call(kind.name)
    return result


def record_runner(op_name: str, outcome):
    """record, for a runner's call: counted in this thread's counters, with no lock."""
    host_work = take_host_work_note()
    if host_work is None:
        STATS.mine()[outcome] += 1
    else:
        record(op_name, outcome, host_work)


def record(op_name: str, outcome, host_work=None):
    host_work = host_work or take_host_work_note()
    if host_work is not None and not isinstance(outcome, Fallback):
        outcome = Fallback("layout", host_work)
    if isinstance(outcome, Fallback):
        STATS.fallback(op_name, outcome.step, outcome.reason)
    else:
        STATS.call(outcome)


def host_only_outcome(call: OpCall) -> Fallback:
    from .device import COMPILED_DTYPES

    dtypes = sorted({str(t.dtype) for t in call.tensors if t.dtype not in COMPILED_DTYPES})
    return Fallback("unsupported", f"dtype {', '.join(dtypes)} has no IREE element type: runs natively")


# ---- the cache --------------------------------------------------------------------------------
def lookup(call: OpCall):
    """(Kernel | Fallback | Pending, the key it is cached under, the call it serves) for the
    call; builds on a miss. An eligible call (flat.py: pointwise, eval batch norm) is served by
    its op's shape-generic kernel when there is one; the call it serves is then the flat one."""
    flat_call = flat.flat_call(call)
    if flat_call is not None:
        entry, key = _lookup(flat_call)
        # a shape-generic kernel that validation caught disables the op's other kernels too: the
        # lowering is suspect, and a kernel of the call's shape would run unchecked in a later process
        if isinstance(entry, (Kernel, Pending)) or (isinstance(entry, Fallback) and entry.step == "validate"):
            return entry, key, flat_call
    entry, key = _lookup(call)
    return entry, key, call


def _lookup(call: OpCall):
    """A key whose op needs its scalars baked in leads to the key with their values."""
    entry = _cached(call.key, call, static=False)
    if entry is compile_service.STATIC_SCALARS:
        key = call.static_key()
        return _cached(key, call, static=True), key
    return entry, call.key


def _cached(key, call, static):
    entry = CACHE.get(key)
    if entry is not None:
        STATS.lookup(hit=True)
        if isinstance(entry, Pending):
            return entry.future.result() if entry.future.done() else entry
        return entry
    STATS.lookup(hit=False)
    recipe = call.recipe(static=static)
    scalars = () if static else call.scalars
    if config.async_compile:
        return compile_service.build_in_background(recipe, scalars, call.device)
    return compile_service.build_blocking(recipe, scalars, call.device)


def synchronize_compiles():
    """Wait for every background compile to finish."""
    compile_service.synchronize()


# ---- running a kernel -------------------------------------------------------------------------
def run_kernel(kernel: Kernel, call: OpCall):
    if kernel.flat:
        return flat.run(kernel, call)
    plan = kernel.plan
    tensors = call.tensors
    if kernel.packed_input is None:
        buffers = [dense_buffer(tensors[i]) for i in plan.live_inputs]
    else:  # a convolution's weight, pre-packed
        buffers = prepack.input_buffers(kernel, [tensors[i] for i in plan.live_inputs])
    outs = iter(kernel(buffers, call.scalars))
    device = call.device
    fresh = [
        TorchMLIRTensor._from_buffer(device, spec.dtype, next(outs) if spec.numel else None, spec.shape, spec.stride)
        for spec in plan.out_specs
    ]
    for slot, shape in zip(plan.writes, plan.write_shapes):
        if tensors[slot]._spec[1] != shape:  # out= tensors are resized to the result, as PyTorch does
            tensors[slot]._resize(shape)
    for slot in plan.live_writes:
        write(tensors[slot], next(outs))
    if plan.single_fresh:  # the common case: one fresh tensor
        return fresh[0]
    leaves = [
        fresh[v] if how == "out" else tensors[v] if how == "arg" else v
        for how, v in plan.leaves
    ]
    return tree_unflatten(leaves, plan.tree)
