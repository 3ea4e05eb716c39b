"""TorchMLIRTensor: a PyTorch tensor whose data lives in an IREE device buffer.

Like PyTorch itself, a tensor is *view metadata* (size, stride, storage offset) over a *storage*.
A `DeviceStorage` is flat: one dense 1-D run of elements held in an IREE device buffer. Every
alias of a storage (views, `detach`, in-place results) holds the same `DeviceStorage` object, so
replacing its buffer (what a write does) is seen through every alias at once.
"""

from __future__ import annotations

import torch
import torch.utils.backend_registration as _backend_registration

from .device import Device, get_device, SUPPORTED_DTYPES
from .layout import contiguous_strides as _contiguous_strides

DEVICE_TYPE = "iree"


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
        pass  # torch.manual_seed seeds the CPU generator, which random ops use

    @staticmethod
    def manual_seed_all(seed):
        pass

    @staticmethod
    def synchronize(device=None):
        pass


def _register_device_type():
    # Name PyTorch's PrivateUse1 device "iree" and give it the Python device guard and hooks that
    # autograd needs to run backward on tensors that report that device.
    if torch._C._get_privateuse1_backend_name() != DEVICE_TYPE:
        _backend_registration._setup_privateuseone_for_python_backend(
            DEVICE_TYPE, backend_module=_IreeBackendModule()
        )


_register_device_type()


class DeviceStorage:
    """A flat run of `numel` elements of `dtype` in a device buffer shared by all aliases.

    `buffer` always holds exactly `numel` elements, in row-major order, but may carry any shape
    (usually the shape of the kernel result it came from). `version` changes on every write.
    """

    __slots__ = ("device", "dtype", "numel", "buffer", "version", "_shaped", "__weakref__")

    def __init__(self, device: Device, dtype: torch.dtype, numel: int, buffer):
        self.device = device
        self.dtype = dtype
        self.numel = numel
        self.buffer = buffer  # iree.runtime.HalBufferView, or None when numel == 0
        self.version = 0
        self._shaped = None

    def replace(self, buffer):
        """Make `buffer` (same element count) the storage's contents: a write seen by all aliases."""
        self.buffer = buffer
        self.version += 1
        self._shaped = None

    def shaped(self, shape: tuple):
        """The buffer viewed with `shape` (same bytes, no copy)."""
        buf = self.buffer
        if tuple(buf.shape) == shape:
            return buf
        cached = self._shaped
        if cached is not None and cached[0] == shape:
            return cached[1]
        view = Device.reshape(buf, shape)
        self._shaped = (shape, view)
        return view

    def to_host(self) -> torch.Tensor:
        """The whole storage as a flat CPU tensor."""
        if self.numel == 0:
            return torch.empty(0, dtype=self.dtype)
        return self.device.download(self.buffer, self.dtype, (self.numel,))


_dispatch_module = None


def _dispatch(func, args, kwargs):
    global _dispatch_module
    if _dispatch_module is None:
        from . import dispatch as _dispatch_module
    return _dispatch_module.dispatch(func, args, kwargs)


class TorchMLIRTensor(torch.Tensor):
    """A tensor on an IREE device. `TorchMLIRTensor(x, device="local-sync")` copies `x` there."""

    _storage_ref: DeviceStorage

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
        if data.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"TorchMLIRTensor: dtype {data.dtype} is not supported")
        if data.layout != torch.strided:
            raise TypeError(f"TorchMLIRTensor: layout {data.layout} is not supported")
        dev = get_device(device)
        data = data.detach().contiguous()
        storage = DeviceStorage(dev, data.dtype, data.numel(), dev.upload(data.reshape(-1)) if data.numel() else None)
        return cls._make(storage, tuple(data.shape), tuple(data.stride()), 0, requires_grad)

    def __init__(self, *args, **kwargs):
        pass

    @classmethod
    def _make(cls, storage: DeviceStorage, size, stride, offset: int, requires_grad: bool = False):
        t = torch.Tensor._make_wrapper_subclass(
            cls,
            size,
            strides=stride,
            storage_offset=offset,
            dtype=storage.dtype,
            device=torch.device(DEVICE_TYPE, 0),
            requires_grad=requires_grad,
        )
        t._storage_ref = storage
        t._note_metadata(size, stride, offset)
        return t

    def _note_metadata(self, size, stride, offset):
        # what the hot path asks, computed once per metadata change
        size, stride = tuple(size), tuple(stride)
        self._spec = (self._storage_ref.dtype, size, stride)
        numel = 1
        for s in size:
            numel *= s
        self._numel = numel
        self._dense = offset == 0 and (numel <= 1 or stride == _contiguous_strides(size))

    def _set_metadata(self, size, stride, offset):
        """Change this tensor's own size/stride/offset (in-place view ops, resize_)."""
        from torch.utils._mode_utils import no_dispatch

        size, stride = tuple(size), tuple(stride)
        extent = offset + 1 + sum((s - 1) * st for s, st in zip(size, stride)) if all(size) else offset
        placeholder = self.untyped_storage()  # PyTorch's own (data-less) storage of the wrapper
        needed = max(extent, self._storage_ref.numel) * self.element_size()
        if needed > placeholder.nbytes():
            bigger = torch.Tensor._make_wrapper_subclass(
                TorchMLIRTensor, (needed // self.element_size(),), dtype=self.dtype, device=self.device
            )
            placeholder = bigger.untyped_storage()
        with no_dispatch():  # the Meta kernel of set_ only rewrites metadata
            torch.ops.aten.set_.source_Storage_storage_offset.redispatch(
                torch._C.DispatchKeySet(torch._C.DispatchKey.Meta), self, placeholder, offset, size, stride
            )
        self._note_metadata(size, stride, offset)

    def _resize(self, size):
        """resize_: contiguous `size`; the storage grows (for every alias) when it must."""
        size = tuple(size)
        offset = self.storage_offset()
        numel = 1
        for s in size:
            numel *= s
        storage = self._storage_ref
        if offset + numel > storage.numel:
            old = storage.to_host()
            grown = torch.zeros(offset + numel, dtype=storage.dtype)
            grown[: old.numel()] = old
            storage.numel = offset + numel
            storage.replace(storage.device.upload(grown))
        self._set_metadata(size, _contiguous_strides(size), offset)

    @classmethod
    def _from_buffer(cls, device: Device, dtype, buffer, size, stride=None):
        """A new tensor owning a fresh storage made of a dense kernel result."""
        size = tuple(size)
        numel = 1
        for s in size:
            numel *= s
        storage = DeviceStorage(device, dtype, numel, buffer)
        return cls._make(storage, size, stride if stride is not None else _contiguous_strides(size), 0)

    # ---- metadata --------------------------------------------------------------------------
    @property
    def iree_device(self) -> Device:
        return self._storage_ref.device

    def is_dense(self) -> bool:
        """True when the tensor is exactly its whole storage in row-major order."""
        return self._dense and self._numel == self._storage_ref.numel

    def _host(self) -> torch.Tensor:
        """A CPU tensor with the same values, sizes and strides (a copy)."""
        flat = self._storage_ref.to_host()
        return flat.as_strided(self.shape, self.stride(), self.storage_offset())

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
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"TorchMLIRTensor: dtype {dtype} is not supported")
    size, stride = tuple(size), tuple(stride)
    extent = 1 + sum((s - 1) * st for s, st in zip(size, stride)) if all(s > 0 for s in size) else 0
    dev = get_device()
    storage = DeviceStorage(dev, dtype, extent, dev.allocate((extent,), dtype) if extent else None)
    return TorchMLIRTensor._make(storage, size, stride, 0)


def _empty_iree(size, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    return _empty_strided_iree(size, _contiguous_strides(size), dtype, layout, device, pin_memory)


def _copy_from_iree(src, dst, non_blocking=False):
    """Copies across the host/device boundary that PyTorch makes below __torch_dispatch__
    (`torch.tensor(..., device="iree")` does)."""
    if isinstance(dst, TorchMLIRTensor):
        host = src._host() if isinstance(src, TorchMLIRTensor) else src
        value = host.to(dst.dtype).expand(dst.shape)
        storage = dst._storage_ref
        if dst.is_dense():
            if storage.numel:
                storage.replace(storage.device.upload(value.contiguous().reshape(-1)))
        else:
            flat = storage.to_host()
            flat.as_strided(dst.shape, dst.stride(), dst.storage_offset()).copy_(value)
            storage.replace(storage.device.upload(flat))
        return dst
    dst.copy_(src._host())
    return dst


_factory_lib = torch.library.Library("aten", "IMPL")
_factory_lib.impl("_copy_from", _copy_from_iree, "PrivateUse1")
_factory_lib.impl("empty.memory_format", _empty_iree, "PrivateUse1")
_factory_lib.impl("empty_strided", _empty_strided_iree, "PrivateUse1")
