"""Device buffers for kernels: a tensor's values as a dense kernel input, and writes into a tensor.

A kernel takes each input as a dense buffer in the tensor's physical order (see layout.py) and
returns each written input's new values the same way. A tensor that is its whole storage is
passed as it is and written by replacing the storage's buffer; any other tensor goes through a
compiled gather or scatter over the flat storage, read in the tensor's own dtype.
"""

from __future__ import annotations

import threading

from . import compile_service, layout
from .kernel import Kernel
from .kernel_cache import CACHE, STATS, Fallback
from .recipe import Recipe, Slot, TensorSpec


# (spec, offset, storage bytes, device) -> the gather Kernel of such a tensor: the cache's
# entry, found without building its key. Bounded; emptied whenever the cache drops a kernel.
_GATHERS: dict = {}
MAX_GATHERS = 1024


def dense_buffer(t):
    """The tensor's values as a dense device buffer in its physical order: the storage itself
    when the tensor covers it, else a compiled gather."""
    storage = t._storage_ref
    if t._whole_nbytes == storage.nbytes:
        return storage.view(t.dtype, t._phys_shape)
    memo = (t._spec, t.storage_offset(), storage.nbytes, storage.device)
    kernel = _GATHERS.get(memo)
    if kernel is not None:
        STATS.lookup(hit=True)
        return kernel([storage.flat(t.dtype)])[0]
    return run_layout_kernel(gather_of(t), storage, t.dtype, [storage.flat(t.dtype)], memo)


def forget_gathers():
    _GATHERS.clear()


def gather_of(t) -> layout.LayoutOp:
    """The gather that reads `t`'s values, in its physical order, out of its flat storage."""
    size, stride = layout.permute_geometry(t.shape, t.stride(), t._perm)
    return layout.gather_op(size, stride, t.storage_offset())


def scatter_of(dst) -> layout.LayoutOp:
    """The scatter that writes values (in dst's physical order) into dst's flat storage."""
    size, stride = layout.permute_geometry(dst.shape, dst.stride(), dst._perm)
    return layout.scatter_op(size, stride, dst.storage_offset())


def write(dst, value):
    """Make `value` (a dense buffer of dst's values in its physical order) dst's contents, seen
    by all its aliases."""
    storage = dst._storage_ref
    if dst._whole_nbytes == storage.nbytes:
        storage.replace(value, dst.dtype)
        return
    if layout.has_internal_overlap(tuple(dst.shape), tuple(dst.stride())):
        raise RuntimeError(
            "unsupported operation: more than one element of the written-to tensor refers to a "
            "single memory location. Please clone() the tensor before performing the operation."
        )
    op = scatter_of(dst)
    dtype = dst.dtype
    if storage.nbytes % dtype.itemsize:  # a tail of bytes no element of this dtype covers
        storage.replace(_host_layout(op, storage, dtype, [storage.flat(dtype), value], whole=True))
        return
    storage.replace(run_layout_kernel(op, storage, dtype, [storage.flat(dtype), value]), dtype)


def layout_recipe(op: layout.LayoutOp, storage, dtype):
    """(key, Recipe) of a gather/scatter kernel over `storage` read as `dtype`."""
    flat_len = storage.nbytes // dtype.itemsize
    device = storage.device
    key = ("layout", op, dtype, flat_len, device.driver)
    specs = [TensorSpec((flat_len,), (1,), dtype)]
    if op.kind == "scatter":
        specs.append(TensorSpec(op.size, layout.contiguous_strides(op.size), dtype))
    template = (tuple(Slot(i) for i in range(len(specs))), {})
    return key, Recipe(op.__name__, op, template, specs, device.driver, tuple(device.compile_flags), key)


def run_layout_kernel(op: layout.LayoutOp, storage, dtype, buffers, memo=None):
    """Run a gather/scatter kernel (compiled once per geometry) on `buffers`; a gather's kernel
    is remembered under `memo`."""
    key, recipe = layout_recipe(op, storage, dtype)
    entry = CACHE.get(key)
    STATS.lookup(hit=entry is not None)
    if entry is None:
        entry = compile_service.build_blocking(recipe, (), storage.device)
    if isinstance(entry, Kernel):
        if memo is not None:
            if len(_GATHERS) >= MAX_GATHERS:
                _GATHERS.clear()
            _GATHERS[memo] = entry
        return entry(buffers)[0]
    reason = entry.reason if isinstance(entry, Fallback) else "no kernel"
    return _host_layout(op, storage, dtype, buffers, whole=False, reason=reason)


# A gather/scatter with no kernel runs on the host: the call it serves is then no longer a
# compiled call. dispatch.record reads (and clears) this per-thread note.
_host_work = threading.local()


def take_host_work_note():
    """The reason the current call did host work for a layout op, or None; clears it."""
    reason = getattr(_host_work, "reason", None)
    if reason is not None:
        _host_work.reason = None
    return reason


def _host_layout(op, storage, dtype, buffers, whole: bool, reason: str = "storage size is not a multiple of the dtype"):
    """The gather/scatter done on host copies: correct, slow, and counted as host work."""
    _host_work.reason = f"{op.kind} on the host ({reason})"
    device = storage.device
    flat_bytes = storage.to_host()
    flat = flat_bytes[: flat_bytes.numel() // dtype.itemsize * dtype.itemsize].view(dtype)
    if op.kind == "gather":
        values = op(flat).contiguous()
        return device.view(device.upload(values), dtype, tuple(values.shape))
    values = device.download(buffers[1].get_buffer(), buffers[1].byte_length).view(dtype)
    STATS.host_transfer(buffers[1].byte_length)
    flat = op(flat, values)
    if whole:  # keep the tail bytes that no element covers
        flat_bytes = flat_bytes.clone()
        flat_bytes[: flat.numel() * dtype.itemsize] = flat.reshape(-1).view(flat_bytes.dtype)
        return device.upload(flat_bytes)
    return device.view(device.upload(flat), dtype, (flat.numel(),))
