"""Shape-generic pointwise kernels: one kernel per op for inputs of every shape.

A pointwise op (PyTorch's `pointwise` tag: relu, add, mul, threshold_backward, ...) whose
tensor inputs all have the same shape, are row-major and are each their whole storage computes
the same thing as the op on those storages taken as 1-D arrays. Such a call is keyed by its
*flat key*: the call's key with each tensor's shape and strides left out (dtypes, scalars and
the rest stay). Its kernel is built once, over 1-D inputs of a dynamic length (compiler.py
traces the op at two lengths and checks that nothing else differs), and serves every shape:
ResNet18 builds one relu_ and one add_ instead of five and four, and a model that sees a new
sequence length builds no new pointwise kernels.

Results take the inputs' shape and (row-major) strides, which is what PyTorch gives for such
inputs. A call that is not eligible, or whose op does not build this way (the flat build fails
with step "flat" or any other), takes its own kernel, keyed by shape, as before.
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_unflatten

from .buffers import write
from .config import config
from .keys import OpCall
from .layout import contiguous_strides
from .ops import FUNCTIONAL, MUTATION
from .recipe import Recipe, TensorSpec
from .iree_compile import op_flags
from .tensor import TorchMLIRTensor

# the length flat recipes are traced at (compiler.FLAT_LENGTHS[0]; the compiler stack is not
# imported here)
TRACE_LENGTH = 1000003

_ELIGIBLE: dict = {}


def _eligible_op(func, kind) -> bool:
    ok = _ELIGIBLE.get(func)
    if ok is None:
        from . import special

        ok = _ELIGIBLE[func] = (
            isinstance(func, torch._ops.OpOverload) and torch.Tag.pointwise in func.tags
            and (kind.kind == FUNCTIONAL or (kind.kind == MUTATION and kind.written == ("self",)))
            and not kind.bounds and not kind.inplace_view and special.handler_for(func, kind) is None
        )
    return ok


def flat_call(call: OpCall):
    """The call as a flat call (keyed without shapes), or None when it is not eligible."""
    if not config.flat_kernels or call.host_only or not _eligible_op(call.func, call.kind):
        return None
    tensors = call.tensors
    if not tensors:
        return None
    spec = tensors[0]._spec
    shape, stride = spec[1], spec[2]
    if tensors[0]._numel == 0 or stride != contiguous_strides(shape):
        return None
    for t in tensors:
        if not isinstance(t, TorchMLIRTensor) or not covers(t) or t._spec[1] != shape or t._spec[2] != stride:
            return None
    key = ("flat",) + tuple((e[0], "flat") if type(e) is tuple and len(e) == 3 and isinstance(e[0], torch.dtype)
                            else e for e in call.key)
    return FlatCall(call.func, call.kind, key, tensors, call.scalars, call.device, call.args, call.kwargs, False)


def covers(t) -> bool:
    """The tensor is its whole storage (dense, offset 0): the storage is its flat array."""
    return t._whole_nbytes == t._storage_ref.nbytes


class FlatCall(OpCall):
    """An eligible call under its flat key; its recipe has 1-D inputs."""

    __slots__ = ()

    def recipe(self, static: bool = False) -> Recipe:
        specs = [TensorSpec((TRACE_LENGTH,), (1,), t.dtype) for t in self.tensors]
        device = self.device
        return Recipe(self.kind.name, self.func, self.template(bake_scalars=static), specs, device.driver,
                      op_flags(device.compile_flags, self.kind.name), self.static_key() if static else self.key,
                      flat=True)


def flat_buffer(t):
    """A tensor that is its whole storage, as the 1-D array a flat kernel takes."""
    return t._storage_ref.flat(t.dtype)


def run(kernel, call):
    """Run a flat kernel (kernel.FlatKernel) on a flat call: results of the inputs' shape."""
    plan = kernel.plan
    tensors = call.tensors
    first = tensors[0]
    shape, stride = first._spec[1], first._spec[2]
    invoke = kernel.for_length(first._numel)
    outs = iter(invoke([flat_buffer(tensors[i]) for i in plan.live_inputs], call.scalars))
    device = call.device
    fresh = [TorchMLIRTensor._from_buffer(device, spec.dtype, next(outs), shape, stride) for spec in plan.out_specs]
    for slot in plan.live_writes:
        write(tensors[slot], next(outs))
    if plan.single_fresh:
        return fresh[0]
    leaves = [fresh[v] if how == "out" else tensors[v] if how == "arg" else v for how, v in plan.leaves]
    return tree_unflatten(leaves, plan.tree)
