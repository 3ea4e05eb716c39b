"""TorchMLIRTensor: a PyTorch tensor whose data lives in an IREE device buffer.

Like PyTorch itself, a tensor is *view metadata* (size, stride, storage offset) over a *storage*.
A `DeviceStorage` is flat: one dense 1-D run of elements held in an IREE device buffer. Every
alias of a storage (views, `detach`, in-place results) holds the same `DeviceStorage` object, so
replacing its buffer (what a write does) is seen through every alias at once.
"""

from __future__ import annotations

import torch
import torch.utils.backend_registration as _backend_registration

from .device import Device, get_device
from .layout import contiguous_strides as _contiguous_strides, physical_order

DEVICE_TYPE = "iree"
_DEVICE = None  # torch.device("iree", 0), once the device type is registered


class _IreeBackendModule:
    """`torch.iree`: what PyTorch asks of a device backend module. Random ops run natively on
    the host, so the device's random state is the CPU generator's."""

    @staticmethod
    def is_available():
        return True

    @staticmethod
    def device_count():
        return 1

    @staticmethod
    def current_device():
        return 0

    @staticmethod
    def _is_in_bad_fork():
        return False

    @staticmethod
    def get_rng_state(device="iree"):
        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(new_state, device="iree"):
        torch.set_rng_state(new_state)

    @staticmethod
    def manual_seed(seed):
        torch.default_generator.manual_seed(seed)  # random ops use the CPU generator

    @staticmethod
    def manual_seed_all(seed):
        torch.default_generator.manual_seed(seed)

    @staticmethod
    def synchronize(device=None):
        # kernels run asynchronously (queue.py): wait for every device's queue
        from . import synchronize

        synchronize()

    @staticmethod
    def get_amp_supported_dtype():
        # No autocast on this device: torch.autocast("iree", ...) warns and stays off. PyTorch
        # asks for this whenever it builds an autocast context for the accelerator, as
        # torch.utils.checkpoint does on every call, even for CPU tensors.
        return []


def _register_device_type():
    # Name PyTorch's PrivateUse1 device "iree" and give it the Python device guard and hooks that
    # autograd needs to run backward on tensors that report that device.
    if torch._C._get_privateuse1_backend_name() != DEVICE_TYPE:
        _backend_registration._setup_privateuseone_for_python_backend(
            DEVICE_TYPE, backend_module=_IreeBackendModule()
        )


_register_device_type()
_DEVICE = torch.device(DEVICE_TYPE, 0)


class DeviceStorage:
    """`nbytes` bytes in a device buffer, shared by every alias (views, `detach`, in-place
    results, views of another dtype). Like PyTorch's storages it is untyped: each tensor reads
    it with its own dtype, sizes, strides and offset.

    `buffer` is an IREE `HalBuffer` holding at least `nbytes` bytes (None when `nbytes` is 0);
    `version` changes on every write.
    """

    __slots__ = ("device", "nbytes", "buffer", "version", "_view", "__weakref__")

    def __init__(self, device: Device, nbytes: int, buffer, view=None):
        self.device = device
        self.nbytes = nbytes
        self.buffer = buffer
        self.version = 0
        self._view = view  # ((dtype, shape), HalBufferView): the last dense view handed out

    @classmethod
    def of_result(cls, device: Device, dtype: torch.dtype, result, numel: int) -> "DeviceStorage":
        """The storage of a fresh kernel result (a `HalBufferView`, None when zero-size)."""
        if result is None:
            return cls(device, 0, None)
        return cls(device, numel * _itemsize(dtype), result.get_buffer(), ((dtype, tuple(result.shape)), result))

    def replace(self, data, dtype: torch.dtype | None = None):
        """Make `data` the storage's contents, seen by all aliases: a `HalBuffer`, or a kernel
        result `HalBufferView` of `dtype` covering the whole storage."""
        if dtype is not None:
            self.buffer = data.get_buffer()
            self._view = ((dtype, tuple(data.shape)), data)
        else:
            self.buffer = data
            self._view = None
        self.version += 1

    def view(self, dtype: torch.dtype, shape: tuple):
        """The first bytes of the storage as a dense device array of `shape` (no copy)."""
        cached = self._view
        if cached is not None and cached[0][0] == dtype and cached[0][1] == shape:
            return cached[1]
        bv = Device.view(self.buffer, dtype, shape)
        self._view = ((dtype, shape), bv)
        return bv

    def flat(self, dtype: torch.dtype):
        """The whole storage as a 1-D device array of `dtype`."""
        return self.view(dtype, (self.nbytes // _itemsize(dtype),))

    def to_host(self) -> torch.Tensor:
        """The storage's bytes as a new CPU uint8 tensor: a host transfer, counted."""
        if self.nbytes == 0:
            return torch.empty(0, dtype=torch.uint8)
        from .kernel_cache import STATS

        STATS.host_transfer(self.nbytes)
        return self.device.download(self.buffer, self.nbytes)


def _itemsize(dtype: torch.dtype) -> int:
    return dtype.itemsize


def host_view(flat_bytes: torch.Tensor, dtype, size, stride, offset, qparams=None) -> torch.Tensor:
    """A CPU tensor reading (`size`, `stride`, `offset`) of `dtype` out of a storage's bytes.
    A view of the bytes, except for quantized tensors (rebuilt from their integer values)."""
    item = _itemsize(dtype)
    usable = flat_bytes[: flat_bytes.numel() // item * item]
    if qparams is not None:
        ints = usable.view(_QUANTIZED_INT[dtype]).as_strided(size, stride, offset)
        return qparams.quantize(ints)
    return usable.view(dtype).as_strided(size, stride, offset)


# quantized dtype -> the integer dtype of its values
_QUANTIZED_INT = {
    torch.qint8: torch.int8,
    torch.quint8: torch.uint8,
    torch.qint32: torch.int32,
    torch.quint4x2: torch.uint8,
    torch.quint2x4: torch.uint8,
}


class QParams:
    """The quantizer of a quantized tensor (its values are stored as integers)."""

    __slots__ = ("scheme", "scale", "zero_point", "axis")

    def __init__(self, t: torch.Tensor):
        self.scheme = t.qscheme()
        if self.scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            self.scale, self.zero_point, self.axis = t.q_scale(), t.q_zero_point(), None
        else:
            self.scale = t.q_per_channel_scales()
            self.zero_point = t.q_per_channel_zero_points()
            self.axis = t.q_per_channel_axis()

    @property
    def per_tensor(self) -> bool:
        return self.axis is None

    def quantize_values(self, values: torch.Tensor, dtype) -> torch.Tensor:
        """Float values quantized with this quantizer."""
        if self.per_tensor:
            return torch.quantize_per_tensor(values, self.scale, self.zero_point, dtype)
        return torch.quantize_per_channel(values, self.scale, self.zero_point, self.axis, dtype)

    def quantize(self, ints: torch.Tensor) -> torch.Tensor:
        """A quantized CPU tensor with these integer values (a copy)."""
        if self.per_tensor:
            return torch._make_per_tensor_quantized_tensor(ints.contiguous(), self.scale, self.zero_point)
        return torch._make_per_channel_quantized_tensor(ints.contiguous(), self.scale, self.zero_point, self.axis)


_dispatch_module = None


def _dispatch(func, args, kwargs):
    global _dispatch_module
    if _dispatch_module is None:
        from . import dispatch as _dispatch_module
    return _dispatch_module.dispatch(func, args, kwargs)


def device_strides(data: torch.Tensor) -> tuple:
    """The strides `data.to(device)` gives its copy: the same for a dense tensor (row-major,
    channels_last or any permutation), else those of `torch.empty_like` (preserve_format)."""
    if data.is_quantized:
        return _contiguous_strides(tuple(data.shape))
    _, dense = physical_order(tuple(data.shape), tuple(data.stride()))
    if dense:
        return tuple(data.stride())
    return tuple(torch.empty_like(data, device="meta").stride())


def storage_bytes(data: torch.Tensor, stride: tuple) -> torch.Tensor:
    """The bytes of a storage that holds exactly `data` laid out with `stride` (offset 0)."""
    if data.is_quantized:
        data = data.int_repr()
    size = tuple(data.shape)
    if tuple(data.stride()) != stride or data.storage_offset() != 0 or (
        data.untyped_storage().nbytes() != data.numel() * data.element_size()
    ):
        data = torch.empty_strided(size, stride, dtype=data.dtype).copy_(data)
    return torch.empty(0, dtype=torch.uint8).set_(data.untyped_storage())


class TorchMLIRTensor(torch.Tensor):
    """A tensor on an IREE device. `TorchMLIRTensor(x, device="local-sync")` copies `x` there,
    keeping its strides as `x.to(device)` would."""

    _storage_ref: DeviceStorage
    _qparams: QParams | None = None

    @staticmethod
    def __new__(cls, data, device: str | None = None, requires_grad: bool = False):
        if isinstance(data, TorchMLIRTensor):
            if device is None or device == data._storage_ref.device.driver:
                return data
            data = data.cpu()
        if not isinstance(data, torch.Tensor):
            data = torch.as_tensor(data)
        if data.device.type != "cpu":
            raise ValueError(f"TorchMLIRTensor wraps CPU tensors; got one on {data.device}")
        if data.layout != torch.strided:
            raise TypeError(f"TorchMLIRTensor: layout {data.layout} is not supported")
        dev = get_device(device)
        data = data.detach()
        if data.is_conj() or data.is_neg():
            data = data.resolve_conj().resolve_neg()
        stride = device_strides(data)
        payload = storage_bytes(data, stride)
        storage = DeviceStorage(dev, payload.numel(), dev.upload(payload) if payload.numel() else None)
        qparams = QParams(data) if data.is_quantized else None
        return cls._make(storage, data.dtype, tuple(data.shape), stride, 0, requires_grad, qparams)

    def __init__(self, *args, **kwargs):
        pass

    @classmethod
    def _make(cls, storage: DeviceStorage, dtype, size, stride, offset: int, requires_grad: bool = False, qparams=None):
        t = torch.Tensor._make_wrapper_subclass(
            cls,
            size,
            strides=stride,
            storage_offset=offset,
            dtype=dtype,
            device=_DEVICE,
            requires_grad=requires_grad,
        )
        t._storage_ref = storage
        if qparams is not None:
            t._qparams = qparams
        t._note_metadata(size, stride, offset)
        return t

    @staticmethod
    def _metadata_of(dtype, size, stride, offset):
        """What the hot path asks of a tensor with this geometry, computed once."""
        size, stride = tuple(size), tuple(stride)
        numel = 1
        for s in size:
            numel *= s
        perm, dense = physical_order(size, stride)
        phys_shape = size if perm is None else tuple(size[d] for d in perm)
        # the storage size at which this tensor is its whole storage (-1: never)
        whole = numel * dtype.itemsize if dense and offset == 0 else -1
        return (dtype, size, stride), numel, perm, phys_shape, whole

    def _note_metadata(self, size, stride, offset):
        self._spec, self._numel, self._perm, self._phys_shape, self._whole_nbytes = (
            TorchMLIRTensor._metadata_of(self.dtype, size, stride, offset))

    @property
    def data(self):
        return torch._C.TensorBase.data.__get__(self)

    @data.setter
    def data(self, new):
        """`t.data = other` (`Module.to(dtype)`, `.half()`, `vector_to_parameters` do it): PyTorch
        checks `other` and takes its sizes, strides and dtype; this tensor then reads `other`'s
        storage too, as a native tensor would."""
        torch._C.TensorBase.data.__set__(self, new)
        if isinstance(new, TorchMLIRTensor):
            self._storage_ref = new._storage_ref
            self._qparams = new._qparams
            self._spec, self._numel, self._perm, self._phys_shape, self._whole_nbytes = (
                new._spec, new._numel, new._perm, new._phys_shape, new._whole_nbytes)

    @classmethod
    def _make_known(cls, storage, dtype, size, stride, meta, offset=0, qparams=None):
        """_make for a tensor whose metadata (`_metadata_of`) is known already."""
        t = torch.Tensor._make_wrapper_subclass(
            cls, size, strides=stride, storage_offset=offset, dtype=dtype, device=_DEVICE, requires_grad=False)
        t._storage_ref = storage
        if qparams is not None:
            t._qparams = qparams
        t._spec, t._numel, t._perm, t._phys_shape, t._whole_nbytes = meta
        return t

    def _set_metadata(self, size, stride, offset):
        """Change this tensor's own size/stride/offset (in-place view ops, resize_)."""
        from torch.utils._mode_utils import no_dispatch

        size, stride = tuple(size), tuple(stride)
        extent = offset + 1 + sum((s - 1) * st for s, st in zip(size, stride)) if all(size) else offset
        placeholder = self.untyped_storage()  # PyTorch's own (data-less) storage of the wrapper
        needed = max(extent * self.element_size(), self._storage_ref.nbytes)
        if needed > placeholder.nbytes():
            bigger = torch.Tensor._make_wrapper_subclass(
                TorchMLIRTensor, (needed,), dtype=torch.uint8, device=self.device
            )
            placeholder = bigger.untyped_storage()
        with no_dispatch():  # the Meta kernel of set_ only rewrites metadata
            torch.ops.aten.set_.source_Storage_storage_offset.redispatch(
                torch._C.DispatchKeySet(torch._C.DispatchKey.Meta), self, placeholder, offset, size, stride
            )
        self._note_metadata(size, stride, offset)

    def _resize(self, size, stride=None):
        """resize_: `size` with `stride` (default row-major); the storage grows (for every
        alias) when it must."""
        size = tuple(size)
        offset = self.storage_offset()
        numel = 1
        for s in size:
            numel *= s
        storage = self._storage_ref
        needed = (offset + numel) * self.element_size()
        if needed > storage.nbytes == 0:  # nothing to keep; new bytes are unset, as in PyTorch
            storage.nbytes = needed
            storage.replace(storage.device.allocate(needed))
        elif needed > storage.nbytes:
            grown = torch.zeros(needed, dtype=torch.uint8)
            grown[: storage.nbytes] = storage.to_host()
            storage.nbytes = needed
            storage.replace(storage.device.upload(grown))
        self._set_metadata(size, stride or _contiguous_strides(size), offset)

    @classmethod
    def _from_buffer(cls, device: Device, dtype, result, size, stride=None):
        """A new tensor owning a fresh storage made of a dense kernel result."""
        size = tuple(size)
        numel = 1
        for s in size:
            numel *= s
        storage = DeviceStorage.of_result(device, dtype, result, numel)
        return cls._make(storage, dtype, size, stride if stride is not None else _contiguous_strides(size), 0)

    # ---- metadata --------------------------------------------------------------------------
    @property
    def iree_device(self) -> Device:
        return self._storage_ref.device

    def covers_storage(self) -> bool:
        """True when the tensor is exactly its whole storage, in a dense layout (row-major, or
        a permutation of it such as channels_last): a kernel takes the storage as it is."""
        return self._whole_nbytes == self._storage_ref.nbytes

    def is_row_major(self) -> bool:
        """True when the tensor is its whole storage in row-major order."""
        return self._perm is None and self.covers_storage()

    def _host(self) -> torch.Tensor:
        """A CPU tensor with the same values, sizes and strides (a copy). Reads device data:
        callers count it as a host transfer."""
        return host_view(
            self._storage_ref.to_host(), self.dtype, self.shape, self.stride(), self.storage_offset(), self._qparams
        )

    # ---- dispatch --------------------------------------------------------------------------
    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})

    def __repr__(self, *, tensor_contents=None):
        body = repr(self._host())
        extra = f"device='{DEVICE_TYPE}:{self.iree_device.driver}'"
        if self.grad_fn is not None:
            extra += f", grad_fn=<{type(self.grad_fn).__name__}>"
        elif self.requires_grad:
            extra += ", requires_grad=True"
        if body.endswith(")"):
            return body[:-1] + f", {extra})"
        return body

    def __format__(self, spec):  # f"{t:.2f}" of a 0-d tensor formats its value, as PyTorch's does
        if self.dim() == 0:
            return self.item().__format__(spec)
        return object.__format__(self, spec)

    def tolist(self):
        return self.cpu().tolist()

    def numpy(self, *, force: bool = False):
        return self.cpu().numpy()


# ---- factory functions on device "iree" -------------------------------------------------------
# `torch.empty(..., device="iree")`, `x.to("iree")` and composite ops that allocate on the input's
# device (batch_norm does) reach PyTorch's PrivateUse1 kernels, not __torch_dispatch__: these
# give them TorchMLIRTensors on the default driver.
def _empty_strided_iree(size, stride, dtype=None, layout=None, device=None, pin_memory=None):
    dtype = dtype or torch.get_default_dtype()
    size, stride = tuple(size), tuple(stride)
    extent = 1 + sum((s - 1) * st for s, st in zip(size, stride)) if all(s > 0 for s in size) else 0
    nbytes = extent * dtype.itemsize
    dev = get_device()
    storage = DeviceStorage(dev, nbytes, dev.allocate(nbytes) if nbytes else None)
    return TorchMLIRTensor._make(storage, dtype, size, stride, 0)


def _empty_iree(size, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    return _empty_strided_iree(size, _contiguous_strides(size), dtype, layout, device, pin_memory)


def _copy_from_iree(src, dst, non_blocking=False):
    """Copies across the host/device boundary that PyTorch makes below __torch_dispatch__
    (`torch.tensor(..., device="iree")` does)."""
    if isinstance(dst, TorchMLIRTensor):
        if isinstance(src, TorchMLIRTensor):
            src = src._host()
        write_host_values(dst, src)
        return dst
    dst.copy_(src._host())
    return dst


def write_host_values(dst: TorchMLIRTensor, value: torch.Tensor):
    """Write CPU values (broadcast to dst's shape) into dst's elements, seen by all its aliases."""
    storage = dst._storage_ref
    if storage.nbytes == 0:
        return
    dtype, q = dst.dtype, dst._qparams
    if q is not None:  # a quantized tensor stores integers
        dtype = _QUANTIZED_INT[dtype]
        value = value.int_repr() if value.is_quantized else q.quantize_values(value, dst.dtype).int_repr()
    if dst.covers_storage():
        host = torch.empty_strided(dst.shape, dst.stride(), dtype=dtype).copy_(value)
        storage.replace(storage.device.upload(storage_bytes(host, tuple(dst.stride()))))
        return
    flat = storage.to_host()
    host_view(flat, dtype, dst.shape, dst.stride(), dst.storage_offset()).copy_(value)
    storage.replace(storage.device.upload(flat))


def _efficientzerotensor_iree(size, dtype=None, layout=None, device=None, pin_memory=None):
    """A zero tensor (autograd makes these for gradients known to be zero, e.g. sgn's)."""
    t = _empty_iree(size, dtype)
    write_host_values(t, torch.zeros((), dtype=t.dtype))
    return t


_factory_lib = torch.library.Library("aten", "IMPL")
_factory_lib.impl("_copy_from", _copy_from_iree, "PrivateUse1")
_factory_lib.impl("empty.memory_format", _empty_iree, "PrivateUse1")
_factory_lib.impl("empty_strided", _empty_strided_iree, "PrivateUse1")
_factory_lib.impl("_efficientzerotensor", _efficientzerotensor_iree, "PrivateUse1")
