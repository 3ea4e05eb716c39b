"""The key of an op call: the op and its argument metadata, computed before anything is built.

Tensors contribute dtype, sizes and strides; lists their length; other values their type and
value, except *runtime scalars*: a Python float or int in an argument that may carry one that
varies between calls (a learning rate, alpha, eps: see ops.OpKind.scalar_args) contributes only
its type, and is passed to the kernel as an argument, as JAX does with weakly typed Python
scalars. Ops whose lowering needs the value get kernels keyed by it (`static_key`).

`abstract` runs on every call, so it builds nothing: the argument *template* (each tensor a
`Slot`, each runtime scalar a `ScalarSlot`, negative dims made non-negative) is made only on a
cache miss.
"""

from __future__ import annotations

import torch

from .device import COMPILED_DTYPES
from .iree_compile import op_flags
from .ops import DIM_ARGS
from .recipe import Recipe, ScalarSlot, Slot, TensorSpec
from .tensor import TorchMLIRTensor, DEVICE_TYPE

_INT64 = (-(2**63), 2**63)


def is_runtime_scalar(kind, where, value) -> bool:
    t = type(value)
    if t is float:
        return where in kind.scalar_args
    if t is int:
        return where in kind.scalar_args and _INT64[0] <= value < _INT64[1]
    return False


class OpCall:
    """An op call abstracted: its key, its device tensor inputs (the kernel's inputs, in slot
    order), and, built only on a miss, the argument template."""

    __slots__ = ("func", "kind", "key", "tensors", "scalars", "device", "args", "kwargs", "host_only")

    def __init__(self, func, kind, key, tensors, scalars, device, args, kwargs, host_only):
        self.func, self.kind, self.key, self.tensors, self.device = func, kind, key, tensors, device
        self.scalars = scalars  # the runtime scalars' values, in template order
        self.args, self.kwargs = args, kwargs
        self.host_only = host_only  # a dtype with no IREE element type: runs natively

    def template(self, bake_scalars: bool = False):
        """(args, kwargs) with each tensor replaced by its Slot and each runtime scalar by its
        ScalarSlot (or its value, with `bake_scalars`), in the same order as the key."""
        slots: dict = {}
        kind = self.kind

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

        n = [0]

        def top(where, x):
            if is_runtime_scalar(kind, where, x):
                n[0] += 1
                return x if bake_scalars else ScalarSlot(n[0] - 1, type(x))
            return visit(x)

        t_args = tuple(top(i, a) for i, a in enumerate(self.args))
        t_kwargs = {name: top(name, self.kwargs[name]) for name in sorted(self.kwargs)}
        return normalize_dims(self.kind, self.args, self.kwargs, t_args, t_kwargs)

    def recipe(self, static: bool = False) -> Recipe:
        """What to build for this call: with runtime scalars, or (`static`) for the key that
        includes their values."""
        specs = [TensorSpec(tuple(t.shape), tuple(t.stride()), t.dtype) for t in self.tensors]
        device = self.device
        return Recipe(self.kind.name, self.func, self.template(bake_scalars=static), specs, device.driver,
                      op_flags(device.compile_flags, self.kind.name, specs[0].shape if specs else None),
                      self.static_key() if static else self.key)

    def static_key(self):
        from .compile_service import static_key_of

        return static_key_of(self.key, self.scalars)


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
    scalars: list = []
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

    scalar_args = kind.scalar_args
    for i, a in enumerate(args):
        if scalar_args and is_runtime_scalar(kind, i, a):
            key.append((type(a), "runtime"))
            scalars.append(a)
        else:
            visit(a)
    if kwargs:
        for name in sorted(kwargs):
            key.append(name)
            v = kwargs[name]
            if scalar_args and is_runtime_scalar(kind, name, v):
                key.append((type(v), "runtime"))
                scalars.append(v)
            else:
                visit(v)
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
    return OpCall(func, kind, tuple(key), tensors, tuple(scalars), device, args, kwargs, host_only)
