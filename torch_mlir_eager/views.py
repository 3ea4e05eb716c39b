"""Views: new metadata (dtype, sizes, strides, offset) over the same device storage, no kernel.

PyTorch's own meta kernels compute the metadata: the view op runs on a meta tensor with the
same geometry over a meta storage of the same size. Storages are bytes, so a view may read
them in another dtype (`view(torch.int32)`, `view_as_real`, `.real`/`.imag`) like PyTorch's.
The metadata is memoized per (op, argument geometry) in a bounded LRU.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from .kernel_cache import STATS
from .tensor import TorchMLIRTensor, _QUANTIZED_INT

aten = torch.ops.aten

MEMO_SIZE = 4096
_memo: OrderedDict = OrderedDict()
_memo_lock = threading.Lock()


def clear_memo():
    with _memo_lock:
        _memo.clear()


def memo_size() -> int:
    return len(_memo)


NOT_A_VIEW = object()  # an op that may alias returned a copy (reshape, contiguous of a strided tensor)


def run_view(func, args, kwargs):
    """A view of the first tensor argument's storage. NOT_A_VIEW when PyTorch gives a copy for
    these arguments (composite ops such as reshape and contiguous reach dispatch when called
    from inside it): the caller then computes it. None when the base is quantized per channel
    (its quantizer depends on the view: such views run natively, as copies)."""
    base = args[0] if type(args[0]) is TorchMLIRTensor else next(a for a in args if isinstance(a, TorchMLIRTensor))
    if base._qparams is not None and not base._qparams.per_tensor:
        return None
    key = [func]
    for a in args:
        t = type(a)
        if t is TorchMLIRTensor:
            key.append((a._spec, a._storage_ref.nbytes, a.storage_offset()))
        elif t is int:
            key.append(a)  # ints stand for themselves; other types carry their type (True, 1.0)
        elif (t is list or t is tuple) and all(type(v) is int for v in a):
            key.append((t, tuple(a)))
        else:
            key.append(_view_key(a))
    if kwargs:
        key.extend((k, _view_key(v)) for k, v in sorted(kwargs.items()))
    key = tuple(key)
    metas = _memo.get(key)
    if metas is None:
        metas = _view_metadata(func, args, kwargs, base)
        with _memo_lock:
            _memo[key] = metas
            while len(_memo) > MEMO_SIZE:
                _memo.popitem(last=False)
                STATS.evict("view_memo")
    else:
        try:
            _memo.move_to_end(key)
        except KeyError:  # evicted by another thread meanwhile
            pass
    is_seq, seq_type, items = metas
    if items is None:
        return NOT_A_VIEW
    storage = base._storage_ref
    qparams = base._qparams
    views = [TorchMLIRTensor._make_known(storage, dtype, size, stride, meta, offset, qparams)
             for dtype, size, stride, offset, meta in items]
    return seq_type(views) if is_seq else views[0]


def _view_metadata(func, args, kwargs, base):
    meta_func = aten.view.default if func is aten._unsafe_view.default else func
    meta_args = [meta(a) for a in args]
    out = meta_func(*meta_args, **{k: meta(v) for k, v in kwargs.items()})
    flat = list(out) if isinstance(out, (list, tuple)) else [out]
    meta_base = meta_args[next(i for i, a in enumerate(args) if a is base)]
    if not all(m.untyped_storage()._cdata == meta_base.untyped_storage()._cdata for m in flat):
        return isinstance(out, (list, tuple)), type(out), None  # a copy, not a view
    proxy = _proxy_dtype(base.dtype)

    def dtype_of(m):  # a quantized base is viewed through its integer dtype
        return base.dtype if proxy is not base.dtype and m.dtype == proxy else m.dtype

    items = []
    for m in flat:
        dtype, size, stride, offset = dtype_of(m), tuple(m.shape), tuple(m.stride()), m.storage_offset()
        check_in_storage(dtype, size, stride, offset, base._storage_ref.nbytes)
        items.append((dtype, size, stride, offset, TorchMLIRTensor._metadata_of(dtype, size, stride, offset)))
    return isinstance(out, (list, tuple)), type(out), items


def _view_key(x):
    if isinstance(x, TorchMLIRTensor):
        return (x._spec, x._storage_ref.nbytes, x.storage_offset())
    if isinstance(x, (list, tuple)):
        return tuple(_view_key(v) for v in x)
    if isinstance(x, float):
        return (float, x.hex())
    return (type(x), x)


def _proxy_dtype(dtype):
    """The dtype meta tensors stand in with (quantized dtypes have no meta tensors)."""
    return _QUANTIZED_INT.get(dtype, dtype)


def meta(x):
    """A meta tensor with x's geometry over a meta storage of x's storage's size."""
    if isinstance(x, TorchMLIRTensor):
        dtype = _proxy_dtype(x.dtype)
        base = torch.empty((x._storage_ref.nbytes // dtype.itemsize,), dtype=dtype, device="meta")
        return base.as_strided(x.shape, x.stride(), x.storage_offset())
    if isinstance(x, (list, tuple)):
        return type(x)(meta(v) for v in x)
    return x


def run_inplace_view(func, kind, args, kwargs):
    """squeeze_, unsqueeze_, t_, transpose_, as_strided_, ...: new metadata for `self` itself."""
    t = args[0]
    m = meta(t)
    func(m, *[meta(a) for a in args[1:]], **kwargs)
    check_in_storage(t.dtype, tuple(m.shape), tuple(m.stride()), m.storage_offset(), t._storage_ref.nbytes)
    t._set_metadata(tuple(m.shape), tuple(m.stride()), m.storage_offset())
    return t


def check_in_storage(dtype, size, stride, offset, nbytes):
    """Raise PyTorch's error when a view reaches outside its storage (meta storages do not check;
    a kernel would read or write past the device buffer)."""
    if 0 in size:
        return
    itemsize = dtype.itemsize
    needed = (offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1) * itemsize
    if offset < 0 or needed > nbytes or any(s < 0 for s in stride):
        raise RuntimeError(
            f"setStorage: sizes {list(size)}, strides {list(stride)}, storage offset {offset}, and itemsize "
            f"{itemsize} requiring a storage size of {needed} are out of bounds for storage of size {nbytes}")
