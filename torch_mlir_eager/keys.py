"""The key of an op call: the op and its argument metadata, computed before anything is built.

Tensors contribute dtype, sizes and strides; scalars their type and value; lists their length.
`abstract` runs on every call, so it builds nothing: the argument *template* (each tensor
replaced by a `Slot`, negative dims made non-negative) is made only on a cache miss.
"""

from __future__ import annotations

import torch

from . import compiler
from .device import COMPILED_DTYPES
from .lowering import Slot, TensorSpec
from .ops import DIM_ARGS
from .tensor import TorchMLIRTensor, DEVICE_TYPE


class OpCall:
    """An op call abstracted: its key, its device tensor inputs (the kernel's inputs, in slot
    order), and, built only on a miss, the argument template."""

    __slots__ = ("func", "kind", "key", "tensors", "device", "args", "kwargs", "host_only")

    def __init__(self, func, kind, key, tensors, device, args, kwargs, host_only):
        self.func, self.kind, self.key, self.tensors, self.device = func, kind, key, tensors, device
        self.args, self.kwargs = args, kwargs
        self.host_only = host_only  # a dtype with no IREE element type: runs natively

    def template(self):
        """(args, kwargs) with each tensor replaced by its Slot, in the same order as the key."""
        slots: dict = {}

        def visit(x):
            if isinstance(x, torch.Tensor):
                if id(x) not in slots:
                    slots[id(x)] = len(slots)
                return Slot(slots[id(x)])
            if isinstance(x, (list, tuple)):
                return type(x)(visit(v) for v in x)
            if isinstance(x, torch.device) and x.type == DEVICE_TYPE:
                return torch.device("cpu")
            return x

        t_args = tuple(visit(a) for a in self.args)
        t_kwargs = {name: visit(self.kwargs[name]) for name in sorted(self.kwargs)}
        return normalize_dims(self.kind, self.args, self.kwargs, t_args, t_kwargs)

    def recipe(self) -> compiler.Recipe:
        specs = [TensorSpec(tuple(t.shape), tuple(t.stride()), t.dtype) for t in self.tensors]
        return compiler.Recipe(self.kind.name, self.func, self.kind, self.template(), specs, self.device, self.key)


def normalize_dims(kind, args, kwargs, t_args, t_kwargs):
    """Negative `dim`/`dims` arguments made non-negative against the rank each one counts from
    (the op's schema says which: see ops.DimRank), because torch-mlir mishandles some negative
    dims (scatter_add with dim=-1 aborts the lowering). A dim outside [-rank, rank) is left as
    it is, for PyTorch to reject."""
    rule = kind.dim_rank
    if rule is None:
        return t_args, t_kwargs
    rank = rule.rank(args, kwargs, kind.arg_names)
    if rank is None:
        return t_args, t_kwargs
    rank = max(rank, 1)  # a 0-d tensor takes dims -1 and 0

    def norm(v):
        if isinstance(v, int) and not isinstance(v, bool):
            return v + rank if -rank <= v < 0 else v
        if isinstance(v, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            return type(v)(norm(x) for x in v)
        return v

    names = kind.arg_names
    t_args = tuple(norm(a) if i < len(names) and names[i] in DIM_ARGS else a for i, a in enumerate(t_args))
    t_kwargs = {k: norm(v) if k in DIM_ARGS else v for k, v in t_kwargs.items()}
    return t_args, t_kwargs


def abstract(func, kind, args, kwargs) -> OpCall:
    """The key of a call and its tensor inputs. Tensors: dtype, shape, strides; scalars: type
    and value; lists: their length. Nothing is built here: this runs on every call."""
    tensors: list = []
    slots: dict = {}
    key: list = [func]
    cpu_scalars = None
    host_only = False

    def visit(x):
        nonlocal cpu_scalars, host_only
        if isinstance(x, TorchMLIRTensor):
            slot = slots.get(id(x))
            if slot is None:
                slots[id(x)] = len(tensors)
                tensors.append(x)
                spec = x._spec
                key.append(spec)
                if spec[0] not in COMPILED_DTYPES:
                    host_only = True
            else:
                key.append(("same", slot))
        elif isinstance(x, (list, tuple)):
            key.append((type(x), len(x)))
            for v in x:
                visit(v)
        elif isinstance(x, torch.Tensor):
            if x.dim() != 0 or x.device.type != "cpu":
                raise RuntimeError(
                    f"Expected all tensors to be on the same device, but found at least two "
                    f"devices, {DEVICE_TYPE}:0 and {x.device}! ({kind.name}; only 0-dim CPU "
                    f"tensors may be mixed with TorchMLIRTensors)"
                )
            slots[id(x)] = len(tensors)
            cpu_scalars = (cpu_scalars or []) + [len(tensors)]
            tensors.append(x)
            key.append((x.dtype, (), ()))
            if x.dtype not in COMPILED_DTYPES:
                host_only = True
        elif isinstance(x, float):
            key.append((float, x.hex()))
        elif isinstance(x, torch.device) and x.type == DEVICE_TYPE:
            key.append(DEVICE_TYPE)
        else:
            key.append((type(x), x))

    for a in args:
        visit(a)
    if kwargs:
        for name in sorted(kwargs):
            key.append(name)
            visit(kwargs[name])
    device = None
    for t in tensors:
        if isinstance(t, TorchMLIRTensor):
            d = t._storage_ref.device
            if device is None:
                device = d
            elif d is not device:
                raise RuntimeError(
                    f"Expected all tensors to be on the same IREE device, but found "
                    f"{device.driver} and {d.driver} ({kind.name})"
                )
    if cpu_scalars and not host_only:  # 0-dim CPU tensors join the op as device inputs
        for slot in cpu_scalars:
            tensors[slot] = TorchMLIRTensor(tensors[slot], device=device.driver)
    key.append(device.driver)
    return OpCall(func, kind, tuple(key), tensors, device, args, kwargs, host_only)
