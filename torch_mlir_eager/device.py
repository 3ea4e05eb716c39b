"""IREE devices: one runtime device per driver, its compiler target, and host transfers.

A *device buffer* is an IREE `HalBuffer`: bytes. Kernels take and return `HalBufferView`s, a
dense array of a shape and an element type over the first bytes of a buffer. This module owns
the only code that moves bytes between host memory and device buffers.
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

# torch dtype -> IREE element type, for the dtypes that kernels compute in. Any other dtype
# (float8, quantized, uint16/32/64, complex32, ...) is still stored (as bytes) on the device, and
# its ops run natively.
_ELEMENT_TYPES = {
    torch.float32: rt.HalElementType.FLOAT_32,
    torch.float64: rt.HalElementType.FLOAT_64,
    torch.float16: rt.HalElementType.FLOAT_16,
    torch.bfloat16: rt.HalElementType.BFLOAT_16,
    torch.int64: rt.HalElementType.SINT_64,
    torch.int32: rt.HalElementType.SINT_32,
    torch.int16: rt.HalElementType.SINT_16,
    torch.int8: rt.HalElementType.SINT_8,
    torch.uint8: rt.HalElementType.UINT_8,
    torch.bool: rt.HalElementType.BOOL_8,
    torch.complex64: rt.HalElementType.COMPLEX_64,
    torch.complex128: rt.HalElementType.COMPLEX_128,
}

COMPILED_DTYPES = frozenset(_ELEMENT_TYPES)


def element_type(dtype: torch.dtype) -> int:
    try:
        return _ELEMENT_TYPES[dtype]
    except KeyError:
        raise TypeError(f"torch_mlir_eager: dtype {dtype} has no IREE element type") from None


def as_bytes(t: torch.Tensor) -> np.ndarray:
    """The bytes of a contiguous CPU tensor, as a flat numpy uint8 array (no copy)."""
    flat = t.detach().reshape(-1)
    if flat.is_quantized:
        flat = flat.int_repr()
    return flat.view(torch.uint8).numpy()


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

    # ---- host <-> device: bytes ---------------------------------------------------------------
    def upload(self, t: torch.Tensor):
        """A new device buffer (`HalBuffer`) holding the bytes of CPU tensor `t` in its
        row-major order (`t` is made contiguous first)."""
        if not t.is_contiguous():
            t = t.contiguous()
        return self.hal.allocator.allocate_buffer_copy(
            memory_type=rt.MemoryType.DEVICE_LOCAL,
            allowed_usage=rt.BufferUsage.DEFAULT,
            device=self.hal,
            buffer=as_bytes(t),
        )

    def download(self, buffer, nbytes: int) -> torch.Tensor:
        """The first `nbytes` bytes of a device buffer, as a new CPU uint8 tensor."""
        if nbytes == 0:
            return torch.empty(0, dtype=torch.uint8)
        if self._host_visible:
            arr = np.array(buffer.map().asarray([nbytes], np.dtype(np.uint8)), copy=True)
        else:
            bv = rt.HalBufferView(buffer, [nbytes], rt.HalElementType.UINT_8)
            arr = rt.DeviceArray(self.hal, bv, implicit_host_transfer=True).to_host().reshape(-1).copy()
        return torch.from_numpy(arr)

    def allocate(self, nbytes: int):
        """A new device buffer of `nbytes` bytes, contents unspecified (like torch.empty)."""
        return self.hal.allocator.allocate_buffer(
            memory_type=rt.MemoryType.DEVICE_LOCAL,
            allowed_usage=rt.BufferUsage.DEFAULT,
            allocation_size=max(nbytes, 1),
        )

    def copy(self, bv: rt.HalBufferView) -> rt.HalBufferView:
        """A new device buffer with the same bytes, shape and element type."""
        nbytes = bv.byte_length
        buffer = self.hal.allocator.allocate_buffer_copy(
            memory_type=rt.MemoryType.DEVICE_LOCAL,
            allowed_usage=rt.BufferUsage.DEFAULT,
            device=self.hal,
            buffer=self.download(bv.get_buffer(), nbytes).numpy(),
        )
        return rt.HalBufferView(buffer, list(bv.shape), bv.element_type)

    @staticmethod
    def view(buffer, dtype: torch.dtype, shape) -> rt.HalBufferView:
        """The first bytes of `buffer` as a dense array of `shape` and `dtype` (no copy)."""
        return rt.HalBufferView(buffer, list(shape), _ELEMENT_TYPES[dtype])



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
