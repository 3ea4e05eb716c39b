"""IREE devices: one runtime device per driver, its compiler target, and host transfers.

A *device buffer* is an IREE `HalBuffer`: bytes. Kernels take and return `HalBufferView`s, a
dense array of a shape and an element type over the first bytes of a buffer. This module owns
the only code that moves bytes between host memory and device buffers.
"""

from __future__ import annotations

import math
import os
import threading

import numpy as np
import torch
import iree.runtime as rt

from .queue import Queue

# The default CPU device is "hybrid": one storage model (host memory) and two ways to run a
# kernel, chosen per kernel from its work (work_of): inline on local-sync (an invoke costs a few
# microseconds) or on local-task's thread pool (an invoke costs tens of microseconds to wake the
# threads, and then uses every core). "local-sync" and "local-task" remain explicit choices.
DEFAULT_DRIVER = "hybrid"
ENV_DEVICE = "TORCH_MLIR_EAGER_DEVICE"
ENV_CROSSOVER = "TORCH_MLIR_EAGER_HYBRID_CROSSOVER"
# Work (work_of) from which local-task beats local-sync, from benchmarks/crossover.py on the
# 2-vCPU CI machine (interleaved, 20 rounds): local-sync was faster up to a work of about 3e6
# (mm 128^3: 29 us against 57 us; a 32-channel 16x16 3x3 conv: 95 us against 104 us), local-task
# from about 1e7 (mm 256^3: 0.88x; an add of 4M elements: 0.71x; a 64-channel 28x28 conv: 0.70x).
HYBRID_CROSSOVER = 1 << 23

_MATMUL_OPS = ("aten.mm.", "aten.bmm.", "aten.addmm.", "aten.baddbmm.", "aten.addbmm.", "aten.matmul.",
               "aten.linear.", "aten._scaled_mm.")


def work_of(name: str, input_shapes, output_shapes) -> int:
    """How much work a kernel does, for placing it on the hybrid device: multiply-adds for
    matmuls and convolutions, else the elements it reads and writes."""
    out = sum(math.prod(s) for s in output_shapes)
    if "convolution" in name:
        backward = "backward" in name  # (grad_output, input, weight, ...)
        index = 2 if backward else 1  # (input, weight, ...)
        if len(input_shapes) > index and len(input_shapes[index]) >= 3:
            weight = input_shapes[index]  # (Cout, Cin/groups, k...): each output sums over the rest
            largest = max(math.prod(s) for s in list(input_shapes) + list(output_shapes))
            return largest * math.prod(weight[1:]) * (2 if backward else 1)
    if name.startswith(_MATMUL_OPS) and input_shapes:
        k = max((s[-1] for s in input_shapes if len(s) >= 2), default=1)
        return out * k
    return out + sum(math.prod(s) for s in input_shapes)

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
        hybrid = driver == "hybrid"
        self.hal = _open("local-task" if hybrid else driver)  # allocates every buffer
        # hybrid: small kernels run inline on local-sync, over the same (host) buffers
        self.inline = _open("local-sync") if hybrid else None
        self.crossover = float(os.environ.get(ENV_CROSSOVER, HYBRID_CROSSOVER))
        self.instance = rt.VmInstance()
        self.compile_flags = list(target_flags("local-task" if hybrid else driver))
        self._host_visible = hybrid or driver.startswith("local")
        self.queue = Queue(self.hal)  # every kernel, in order (queue.py); inline ones included

    def __repr__(self):
        return f"Device({self.driver!r})"

    def hal_for(self, work: float):
        """The runtime device a kernel of `work` runs on."""
        if self.inline is not None and work < self.crossover:
            return self.inline
        return self.hal

    def new_context(self, module, hal=None) -> rt.VmContext:
        """A VM context for `module` on runtime device `hal`. Its initializer allocates on the
        queue and records command buffers right away, so the queue is emptied first."""
        return self.queue.quiesced(
            lambda: rt.VmContext(self.instance, modules=[rt.create_hal_module(self.instance, hal or self.hal), module]))

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
        # into PyTorch's own storage, which an out= host copy can resize (a storage that numpy
        # shares, from_numpy's or one whose .numpy() was taken, cannot be resized)
        host = torch.empty(nbytes, dtype=torch.uint8)
        if nbytes == 0:
            return host
        self.queue.drain()
        if self._host_visible:
            source = buffer.map().asarray([nbytes], np.dtype(np.uint8))
        else:
            bv = rt.HalBufferView(buffer, [nbytes], rt.HalElementType.UINT_8)
            source = rt.DeviceArray(self.hal, bv, implicit_host_transfer=True).to_host().reshape(-1)
        host.copy_(torch.from_numpy(np.asarray(source)))
        return host

    def read_int64(self, bv, n: int) -> list:
        """The first `n` int64 values of a small device buffer, as Python ints (a host read)."""
        self.queue.drain()
        if self._host_visible:
            return bv.map().asarray([n], np.dtype(np.int64)).tolist()
        return self.download(bv.get_buffer(), 8 * n).view(torch.int64).tolist()

    def allocate(self, nbytes: int):
        """A new device buffer of `nbytes` bytes, contents unspecified (like torch.empty)."""
        return self.hal.allocator.allocate_buffer(
            memory_type=rt.MemoryType.DEVICE_LOCAL,
            allowed_usage=rt.BufferUsage.DEFAULT,
            allocation_size=max(nbytes, 1),
        )

    def copy(self, bv: rt.HalBufferView) -> rt.HalBufferView:
        """A new device buffer with the same bytes, shape and element type: a memcpy of the
        mapped memory on a host-visible device (about 5 µs for 4 kB, 0.12 ms for 4 MB here,
        against 10 µs and 3.3 ms through a host tensor), else a copy on the device's queue."""
        nbytes = bv.byte_length
        source = bv.get_buffer()
        # The host waits for the queue first: IREE's queue copy cannot read a result still
        # queued (its memory is only allocated when its turn comes; the copy fails the timeline)
        self.queue.drain()
        if nbytes and self._host_visible:
            buffer = self.allocate(nbytes)
            np.copyto(_mapped(buffer, nbytes), _mapped(source, nbytes))
        elif nbytes and source.byte_length() == nbytes:  # queue_copy copies a whole buffer
            buffer = self.allocate(nbytes)
            self.queue.copy(self.hal, source, buffer)
        elif nbytes:
            buffer = self.upload(self.download(source, nbytes))
        else:
            buffer = self.allocate(0)
        return rt.HalBufferView(buffer, list(bv.shape), bv.element_type)

    def overlap(self, a: rt.HalBufferView, b: rt.HalBufferView) -> bool:
        """Whether two buffer views share memory: by address on a host-visible device (a
        subspan of `b` counts), else when they are views of the same buffer."""
        if not self._host_visible:
            return a.get_buffer() == b.get_buffer()
        if not a.byte_length or not b.byte_length:
            return False
        self.queue.drain()  # a queued result's memory is only allocated when its turn comes
        start_a = _mapped(a.get_buffer(), a.byte_length).__array_interface__["data"][0]
        start_b = _mapped(b.get_buffer(), b.byte_length).__array_interface__["data"][0]
        return start_a < start_b + b.byte_length and start_b < start_a + a.byte_length

    @staticmethod
    def view(buffer, dtype: torch.dtype, shape) -> rt.HalBufferView:
        """The first bytes of `buffer` as a dense array of `shape` and `dtype` (no copy)."""
        return rt.HalBufferView(buffer, list(shape), _ELEMENT_TYPES[dtype])


def _mapped(buffer, nbytes: int) -> np.ndarray:
    """The first `nbytes` bytes of a host-visible buffer, mapped (no copy)."""
    return buffer.map().asarray([nbytes], np.dtype(np.uint8))


def _open(driver: str):
    try:
        return rt.get_device(driver)
    except (ValueError, RuntimeError) as e:
        raise RuntimeError(
            f"torch_mlir_eager: cannot open IREE driver {driver!r} ({e}); "
            f"available drivers: {rt.query_available_drivers()} (and hybrid)"
        ) from None


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
