"""IREE devices: one runtime device per driver, its compiler target, and host transfers.

A *device buffer* is an IREE `HalBufferView`: a dense buffer with a shape and an element type.
This module owns the only code that moves bytes between host memory and device buffers.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import torch
import iree.runtime as rt

# Measured on the 2-core CI machine, quiet: ResNet18 eval batch 1 at 224 runs in 264 ms on
# local-task (its convolutions use every core) against 372 ms on local-sync, while a cached
# 64-element add costs 99 us against 77 us. The models users run decide: local-task.
DEFAULT_DRIVER = "local-task"
ENV_DEVICE = "TORCH_MLIR_EAGER_DEVICE"

# torch dtype -> (IREE element type, numpy dtype used to move its bytes)
_ELEMENT_TYPES = {
    torch.float32: (rt.HalElementType.FLOAT_32, np.float32),
    torch.float64: (rt.HalElementType.FLOAT_64, np.float64),
    torch.float16: (rt.HalElementType.FLOAT_16, np.float16),
    torch.bfloat16: (rt.HalElementType.BFLOAT_16, np.int16),
    torch.int64: (rt.HalElementType.SINT_64, np.int64),
    torch.int32: (rt.HalElementType.SINT_32, np.int32),
    torch.int16: (rt.HalElementType.SINT_16, np.int16),
    torch.int8: (rt.HalElementType.SINT_8, np.int8),
    torch.uint8: (rt.HalElementType.UINT_8, np.uint8),
    torch.bool: (rt.HalElementType.BOOL_8, np.bool_),
    torch.complex64: (rt.HalElementType.COMPLEX_64, np.complex64),
    torch.complex128: (rt.HalElementType.COMPLEX_128, np.complex128),
}
# dtypes whose bytes numpy cannot hold natively: moved as a same-width integer view
_BIT_CAST = {torch.bfloat16: torch.int16}

SUPPORTED_DTYPES = frozenset(_ELEMENT_TYPES)


def element_type(dtype: torch.dtype) -> int:
    try:
        return _ELEMENT_TYPES[dtype][0]
    except KeyError:
        raise TypeError(f"torch_mlir_eager: dtype {dtype} has no IREE element type") from None


class Device:
    """One IREE driver: the runtime device, its VM instance and the compiler target flags."""

    def __init__(self, driver: str):
        from .iree_compile import target_flags

        self.driver = driver
        try:
            self.hal = rt.get_device(driver)
        except (ValueError, RuntimeError) as e:
            raise RuntimeError(
                f"torch_mlir_eager: cannot open IREE driver {driver!r} ({e}); "
                f"available drivers: {rt.query_available_drivers()}"
            ) from None
        self.instance = rt.VmInstance()
        self.compile_flags = list(target_flags(driver))
        self._host_visible = driver.startswith("local")

    def __repr__(self):
        return f"Device({self.driver!r})"

    def new_hal_module(self):
        return rt.create_hal_module(self.instance, self.hal)

    # ---- host -> device ---------------------------------------------------------------------
    def upload(self, t: torch.Tensor) -> rt.HalBufferView:
        """Copy a CPU tensor into a new dense device buffer of the same shape."""
        t = t.detach()
        if not t.is_contiguous():
            t = t.contiguous()
        etype = element_type(t.dtype)
        if t.dtype in _BIT_CAST:
            t = t.view(_BIT_CAST[t.dtype])
        return self.hal.allocator.allocate_buffer_copy(
            memory_type=rt.MemoryType.DEVICE_LOCAL,
            allowed_usage=rt.BufferUsage.DEFAULT,
            device=self.hal,
            buffer=t.numpy(),
            element_type=etype,
        )

    # ---- device -> host ---------------------------------------------------------------------
    def download(self, bv: rt.HalBufferView, dtype: torch.dtype, shape) -> torch.Tensor:
        """Copy a dense device buffer into a new contiguous CPU tensor of `shape`."""
        np_dtype = _ELEMENT_TYPES[dtype][1]
        shape = tuple(shape)
        if self._host_visible:
            arr = bv.map().asarray(shape, np.dtype(np_dtype))
        else:
            arr = rt.DeviceArray(self.hal, bv, implicit_host_transfer=True).to_host()
            arr = arr.view(np_dtype).reshape(shape)
        t = torch.from_numpy(np.array(arr, copy=True))
        if dtype in _BIT_CAST:
            t = t.view(dtype)
        return t

    def allocate(self, shape, dtype: torch.dtype) -> rt.HalBufferView:
        """A new device buffer of `shape`, contents unspecified (like torch.empty)."""
        etype, np_dtype = _ELEMENT_TYPES[dtype]
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(np_dtype).itemsize
        buffer = self.hal.allocator.allocate_buffer(
            memory_type=rt.MemoryType.DEVICE_LOCAL,
            allowed_usage=rt.BufferUsage.DEFAULT,
            allocation_size=nbytes,
        )
        return rt.HalBufferView(buffer, list(shape), etype)

    def copy(self, bv: rt.HalBufferView) -> rt.HalBufferView:
        """A new device buffer with the same bytes, shape and element type."""
        nbytes = bv.byte_length
        if self._host_visible:
            raw = bv.map().asarray([nbytes], np.dtype(np.uint8))
        else:
            raw = rt.DeviceArray(self.hal, bv, implicit_host_transfer=True).to_host().view(np.uint8).reshape(-1)
        buffer = self.hal.allocator.allocate_buffer_copy(
            memory_type=rt.MemoryType.DEVICE_LOCAL,
            allowed_usage=rt.BufferUsage.DEFAULT,
            device=self.hal,
            buffer=raw,
        )
        return rt.HalBufferView(buffer, list(bv.shape), bv.element_type)

    @staticmethod
    def reshape(bv: rt.HalBufferView, shape) -> rt.HalBufferView:
        """The same bytes under another shape (no copy)."""
        return rt.HalBufferView(bv.get_buffer(), list(shape), bv.element_type)


_devices: dict[str, Device] = {}
_lock = threading.Lock()


def default_device() -> str:
    """The driver used when none is named: $TORCH_MLIR_EAGER_DEVICE, else DEFAULT_DRIVER."""
    return os.environ.get(ENV_DEVICE) or DEFAULT_DRIVER


def get_device(driver: str | None = None) -> Device:
    driver = driver or default_device()
    dev = _devices.get(driver)
    if dev is None:
        with _lock:
            dev = _devices.get(driver)
            if dev is None:
                dev = _devices[driver] = Device(driver)
    return dev
