"""The hit path: one prebuilt callable per key, as JAX's `apply_primitive` fetches one.

    runner = RUNNERS.get(fast_key(func, args))      # no pytree walk, no lock
    result = runner(args)                           # inputs -> kernel -> results, write-back

A `Runner` is made the first time a key's kernel runs through the full path (dispatch.run_op),
for calls it can serve alone: tensors, numbers, None, lists of ints and lists of tensors (cat's
inputs) as positional arguments, keyword arguments that are neither tensors nor runtime scalars
(clone's memory_format, _to_copy's dtype), no guard, no validation. It holds the kernel, which
arguments are its tensor inputs and runtime scalars, the metadata of every result (computed
once), the write-back of written inputs, and for indexing ops the bounds probe and each index's
valid range (both follow from the key). Anything else takes the full path each time.
"""

from __future__ import annotations

import math

import torch
from torch.utils._pytree import tree_unflatten

from . import bounds, prepack
from .buffers import dense_buffer, forget_gathers, write
from .kernel import Kernel
from .kernel_cache import CACHE, COMPILED, METADATA, STATS
from .keys import _INT64, is_runtime_scalar
from .ops import NATIVE, VIEW
from .tensor import DeviceStorage, TorchMLIRTensor

RUNNERS: dict = {}  # fast key -> Runner (insertion order: the oldest goes first)
_BY_KERNEL: dict = {}  # id(kernel) -> the fast keys of its runners


def fast_key(func, args, kwargs, scalar_positions):
    """A key for a simple call (see above), or None when the call is not that simple. Tensors
    contribute their spec (or which earlier tensor they repeat), runtime scalars their type,
    other values their type and value."""
    key = [func]
    tensors = []
    device = None
    for i, a in enumerate(args):
        t = type(a)
        if t is TorchMLIRTensor:
            device = _tensor_key(a, key, tensors, device)
            if device is None:
                return None
        elif t is float:
            key.append((float, "runtime") if i in scalar_positions else (float, a.hex()))
        elif t is int:  # as keys.is_runtime_scalar: an int beyond int64 is part of the key
            key.append((int, "runtime") if i in scalar_positions and _INT64[0] <= a < _INT64[1] else (int, a))
        elif a is None:
            key.append(a)
        elif t is bool:
            key.append((bool, a))  # not a bare True: True == 1 (a repeated tensor's position)
        elif t is list or t is tuple:
            if _is_tensor_list(a):  # a list of tensors: spliced in (flat_args)
                key.append((t, len(a)))
                for v in a:
                    if type(v) is not TorchMLIRTensor:
                        return None
                    device = _tensor_key(v, key, tensors, device)
                    if device is None:
                        return None
                continue
            for v in a:
                if type(v) is not int:
                    return None
            key.append((t, tuple(a)))
        else:
            return None
    if kwargs:
        for name in sorted(kwargs):
            v = kwargs[name]
            t = type(v)
            if t is float or t is int:
                if name in scalar_positions:
                    return None  # a runtime scalar by name: the full path passes those
                key.append((name, t, v.hex() if t is float else v))
            elif v is None or t is str or t in _KWARG_TYPES:
                key.append((name, v))
            elif t is bool:
                key.append((name, bool, v))
            elif (t is list or t is tuple) and all(type(x) is int for x in v):
                key.append((name, t, tuple(v)))
            else:
                return None  # a tensor (out=) or anything else: the full path
    if device is None:
        return None
    key.append(device)
    return tuple(key)


_KWARG_TYPES = (torch.dtype, torch.memory_format, torch.layout, torch.device)


def _tensor_key(a, key, tensors, device):
    """Add tensor `a` to the key; the call's device, or None when `a` is on another one."""
    for j, seen in enumerate(tensors):
        if seen is a:
            key.append(("same", j))
            return device
    d = a._storage_ref.device
    if device is not None and d is not device:
        return None
    tensors.append(a)
    key.append(a._spec)
    return d


def _is_tensor_list(a) -> bool:
    return (type(a) is list or type(a) is tuple) and len(a) > 0 and type(a[0]) is TorchMLIRTensor


def flat_args(args):
    """The positional arguments with each list of tensors spliced in: a runner finds its tensor
    inputs in this list (its scalars in `args` itself)."""
    if not any(_is_tensor_list(a) for a in args):
        return args
    flat = []
    for a in args:
        if _is_tensor_list(a):
            flat.extend(a)
        else:
            flat.append(a)
    return flat


class Runner:
    """A key's kernel with everything its calls need, decided once."""

    __slots__ = ("kernel", "invoke", "flat", "tensor_positions", "scalar_positions", "live", "outputs", "writes", "resize",
                 "leaves", "tree", "single", "outcome", "device", "probe", "probed", "ranges", "lists")

    def __init__(self, kernel, call, args):
        plan = kernel.plan
        self.kernel = kernel
        self.device = call.device
        flat = flat_args(args)
        self.lists = flat is not args  # tensors inside lists: positions in flat_args
        # which (flat) argument each kernel tensor input is (the call's tensors, in order)
        position = {id(a): i for i, a in enumerate(flat) if isinstance(a, TorchMLIRTensor)}
        self.tensor_positions = tuple(position[id(t)] for t in call.tensors)
        self.scalar_positions = tuple(i for i, a in enumerate(args) if is_runtime_scalar(call.kind, i, a))
        self.live = tuple(self.tensor_positions[i] for i in plan.live_inputs)
        self.flat = None  # a shape-generic kernel (flat.py): the shapes it takes its inputs in
        self.invoke = kernel
        specs = [(s.dtype, s.shape, s.stride) for s in plan.out_specs]
        self.resize = tuple((self.tensor_positions[slot], shape) for slot, shape in zip(plan.writes, plan.write_shapes))
        if kernel.flat:
            specs = call.results(plan)
            self.invoke = kernel.for_length(call.tensors[0]._numel)
            self.resize = ()  # in place: written inputs keep their shape
            self.flat = tuple(call.flat_shapes[i] for i in plan.live_inputs)
        self.outputs = tuple((dtype, shape, stride, numel, numel * dtype.itemsize,
                              TorchMLIRTensor._metadata_of(dtype, shape, stride, 0))
                             for dtype, shape, stride in specs for numel in (math.prod(shape),))
        self.writes = tuple(self.tensor_positions[slot] for slot in plan.live_writes)
        self.leaves = tuple((how, self.tensor_positions[v] if how == "arg" else v) for how, v in plan.leaves)
        self.tree = plan.tree
        self.single = plan.single_fresh
        self.outcome = COMPILED if kernel.launches else METADATA
        self.probe = None  # the bounds probe, its inputs (argument positions) and their ranges

    def check_bounds_with(self, probe, checks, args):
        """Make this runner check its index arguments (their ranges follow from the key)."""
        position = {id(a): i for i, a in enumerate(flat_args(args))}
        self.probe = probe
        self.probed = tuple(position[id(c.tensor)] for c in checks)
        self.ranges = tuple((c.lo, c.hi) for c in checks)

    def _in_bounds(self, args) -> bool:
        (result,) = self.probe([dense_buffer(args[i]) for i in self.probed])
        minmax = self.device.read_int64(result, 2 * len(self.ranges))
        STATS.host_transfer(16 * len(self.ranges))
        STATS.bounds_check()
        for i, (lo, hi) in enumerate(self.ranges):
            low, high = minmax[2 * i], minmax[2 * i + 1]
            if low <= high and (low < lo or high >= hi):
                return False
        return True

    def __call__(self, args):
        scalars = tuple(args[i] for i in self.scalar_positions)
        if self.lists:
            args = flat_args(args)
        for pos, shape in self.resize:
            if args[pos]._spec[1] != shape:
                return None  # an out= tensor to resize: the full path does that
        for pos in self.writes:  # a written tensor sharing its storage with another input:
            written = args[pos]  # the full path checks how they overlap (guards.OVERLAP_REASON)
            for i in self.tensor_positions:
                if args[i]._storage_ref is written._storage_ref and args[i] is not written:
                    return None
        if self.probe is not None and not self._in_bounds(args):
            return None  # an index out of range: the full path runs it natively, which raises
        if self.flat:  # each input must be its whole storage (the key does not say)
            buffers = []
            for i, shape in zip(self.live, self.flat):
                a = args[i]
                if a._whole_nbytes != a._storage_ref.nbytes:
                    return None
                buffers.append(a._storage_ref.view(a.dtype, shape))
        elif self.kernel.packed_input is None:
            buffers = [dense_buffer(args[i]) for i in self.live]
        else:  # a convolution's weight, pre-packed
            buffers = prepack.input_buffers(self.kernel, [args[i] for i in self.live])
        outs = iter(self.invoke(buffers, scalars))
        device = self.device
        fresh = []
        for dtype, shape, stride, numel, nbytes, meta in self.outputs:
            result = next(outs) if numel else None
            storage = DeviceStorage(device, nbytes, result.get_buffer(), ((dtype, tuple(result.shape)), result)) \
                if numel else DeviceStorage(device, 0, None)
            fresh.append(TorchMLIRTensor._make_known(storage, dtype, shape, stride, meta))
        for pos in self.writes:
            write(args[pos], next(outs))
        if self.single:
            return fresh[0]
        return tree_unflatten([fresh[v] if how == "out" else args[v] if how == "arg" else v
                               for how, v in self.leaves], self.tree)


def install(key, kernel, call, args):
    """Make the runner of a simple call whose kernel just ran through the full path."""
    kind = call.kind
    if kind.kind in (VIEW, NATIVE) or kind.guard is not None or call.host_only:
        return
    runner = Runner(kernel, call, args)
    if kind.bounds:
        checks = bounds.checks_of(kind.bounds, kind.arg_names, args, {})
        if any(not isinstance(c.tensor, TorchMLIRTensor) or c.ignore is not None for c in checks):
            return  # 0-d CPU indices, or an ignore_index: the full path checks those
        if checks:
            probe = CACHE.get(bounds.probe_recipe(checks, call.device)[0])
            if not isinstance(probe, Kernel):
                return
            runner.check_bounds_with(probe, checks, args)
    while len(RUNNERS) >= CACHE.max_entries:
        _drop(next(iter(RUNNERS)))
        STATS.evict("runners")
    RUNNERS[key] = runner
    _BY_KERNEL.setdefault(id(kernel), set()).add(key)


def _drop(key):
    runner = RUNNERS.pop(key, None)
    if runner is not None:
        keys = _BY_KERNEL.get(id(runner.kernel))
        if keys is not None:
            keys.discard(key)
            if not keys:
                del _BY_KERNEL[id(runner.kernel)]


def forget_kernel(kernel):
    """The cache evicted `kernel` (None: cleared everything): its runners go too, since they
    would keep it alive and serve it, and so do the remembered gathers (buffers.py)."""
    forget_gathers()
    if kernel is None:
        clear()
        return
    for key in list(_BY_KERNEL.pop(id(kernel), ())):
        RUNNERS.pop(key, None)


CACHE.on_evict = forget_kernel


def clear():
    RUNNERS.clear()
    _BY_KERNEL.clear()
