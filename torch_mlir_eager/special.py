"""Calls with a path of their own: copies that can share a buffer, copies to and from the host,
metadata changes of `self` (resize_, squeeze_, t_, ...), storage changes (refused), lazy
conjugation/negation bits, and known miscompiles. Each handler returns (result, outcome), where
the outcome is what `dispatch.record` counts.
"""

from __future__ import annotations

import math

import torch

from . import dispatch, guards, views
from .decomposed import FUSED
from .buffers import dense_buffer, write
from .fallback import HostCopies, run_native, upload
from .kernel_cache import COMPILED, METADATA, Fallback
from .layout import has_internal_overlap
from .ops import classify
from .tensor import DEVICE_TYPE, DeviceStorage, TorchMLIRTensor

aten = torch.ops.aten
TO_HOST = Fallback("transfer", "copy to the host (device -> cpu)")
OTHER_DEVICE = Fallback("transfer", "a result on another device: run on host copies")


def handler_for(func, kind):
    """The special handler of `func`, or None."""
    handler = _HANDLERS.get(func)
    if handler is None and kind.inplace_view:
        return _inplace_view
    return handler


def _to_copy(func, kind, args, kwargs):
    (src,) = args
    if targets_other_device(kwargs):
        return run_on_host(func, kind, args, kwargs)
    if _shares_buffer(src, kwargs):
        return share(src), METADATA
    return dispatch.run_op(func, kind, args, kwargs)


def targets_other_device(kwargs) -> bool:
    """Whether a call's `device=` asks for a result off this device (`ones_like(d, device="cpu")`,
    `d.to("meta")`)."""
    target = kwargs.get("device")
    return target is not None and torch.device(target).type != DEVICE_TYPE


def run_on_host(func, kind, args, kwargs):
    """An op asked for a result on another device (the CPU, meta): PyTorch runs it on host
    copies of the device tensors (fallback.HostCopies: each storage read once and counted, none
    for a `*_like` factory's input) and its result stays there, as `.to("cpu")` does."""
    host = HostCopies(args, kwargs, skip_read=args[0] if not kind.reads_self and args else None)
    result = func(*host.args, **host.kwargs)
    return result, TO_HOST if torch.device(kwargs["device"]).type == "cpu" else OTHER_DEVICE


def _clone(func, kind, args, kwargs):
    src = args[0]
    fmt = kwargs.get("memory_format", args[1] if len(args) > 1 else None)
    if _shares_buffer(src, {"memory_format": fmt}):
        return share(src), METADATA
    return dispatch.run_op(func, kind, args, kwargs)


def share(src: TorchMLIRTensor) -> TorchMLIRTensor:
    """A copy of a tensor that covers its storage: a new storage over the same buffer, same
    strides. Buffers are never written in place (a write replaces a storage's buffer), so
    sharing one is safe."""
    s = src._storage_ref
    storage = DeviceStorage(s.device, s.nbytes, s.buffer)
    return TorchMLIRTensor._make(storage, src.dtype, tuple(src.shape), tuple(src.stride()), 0, qparams=src._qparams)


def _shares_buffer(src: TorchMLIRTensor, kwargs) -> bool:
    """True when _to_copy/clone(src, **kwargs) may return a tensor sharing src's buffer: it
    changes nothing but the tensor's identity."""
    if not src.covers_storage():
        return False
    for k, v in kwargs.items():
        if v is None:
            continue
        if k == "dtype":
            if v != src.dtype:
                return False
        elif k == "memory_format":
            if v is torch.preserve_format:
                continue
            if v is torch.contiguous_format:
                if not src.is_row_major():
                    return False
            elif v is torch.channels_last or v is torch.channels_last_3d:
                want = torch.empty(src.shape, device="meta", memory_format=v).stride()
                if tuple(want) != tuple(src.stride()):
                    return False
            else:
                return False
        elif k == "device":
            if torch.device(v).type != DEVICE_TYPE:
                return False
        elif k == "pin_memory":
            if v:
                return False
        elif k not in ("layout", "non_blocking"):
            return False
    return True


def _copy_(func, kind, args, kwargs):
    dst, src = args[0], args[1]
    if not isinstance(dst, TorchMLIRTensor):  # device values into a CPU tensor
        dst.copy_(src._host())
        return dst, TO_HOST
    if not isinstance(src, TorchMLIRTensor):  # host -> device: allowed for copy_ at any size
        src = upload(src.detach(), dst._storage_ref.device)
        args = (dst, src) + tuple(args[2:])
    elif src._storage_ref is dst._storage_ref and guards.overlap_in_part(dst, src):
        return run_native(func, kind, args, kwargs), Fallback("guard", guards.OVERLAP_REASON)  # PyTorch raises
    same_layout = src._perm == dst._perm  # dense_buffer(src) is then laid out as dst wants
    if (src.shape == dst.shape and src.dtype == dst.dtype and same_layout and dst._qparams is None
            and src._storage_ref.device is dst._storage_ref.device):
        if dst.numel() > 1 and has_internal_overlap(tuple(dst.shape), tuple(dst.stride())):
            raise RuntimeError(
                "unsupported operation: more than one element of the written-to tensor refers to a "
                "single memory location. Please clone() the tensor before performing the operation."
            )
        if dst.numel() == 0:
            return dst, METADATA
        plain = src.covers_storage() and dst.covers_storage()
        write(dst, dense_buffer(src))
        return dst, METADATA if plain else COMPILED
    return dispatch.run_op(func, kind, args, kwargs)


def _resize_(func, kind, args, kwargs):
    t, size = args[0], tuple(args[1])
    fmt = kwargs.get("memory_format", args[2] if len(args) > 2 else None)
    # the strides PyTorch gives: row-major, or those of the memory format asked for
    stride = tuple(torch.empty(size, device="meta", memory_format=fmt).stride()) if fmt is not None else None
    if size == tuple(t.shape) and (stride is None or stride == tuple(t.stride())):
        return t, METADATA
    nbytes = t._storage_ref.nbytes
    grows = (t.storage_offset() + math.prod(size)) * t.element_size() > nbytes > 0
    t._resize(size, stride)
    if grows:  # the storage was copied through the host to grow it (an empty one is allocated)
        return t, Fallback("transfer", "resize_ grew the storage through the host")
    return t, METADATA


def _inplace_view(func, kind, args, kwargs):
    return views.run_inplace_view(func, kind, args, kwargs), METADATA


def _set_(func, kind, args, kwargs):
    raise RuntimeError(f"torch_mlir_eager: {kind.name} (changing a tensor's storage) is not supported")


def _lazy_view_as_op(op):
    """_conj/_neg_view mark a lazy conjugation/negation bit that a device tensor does not carry:
    compute the values instead (a copy, not an alias)."""

    def handler(func, kind, args, kwargs):
        return dispatch.run_op(op, classify(op), args, kwargs)

    return handler


def _known_miscompile(reason, predicate):
    """An op whose compiled form gives wrong numbers in some uses: run those natively.
    `predicate(bound)` gets the arguments by schema name."""

    def handler(func, kind, args, kwargs):
        bound = dict(zip(kind.arg_names, args))
        bound.update(kwargs)
        if predicate(bound):
            return run_native(func, kind, args, kwargs), Fallback("guard", reason)
        return dispatch.run_op(func, kind, args, kwargs)

    return handler


def _fused(func, kind, args, kwargs):
    """A fused op no compiler lowers: its decomposition, through dispatch."""
    result = dispatch.run_decomposed(func, kind, args, kwargs)
    if result is None:
        return run_native(func, kind, args, kwargs), Fallback("unsupported", "fused op; its decomposition failed")
    return result, METADATA


def _unsafe_view(func, kind, args, kwargs):
    return views.run_view(func, args, kwargs), METADATA


_EMBEDDING_BAG_WEIGHTS = _known_miscompile(
    "known miscompile: torch-mlir ignores per_sample_weights",
    lambda bound: bound.get("per_sample_weights") is not None,
)

# Ops whose handler, when it does not answer itself, runs the op through dispatch.run_op: a
# key's runner may then serve them (dispatch._runnable). Their cheaper answers (sharing a buffer,
# a copy to the host) depend on arguments that are in the key (a device, a dtype) or are a
# choice, not a need (sharing instead of copying).
RUNNABLE = frozenset({aten._to_copy.default, aten.clone.default})

_HANDLERS = {
    aten._conj.default: _lazy_view_as_op(aten.conj_physical.default),
    aten._neg_view.default: _lazy_view_as_op(aten.neg.default),
    aten._embedding_bag.default: _EMBEDDING_BAG_WEIGHTS,
    aten._embedding_bag_forward_only.default: _EMBEDDING_BAG_WEIGHTS,
    aten._to_copy.default: _to_copy,
    aten.clone.default: _clone,
    aten.copy_.default: _copy_,
    aten.resize_.default: _resize_,
    aten.set_.source_Tensor: _set_,
    aten.set_.source_Storage: _set_,
    aten.set_.source_Storage_storage_offset: _set_,
    aten._unsafe_view.default: _unsafe_view,
    **{op: _fused for op in FUSED},
}
