"""Shape-generic kernels: one kernel per op for inputs of every shape.

Two kinds of call compute the same thing whatever their shapes, once their inputs are seen in a
fixed rank, so their kernels are keyed by a *flat key*: the call's key with each tensor's shape
and strides left out (dtypes, scalars and the rest stay).

* A **pointwise** op (PyTorch's `pointwise` tag: relu, add, mul, where, threshold_backward, ...)
  whose tensor inputs all have one shape: each input is taken as a 1-D array of its n elements.
* **Batch norm in eval mode** (`native_batch_norm` with training=False): the input (N, C, ...)
  as (N, C, L), the per-channel tensors as (C,).

Every tensor must be row-major and its whole storage (so that its storage is that array). The
kernel is built over dynamic sizes: compiler.py traces the op at two sets of sentinel sizes and
lowering.py keeps the module only if the two differ in nothing but those sizes inside tensor
types. Results come back in the same form, and take the first input's shape (row-major), which
is what PyTorch gives for such inputs. ResNet18 builds one relu_, one add_ and one batch norm
instead of five, four and five, and a model that sees a new sequence length builds no new
pointwise kernels. A call that is not eligible, or whose op does not build this way, takes a
kernel of its own shape, keyed by shape, as before.
"""

from __future__ import annotations

import math

import torch
from torch.utils._pytree import tree_unflatten

from .buffers import write
from .config import config
from .iree_compile import op_flags
from .keys import OpCall
from .layout import contiguous_strides
from .ops import FUNCTIONAL, MUTATION
from .recipe import Recipe, TensorSpec
from .tensor import TorchMLIRTensor

# The sizes flat recipes are traced at: dim i of a flat shape is SENTINELS[0][i] in the recipe and
# SENTINELS[1][i] in the second trace (compiler.py). Distinct, so that each maps back to one size.
SENTINELS = ((1009, 1013, 1019), (1021, 1031, 1033))

POINTWISE, BATCH_NORM = "pointwise", "batch_norm"
_RULES: dict = {}


def _rule(func, kind):
    if func in _RULES:
        return _RULES[func]
    from . import special

    rule = None
    if isinstance(func, torch._ops.OpOverload) and not kind.bounds and not kind.inplace_view \
            and special.handler_for(func, kind) is None:
        if torch.Tag.pointwise in func.tags and (
                kind.kind == FUNCTIONAL or (kind.kind == MUTATION and kind.written == ("self",))):
            rule = POINTWISE
        elif func is torch.ops.aten.native_batch_norm.default:  # (it writes the running stats)
            rule = BATCH_NORM
    _RULES[func] = rule
    return rule


def flat_call(call: OpCall):
    """The call as a flat call (keyed without shapes), or None when it is not eligible."""
    if not config.flat_kernels or call.host_only:
        return None
    rule = _rule(call.func, call.kind)
    tensors = call.tensors
    if rule is None or not tensors:
        return None
    for t in tensors:
        if not isinstance(t, TorchMLIRTensor) or not t.covers_storage() or t._spec[2] != contiguous_strides(t._spec[1]):
            return None
    first = tensors[0]
    if first._numel == 0:
        return None
    shape = first._spec[1]
    if rule == POINTWISE:
        if any(t._spec[1] != shape for t in tensors):
            return None
        dims = (first._numel,)
        flat_shapes = [dims] * len(tensors)
    else:  # batch norm: (input, weight, bias, running_mean, running_var, training=False, momentum, eps)
        args = call.args
        if call.kwargs or len(args) < 8 or args[5] is not False or args[0] is not first or len(shape) < 2 \
                or args[3] is None or args[4] is None:
            return None
        channels = shape[1]
        if any(t._spec[1] != (channels,) for t in tensors[1:]):
            return None
        dims = (shape[0], channels, math.prod(shape[2:]))
        flat_shapes = [dims] + [(channels,)] * (len(tensors) - 1)
    key = ("flat", rule) + tuple((e[0], "flat") if type(e) is tuple and len(e) == 3 and isinstance(e[0], torch.dtype)
                                 else e for e in call.key)
    flat = FlatCall(call.func, call.kind, key, tensors, call.scalars, call.device, call.args, call.kwargs, False)
    flat.dims, flat.flat_shapes = dims, flat_shapes
    return flat


class FlatCall(OpCall):
    """An eligible call under its flat key: `dims`, the sizes its sentinels stand for, and
    `flat_shapes`, each tensor input's shape as the kernel takes it."""

    __slots__ = ("dims", "flat_shapes")

    def recipe(self, static: bool = False) -> Recipe:
        specs = [TensorSpec(s, contiguous_strides(s), t.dtype)
                 for s, t in zip(self.trace_shapes(), self.tensors)]
        device = self.device
        return Recipe(self.kind.name, self.func, self.template(bake_scalars=static), specs, device.driver,
                      op_flags(device.compile_flags, self.kind.name), self.static_key() if static else self.key,
                      flat=True)

    def trace_shapes(self):
        """Each tensor's flat shape with the sentinels in place of its sizes."""
        rank = len(self.dims)
        first = SENTINELS[0][:rank]
        return [first if len(s) == rank else (first[1],) for s in self.flat_shapes]

    def results(self, plan):
        """(dtype, shape, strides) of each fresh result: the sentinels in the plan's shapes
        replaced by this call's sizes; the first input's flat shape is its real shape."""
        sizes = dict(zip(SENTINELS[0], self.dims))
        main, real = self.flat_shapes[0], self.tensors[0]._spec[1]
        out = []
        for spec in plan.out_specs:
            shape = tuple(sizes.get(d, d) for d in spec.shape)
            if shape == main:
                shape = real
            out.append((spec.dtype, shape, contiguous_strides(shape)))
        return out

    def buffers(self, plan):
        """The live inputs' storages, as the arrays the kernel takes."""
        tensors, shapes = self.tensors, self.flat_shapes
        return [tensors[i]._storage_ref.view(tensors[i].dtype, shapes[i]) for i in plan.live_inputs]


def run(kernel, call: FlatCall):
    """Run a flat kernel (kernel.FlatKernel) on a flat call: results of the inputs' shape."""
    plan = kernel.plan
    tensors = call.tensors
    invoke = kernel.for_length(tensors[0]._numel)
    outs = iter(invoke(call.buffers(plan), call.scalars))
    device = call.device
    fresh = [TorchMLIRTensor._from_buffer(device, dtype, next(outs) if math.prod(shape) else None, shape, stride)
             for dtype, shape, stride in call.results(plan)]
    for slot in plan.live_writes:
        write(tensors[slot], next(outs))
    if plan.single_fresh:
        return fresh[0]
    leaves = [fresh[v] if how == "out" else tensors[v] if how == "arg" else v for how, v in plan.leaves]
    return tree_unflatten(leaves, plan.tree)
