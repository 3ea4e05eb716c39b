"""The life of an aten op on TorchMLIRTensors.

    dispatch(func, args, kwargs)
      special     copy_/clone/_to_copy of dense tensors share the buffer,   -> metadata call
                  .cpu() downloads, squeeze_/t_/resize_ change metadata      (transfer: fallback)
      VIEW        new view metadata over the same device storage            -> metadata call
      NATIVE      random ops, values read back to Python: run in PyTorch    -> fallback call
      otherwise   key   = the op + argument metadata + scalar values (nothing built yet)
                  entry = cache[key]; on a miss compiler.build makes a Kernel or a Fallback
                  Kernel:   run it on the device buffers                     -> compiled call
                            fresh results become new tensors; new values of
                            written inputs replace their storages' buffers
                  Fallback: run in PyTorch on host copies, results back      -> fallback call

Every intercepted call is counted exactly once, in `record`.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.utils._pytree import tree_unflatten

from . import compiler, layout
from .config import config
from .fallback import HostCopies, run_native, upload
from .kernel import Kernel
from .kernel_cache import CACHE, STATS, Fallback, Pending
from .lowering import Slot, TensorSpec
from .ops import NATIVE, VIEW, classify
from .tensor import TorchMLIRTensor, DEVICE_TYPE

aten = torch.ops.aten

COMPILED, METADATA = "compiled_calls", "metadata_calls"
COMPILING = Fallback("compiling", "kernel is compiling in the background")


def dispatch(func, args, kwargs):
    kind = classify(func)
    special = _SPECIAL.get(func)
    if special is None and kind.inplace_view:
        special = _inplace_view
    if special is not None:
        result, outcome = special(func, kind, args, kwargs)
    elif kind.kind == VIEW:
        result, outcome = run_view(func, args, kwargs), METADATA
    elif kind.kind == NATIVE:
        step = "transfer" if func is aten._local_scalar_dense.default else "unsupported"
        result, outcome = run_native(func, kind, args, kwargs), Fallback(step, kind.reason)
    else:
        result, outcome = run_op(func, kind, args, kwargs)
    record(kind.name, outcome)
    return result


def run_op(func, kind, args, kwargs):
    call = abstract(func, kind, args, kwargs)
    entry = lookup(call)
    if isinstance(entry, Kernel):
        if config.validate and not entry.validated:
            return run_validated(entry, call, func, kind, args, kwargs)
        return run_kernel(entry, call), COMPILED if entry.launches else METADATA
    return run_native(func, kind, args, kwargs), entry if isinstance(entry, Fallback) else COMPILING


def record(op_name: str, outcome):
    if isinstance(outcome, Fallback):
        STATS.fallback(op_name, outcome.step, outcome.reason)
    else:
        STATS.call(outcome)


# ---- the key ----------------------------------------------------------------------------------
class OpCall:
    """An op call abstracted: its key, its device tensor inputs (the kernel's inputs, in slot
    order), and, built only on a miss, the argument template."""

    __slots__ = ("func", "kind", "key", "tensors", "device", "args", "kwargs")

    def __init__(self, func, kind, key, tensors, device, args, kwargs):
        self.func, self.kind, self.key, self.tensors, self.device = func, kind, key, tensors, device
        self.args, self.kwargs = args, kwargs

    def template(self):
        """(args, kwargs) with each tensor replaced by its Slot, in the same order as the key."""
        slots: dict = {}

        def visit(x):
            if isinstance(x, torch.Tensor):
                if id(x) not in slots:
                    slots[id(x)] = len(slots)
                return Slot(slots[id(x)])
            if isinstance(x, (list, tuple)):
                return type(x)(visit(v) for v in x)
            if isinstance(x, torch.device) and x.type == DEVICE_TYPE:
                return torch.device("cpu")
            return x

        t_args = tuple(visit(a) for a in self.args)
        t_kwargs = {name: visit(self.kwargs[name]) for name in sorted(self.kwargs)}
        return _normalize_dims(self.kind, self.args, t_args, t_kwargs)

    def recipe(self) -> compiler.Recipe:
        specs = [TensorSpec(tuple(t.shape), tuple(t.stride()), t.dtype) for t in self.tensors]
        return compiler.Recipe(self.kind.name, self.func, self.kind, self.template(), specs, self.device, self.key)


def _normalize_dims(kind, args, t_args, t_kwargs):
    """Negative `dim`/`dims` arguments made non-negative for the graph (torch-mlir mishandles
    some negative dims: scatter_add with dim=-1 aborts the lowering)."""
    names = kind.arg_names
    if not args or not isinstance(args[0], torch.Tensor) or not any(n in ("dim", "dims") for n in names):
        return t_args, t_kwargs
    rank = max(args[0].dim(), 1)

    def norm(v):
        if isinstance(v, int) and not isinstance(v, bool) and v < 0:
            return v + rank
        if isinstance(v, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            return type(v)(x + rank if x < 0 else x for x in v)
        return v

    t_args = tuple(norm(a) if i < len(names) and names[i] in ("dim", "dims") else a for i, a in enumerate(t_args))
    t_kwargs = {k: norm(v) if k in ("dim", "dims") else v for k, v in t_kwargs.items()}
    return t_args, t_kwargs


def abstract(func, kind, args, kwargs) -> OpCall:
    """The key of a call and its tensor inputs. Tensors: dtype, shape, strides; scalars: type
    and value; lists: their length. Nothing is built here: this runs on every call."""
    tensors: list = []
    slots: dict = {}
    key: list = [func]
    cpu_scalars = None

    def visit(x):
        nonlocal cpu_scalars
        if isinstance(x, TorchMLIRTensor):
            slot = slots.get(id(x))
            if slot is None:
                slots[id(x)] = len(tensors)
                tensors.append(x)
                key.append(x._spec)
            else:
                key.append(("same", slot))
        elif isinstance(x, (list, tuple)):
            key.append((type(x), len(x)))
            for v in x:
                visit(v)
        elif isinstance(x, torch.Tensor):
            if x.dim() != 0 or x.device.type != "cpu":
                raise RuntimeError(
                    f"Expected all tensors to be on the same device, but found at least two "
                    f"devices, {DEVICE_TYPE}:0 and {x.device}! ({kind.name}; only 0-dim CPU "
                    f"tensors may be mixed with TorchMLIRTensors)"
                )
            slots[id(x)] = len(tensors)
            cpu_scalars = (cpu_scalars or []) + [len(tensors)]
            tensors.append(x)
            key.append((x.dtype, (), ()))
        elif isinstance(x, float):
            key.append((float, x.hex()))
        elif isinstance(x, torch.device) and x.type == DEVICE_TYPE:
            key.append(DEVICE_TYPE)
        else:
            key.append((type(x), x))

    for a in args:
        visit(a)
    if kwargs:
        for name in sorted(kwargs):
            key.append(name)
            visit(kwargs[name])
    device = None
    for t in tensors:
        if isinstance(t, TorchMLIRTensor):
            d = t._storage_ref.device
            if device is None:
                device = d
            elif d is not device:
                raise RuntimeError(
                    f"Expected all tensors to be on the same IREE device, but found "
                    f"{device.driver} and {d.driver} ({kind.name})"
                )
    if cpu_scalars:  # 0-dim CPU tensors join the op as device inputs
        for slot in cpu_scalars:
            tensors[slot] = TorchMLIRTensor(tensors[slot], device=device.driver)
    key.append(device.driver)
    return OpCall(func, kind, tuple(key), tensors, device, args, kwargs)


# ---- the cache --------------------------------------------------------------------------------
_pool = None
_pool_lock = threading.Lock()


def lookup(call: OpCall):
    """Kernel | Fallback | Pending for the call's key; compiles on a miss."""
    entry = CACHE.get(call.key)
    if entry is not None:
        STATS.lookup(hit=True)
        if isinstance(entry, Pending):
            return entry.future.result() if entry.future.done() else entry
        return entry
    STATS.lookup(hit=False)
    if config.async_compile:
        return _compile_in_background(call)
    recipe = call.recipe()
    entry, _ = CACHE.get_or_build(call.key, lambda: _build_outside_dispatch(recipe))
    return entry


def _build_outside_dispatch(recipe):
    """Build on a compile thread: tracing needs PyTorch's dispatch state as it is outside any
    __torch_dispatch__ (functionalization misbehaves when nested in one)."""
    return _compile_pool().submit(compiler.build, recipe).result()


def _compile_pool():
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                import os

                _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="tme-compile")
    return _pool


def _compile_in_background(call: OpCall):
    pool = _compile_pool()
    with _pool_lock:
        if call.key in CACHE._entries:
            return CACHE.get(call.key)
        recipe = call.recipe()

        def job():
            entry = compiler.build(recipe)
            CACHE.set(recipe.key, entry)
            return entry

        pending = Pending(pool.submit(job))
        if not pending.future.done():
            CACHE.set(call.key, pending)
        return pending


def synchronize_compiles():
    """Wait for every background compile to finish."""
    for key, entry in CACHE.entries():
        if isinstance(entry, Pending):
            entry.future.result()


# ---- running a kernel -------------------------------------------------------------------------
def run_kernel(kernel: Kernel, call: OpCall):
    plan = kernel.plan
    tensors = call.tensors
    outs = iter(kernel([dense_buffer(tensors[i]) for i in plan.live_inputs]))
    device = call.device
    fresh = [
        TorchMLIRTensor._from_buffer(device, spec.dtype, next(outs) if spec.numel else None, spec.shape, spec.stride)
        for spec in plan.out_specs
    ]
    for slot, shape in zip(plan.live_writes, plan.live_write_shapes):
        dst = tensors[slot]
        if dst._spec[1] != shape:  # out= tensors are resized to the result, as PyTorch does
            dst._resize(shape)
        write(dst, next(outs))
    if plan.single_fresh:  # the common case: one fresh tensor
        return fresh[0]
    leaves = [
        fresh[v] if how == "out" else tensors[v] if how == "arg" else v
        for how, v in plan.leaves
    ]
    return tree_unflatten(leaves, plan.tree)


def dense_buffer(t: TorchMLIRTensor):
    """The tensor's values as a dense device buffer of its shape: the storage itself when the
    tensor is its whole storage, else a compiled gather."""
    storage = t._storage_ref
    if t.is_dense():
        return storage.shaped(t._spec[1])
    size, stride, offset = tuple(t.shape), tuple(t.stride()), t.storage_offset()
    return run_layout_kernel(layout.gather_op(size, stride, offset), storage, [storage.shaped((storage.numel,))])


def write(dst: TorchMLIRTensor, value):
    """Make `value` (a dense buffer of dst's shape) dst's contents, seen by all its aliases."""
    storage = dst._storage_ref
    if dst.is_dense():
        storage.replace(value)
        return
    size, stride, offset = tuple(dst.shape), tuple(dst.stride()), dst.storage_offset()
    if layout.has_internal_overlap(size, stride):
        raise RuntimeError(
            "unsupported operation: more than one element of the written-to tensor refers to a "
            "single memory location. Please clone() the tensor before performing the operation."
        )
    flat = storage.shaped((storage.numel,))
    storage.replace(run_layout_kernel(layout.scatter_op(size, stride, offset), storage, [flat, value], value_shape=size))


def run_layout_kernel(op, storage, buffers, value_shape=None):
    """Run a gather/scatter kernel (compiled once per geometry) on `buffers`."""
    key = ("layout", op, storage.dtype, storage.numel, storage.device.driver)
    entry = CACHE.get(key)
    STATS.lookup(hit=entry is not None)
    if entry is None:
        specs = [TensorSpec((storage.numel,), (1,), storage.dtype)]
        if value_shape is not None:
            specs.append(TensorSpec(value_shape, layout.contiguous_strides(value_shape), storage.dtype))
        template = (tuple(Slot(i) for i in range(len(specs))), {})
        recipe = compiler.Recipe(op.__name__, op, None, template, specs, storage.device, key)
        entry, _ = CACHE.get_or_build(key, lambda: _build_outside_dispatch(recipe))
    if isinstance(entry, Kernel):
        return entry(buffers)[0]
    # no kernel for this geometry: do it on the host (correct, slow)
    host = [storage.device.download(b, storage.dtype, tuple(b.shape)) for b in buffers]
    return storage.device.upload(op(*host).contiguous())


# ---- validation mode --------------------------------------------------------------------------
def run_validated(kernel: Kernel, call: OpCall, func, kind, args, kwargs):
    """First run of a new kernel, checked against native PyTorch on the same inputs."""
    host = HostCopies(args, kwargs)
    expected = func(*host.args, **host.kwargs)
    result = run_kernel(kernel, call)
    problem = _compare(result, expected, host, kind)
    kernel.validated = True
    if problem is None:
        return result, COMPILED
    fallback = Fallback("validate", f"kernel disagrees with native PyTorch: {problem}")
    CACHE.set(call.key, fallback)
    STATS.mismatch()
    compiler.log.warning("%s: %s; kernel disabled for this key", kind.name, fallback.reason)
    host.write_back(kind.written, kind.arg_names)  # undo the kernel's writes
    return host.to_device(expected), fallback


def _compare(result, expected, host, kind):
    """None when the device result (and every written input) matches native, else a summary."""
    from torch.utils._pytree import tree_flatten

    def tensors(x):
        return [v for v in tree_flatten(x)[0] if isinstance(v, torch.Tensor)]

    pairs = list(zip(tensors(result), tensors(expected)))
    if kind.written:
        bound = dict(zip(kind.arg_names, host.args))
        bound.update(host.kwargs)
        for name in kind.written:
            for h in tensors(bound.get(name)):
                original = host.originals.get(id(h))
                if original is not None:
                    pairs.append((original, h))
    for got, want in pairs:
        got = got._host() if isinstance(got, TorchMLIRTensor) else got
        try:
            torch.testing.assert_close(got, want, equal_nan=True, check_stride=False)
        except AssertionError as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            return "; ".join(lines[:3])
    return None


# ---- views and special cases ------------------------------------------------------------------
_view_cache: dict = {}


def run_view(func, args, kwargs):
    """A view: new metadata over the first tensor argument's storage, computed on meta tensors."""
    base = next(a for a in args if isinstance(a, TorchMLIRTensor))
    key = (func,) + tuple(_view_key(a) for a in args) + tuple((k, _view_key(v)) for k, v in sorted(kwargs.items()))
    metas = _view_cache.get(key)
    if metas is None:
        meta_func = aten.view.default if func is aten._unsafe_view.default else func
        out = meta_func(*[_meta(a) for a in args], **{k: _meta(v) for k, v in kwargs.items()})
        flat = list(out) if isinstance(out, (list, tuple)) else [out]
        if any(m.dtype != base.dtype for m in flat):
            raise NotImplementedError(
                f"torch_mlir_eager: {func} reinterprets the storage as another dtype; such views "
                f"(view(dtype), view_as_real, view_as_complex) are not supported on TorchMLIRTensor. "
                f"Move the tensor to the host (.cpu()) for this op."
            )
        metas = (isinstance(out, (list, tuple)), type(out), [(tuple(m.shape), tuple(m.stride()), m.storage_offset()) for m in flat])
        _view_cache[key] = metas
    is_seq, seq_type, items = metas
    storage = base._storage_ref
    views = [TorchMLIRTensor._make(storage, size, stride, offset) for size, stride, offset in items]
    return seq_type(views) if is_seq else views[0]


def _view_key(x):
    if isinstance(x, TorchMLIRTensor):
        return (x.dtype, x._storage_ref.numel, x.shape, x.stride(), x.storage_offset())
    if isinstance(x, (list, tuple)):
        return tuple(_view_key(v) for v in x)
    if isinstance(x, float):
        return (float, x.hex())
    return (type(x), x)


def _meta(x):
    if isinstance(x, TorchMLIRTensor):
        s = x._storage_ref
        base = torch.empty((s.numel,), dtype=s.dtype, device="meta")
        return base.as_strided(x.shape, x.stride(), x.storage_offset())
    if isinstance(x, (list, tuple)):
        return type(x)(_meta(v) for v in x)
    return x


def _to_copy(func, kind, args, kwargs):
    (src,) = args
    target = kwargs.get("device")
    if target is not None and torch.device(target).type == "cpu":
        host = func(src._host(), **kwargs)
        return host, Fallback("transfer", "copy to the host (device -> cpu)")
    if _is_plain_copy(src, kwargs, allowed=("device", "layout", "non_blocking")):
        return _share(src), METADATA
    return run_op(func, kind, args, kwargs)


def _clone(func, kind, args, kwargs):
    src = args[0]
    fmt = kwargs.get("memory_format", args[1] if len(args) > 1 else None)
    if src.is_dense() and fmt in (None, torch.preserve_format, torch.contiguous_format):
        return _share(src), METADATA
    return run_op(func, kind, args, kwargs)


def _share(src: TorchMLIRTensor) -> TorchMLIRTensor:
    """A copy of a dense tensor: a new storage over the same buffer. Buffers are never written
    in place (a write replaces a storage's buffer), so sharing one is safe."""
    s = src._storage_ref
    return TorchMLIRTensor._from_buffer(s.device, s.dtype, s.buffer, tuple(src.shape))


def _is_plain_copy(src, kwargs, allowed):
    """True when _to_copy(src, **kwargs) changes nothing but the tensor's identity."""
    if not src.is_dense():
        return False
    for k, v in kwargs.items():
        if v is None:
            continue
        if k == "dtype":
            if v != src.dtype:
                return False
        elif k == "memory_format":
            if v not in (torch.preserve_format, torch.contiguous_format):
                return False
        elif k == "device":
            if torch.device(v).type != DEVICE_TYPE:
                return False
        elif k == "pin_memory":
            if v:
                return False
        elif k not in allowed:
            return False
    return True


def _copy_(func, kind, args, kwargs):
    dst, src = args[0], args[1]
    if not isinstance(dst, TorchMLIRTensor):  # copying device values into a CPU tensor
        dst.copy_(src._host())
        return dst, Fallback("transfer", "copy to the host (device -> cpu)")
    if not isinstance(src, TorchMLIRTensor):  # host -> device: allowed for copy_ at any size
        src = upload(src.detach(), dst._storage_ref.device)
        args = (dst, src) + tuple(args[2:])
    if src.shape == dst.shape and src.dtype == dst.dtype and src._storage_ref.device is dst._storage_ref.device:
        if layout.has_internal_overlap(tuple(dst.shape), tuple(dst.stride())) and dst.numel() > 1:
            raise RuntimeError(
                "unsupported operation: more than one element of the written-to tensor refers to a "
                "single memory location. Please clone() the tensor before performing the operation."
            )
        if dst.numel() == 0:
            return dst, METADATA
        plain = src.is_dense() and dst.is_dense()
        write(dst, dense_buffer(src))
        return dst, METADATA if plain else COMPILED
    return run_op(func, kind, args, kwargs)


def _resize_(func, kind, args, kwargs):
    t, size = args[0], tuple(args[1])
    if size == tuple(t.shape):
        return t, METADATA
    grows = t.storage_offset() + math.prod(size) > t._storage_ref.numel
    t._resize(size)
    if grows:  # the storage was copied through the host to grow it
        return t, Fallback("transfer", "resize_ grew the storage through the host")
    return t, METADATA


def _inplace_view(func, kind, args, kwargs):
    """squeeze_, unsqueeze_, t_, transpose_, as_strided_, ...: new metadata for `self` itself."""
    t = args[0]
    meta = _meta(t)
    func(meta, *[_meta(a) for a in args[1:]], **kwargs)
    t._set_metadata(tuple(meta.shape), tuple(meta.stride()), meta.storage_offset())
    return t, METADATA


def _set_(func, kind, args, kwargs):
    raise RuntimeError(f"torch_mlir_eager: {kind.name} (changing a tensor's storage) is not supported")


def _lazy_view_as_op(op):
    """_conj/_neg_view mark a lazy conjugation/negation bit that a device tensor does not carry:
    compute the values instead (a copy, not an alias)."""

    def handler(func, kind, args, kwargs):
        return run_op(op, classify(op), args, kwargs)

    return handler


def _known_miscompile(reason, predicate):
    """An op whose compiled form gives wrong numbers in some uses: run those natively.
    `predicate(bound)` gets the arguments by schema name."""

    def handler(func, kind, args, kwargs):
        bound = dict(zip(kind.arg_names, args))
        bound.update(kwargs)
        if predicate(bound):
            return run_native(func, kind, args, kwargs), Fallback("unsupported", reason)
        return run_op(func, kind, args, kwargs)

    return handler


_SPECIAL = {
    aten._conj.default: _lazy_view_as_op(aten.conj_physical.default),
    aten._neg_view.default: _lazy_view_as_op(aten.neg.default),
    aten._embedding_bag.default: _known_miscompile(
        "known miscompile: torch-mlir ignores per_sample_weights",
        lambda bound: bound.get("per_sample_weights") is not None,
    ),
    aten._embedding_bag_forward_only.default: _known_miscompile(
        "known miscompile: torch-mlir ignores per_sample_weights",
        lambda bound: bound.get("per_sample_weights") is not None,
    ),
    aten._to_copy.default: _to_copy,
    aten.clone.default: _clone,
    aten.copy_.default: _copy_,
    aten.resize_.default: _resize_,
    aten.set_.source_Tensor: _set_,
    aten.set_.source_Storage: _set_,
    aten.set_.source_Storage_storage_offset: _set_,
    aten._unsafe_view.default: lambda func, kind, args, kwargs: (run_view(func, args, kwargs), METADATA),
}
