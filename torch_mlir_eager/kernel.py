"""A kernel: one compiled IREE module, loaded once on its device, called with device buffers
(and the call's runtime scalars)."""

from __future__ import annotations

import logging
import math
import threading
import time

import iree.runtime as rt

from .device import Device, work_of
from .kernel_cache import STATS

log = logging.getLogger("torch_mlir_eager")
_FIRST_CALLS = threading.Lock()  # one first call (probe) at a time: each kernel is probed once


def device_work(name: str, plan) -> int:
    """The kernel's work (device.work_of), from its plan."""
    inputs = getattr(plan, "input_shapes", None) or []
    outputs = [s.shape for s in plan.out_specs] + list(plan.live_write_shapes)
    return work_of(name, inputs, outputs)


class KernelTiming:
    """Optional per-invocation timing, for the kernel-quality benchmark."""

    enabled = False
    records: list = []


class Kernel:
    """`kernel(buffers) -> buffers`: runs the module's `main` on dense device buffers."""

    flat = False  # FlatKernel: shape-generic, over flat inputs of any length

    def __init__(self, device: Device, vmfb: bytes, name: str, plan, *, from_disk=False, copy_inputs=(),
                 takes_scalars=False, hal=None, probed=False):
        self.device = device
        self.name = name
        self.plan = plan  # recipe.OutputPlan: how results map back to the op's results
        self.from_disk = from_disk
        # inputs the compiled code may update in place (see lowering.written_arguments): they are
        # passed as copies, because device buffers are values shared by many tensors
        self.copy_inputs = tuple(copy_inputs)
        # whether a first call has shown which inputs IREE computes a result in (`_first_call`);
        # the verdict is kept in the disk index, so a later process need not look again
        self.probed = probed
        self.on_probed = None  # called with the verdict (compile_service: the disk index)
        self.twin = None  # the same module on the hybrid device's other runtime device (FlatKernel)
        # the call's runtime scalars follow the buffers as arguments (see compiler.py)
        self.takes_scalars = takes_scalars
        self.validated = False
        self._num_outputs = plan.num_outputs
        if vmfb is None:  # Kernel.empty
            return
        self.vmfb = vmfb
        self.work = device_work(name, plan)
        self.hal = hal or device.hal_for(self.work)  # hybrid device: inline or on the thread pool
        self._module = rt.VmModule.copy_buffer(device.instance, vmfb)
        self._main = self._module.lookup_function("main")
        # compiled for the queue (iree_compile.ASYNC_FLAGS): takes a wait and a signal fence; a
        # user's own --iree-execution-model flag gives a module that does not, run synchronously
        self._fenced = self._main.reflection.get("iree.abi.model") == "coarse-fences"
        # a convolution with a pre-packed weight (prepack.py): the module's `pack` function
        # makes the argument at `packed_input` from the weight, in tiles of `pack_tile`
        if plan.packed is not None:
            self.packed_input, self.pack_tile = plan.packed
            self._pack = self._module.lookup_function("pack")
        # a VM context is not safe to invoke from two threads at once: one per thread, no lock
        self._context = device.new_context(self._module, self.hal)
        # on the hybrid device, an inline kernel's context on the thread pool, for calls that find
        # the queue busy: made now, since making it later empties the queue (about 0.3 ms)
        self._queued = device.new_context(self._module) if self.hal is not device.hal else None
        self._owner = threading.get_ident()
        self._contexts = threading.local()

    def _context_for(self, busy: bool):
        """The VM context this thread invokes the kernel in. On the hybrid device a kernel that
        runs inline when the queue is empty is queued on the thread pool when it is `busy`:
        the host then goes on to the next op instead of waiting for the queue to empty."""
        queued = busy and self.hal is not self.device.hal
        if threading.get_ident() == self._owner:
            return self._queued if queued else self._context
        key = "queued" if queued else "context"
        context = getattr(self._contexts, key, None)
        if context is None:
            context = self.device.new_context(self._module, None if queued else self.hal)
            setattr(self._contexts, key, context)
        return context

    @classmethod
    def empty(cls, device: Device, name: str, plan) -> "Kernel":
        """A kernel with nothing to compute (every result is zero-size): no launch."""
        k = cls(device, None, name, plan)
        k.validated, k.launches, k.probed = True, False, True
        return k

    launches = True  # False for Kernel.empty
    packed_input = None  # see __init__

    def pack(self, weight_buffer):
        """The module's `pack` function on a weight (prepack.packed_weight keeps the result)."""
        args = rt.VmVariantList(3)
        args.push_ref(weight_buffer)
        results = rt.VmVariantList(1)
        self.device.queue.submit(self._context_for, self._pack, args, results, self._fenced)
        return results.get_as_object(0, rt.HalBufferView)

    def __call__(self, buffers, scalars=()) -> list:
        if not self.launches:
            return []
        if not self.probed:
            return self._first_call(buffers, scalars)
        if self.copy_inputs:
            buffers = list(buffers)
            for i in self.copy_inputs:
                buffers[i] = self.device.copy(buffers[i])
        return self._invoke(buffers, scalars)

    def _invoke(self, buffers, scalars):
        args = rt.VmVariantList(len(buffers) + len(scalars) + 2)  # + the wait and signal fences
        for b in buffers:
            args.push_ref(b)
        if self.takes_scalars:
            for v in scalars:
                if isinstance(v, float):
                    args.push_float(v)
                else:
                    args.push_int(v)
        results = rt.VmVariantList(self._num_outputs)
        if KernelTiming.enabled:  # the kernel alone: the queue is emptied before and after
            self.device.queue.drain()
            start = time.perf_counter()
            self.device.queue.submit(self._context_for, self._main, args, results, self._fenced)
            self.device.queue.drain()
            KernelTiming.records.append((self.name, time.perf_counter() - start))
        else:
            self.device.queue.submit(self._context_for, self._main, args, results, self._fenced)
        return [results.get_as_object(i, rt.HalBufferView) for i in range(self._num_outputs)]

    def _first_call(self, buffers, scalars):
        """The kernel's first call, when no earlier process has probed it: every input is
        passed as a copy, and an input whose memory a result lies in is passed as a copy from
        now on. IREE can compute a result in the storage of an argument (iree-org/iree#16168;
        in 3.13, a grouped convolution whose output is the size of its bias, through the bias's
        reshape), which would corrupt the caller's tensor and every tensor sharing its buffer.

        A kernel that returns an input unchanged (floor of an integer tensor) is treated the
        same: its input is copied on every call, as PyTorch copies it. Whether the bytes changed
        cannot tell the two apart (a convolution of zeros leaves its bias's bytes as they were)."""
        with _FIRST_CALLS:
            if self.probed:  # another thread's first call settled it meanwhile
                return self(buffers, scalars)
            copies = [self.device.copy(b) for b in buffers]
            outs = self._invoke(copies, scalars)
            written = {i for i, c in enumerate(copies) if any(self.device.overlap(o, c) for o in outs)}
            new = written - set(self.copy_inputs)  # not already copied for lowering.written_arguments
            callbacks = []
            for kernel in (self, self.twin):
                if kernel is not None:
                    kernel.copy_inputs = tuple(sorted(set(kernel.copy_inputs) | written))
                    kernel.probed = True
                    callbacks.append(kernel.on_probed)
                    kernel.on_probed = None
        if new:
            log.info("%s: a result of IREE's kernel lies in the memory of input(s) %s (computed there, or "
                     "the input returned as it is); they are passed as copies", self.name, sorted(new))
            STATS.input_written(self.name)
        on_probed = next((c for c in callbacks if c is not None), None)  # the twins share one
        if on_probed is not None:
            on_probed(self.copy_inputs)
        return outs

    def __repr__(self):
        return f"Kernel({self.name}, {len(self.plan.live_inputs)} in, {self._num_outputs} out, {self.device.driver})"


class FlatKernel(Kernel):
    """A shape-generic kernel (flat.py): its inputs and results have dynamic sizes. On the hybrid
    device it is loaded on both runtime devices, and each call's first input's element count
    picks one (`for_length`), as the work size picks one for a kernel of static shapes."""

    flat = True

    def __init__(self, device: Device, vmfb: bytes, name: str, plan, **options):
        super().__init__(device, vmfb, name, plan, hal=device.hal, **options)
        length = math.prod(plan.input_shapes[0]) if plan.input_shapes else 1  # the first input's elements
        per_element = max(self.work, 1) / max(length, 1)
        self.inline = None
        if device.inline is not None:
            self.inline = Kernel(device, vmfb, name, plan, hal=device.inline, **options)
            self.inline.validated = True  # validation is the entry's (this kernel's) own
            self.inline.twin, self.twin = self, self.inline  # a first call on either settles both
            self.inline_below = device.crossover / per_element  # lengths below it run inline

    def for_length(self, n: int) -> Kernel:
        """The kernel to invoke for inputs of `n` elements."""
        if self.inline is not None and n < self.inline_below:
            return self.inline
        return self
