"""What kind of op an OpOverload is, read from its schema (and memoized per op).

  - VIEW: returns aliases of an input and writes nothing (view, t, select, split, detach, ...):
    new metadata over the same storage, no kernel.
  - MUTATION: writes into an argument (in-place `add_`, `out=` variants, `copy_`): compile its
    functionalized form, which returns the new values, then write them into the storages.
  - FUNCTIONAL: everything else: compile it.
  - NATIVE: no meaningful compiled form (random ops, ops returning Python values): always run
    natively, counted as a fallback.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

aten = torch.ops.aten

VIEW, MUTATION, FUNCTIONAL, NATIVE = "view", "mutation", "functional", "native"


@dataclass(frozen=True)
class OpKind:
    kind: str
    name: str
    written: tuple = ()  # names of the written arguments, in schema order (MUTATION, and NATIVE ops that write)
    reason: str = ""  # NATIVE: why
    native_step: str = "unsupported"  # NATIVE: the fallback step it counts under (transfer, random, ...)
    reads_self: bool = True  # False: only self's metadata is read (random fills, *_like factories)
    inplace_view: bool = False  # changes the metadata of `self` (squeeze_, t_, as_strided_, ...)
    arg_names: tuple = field(default=())
    dim_rank: object = None  # DimRank: which rank each dim argument counts from (None: no dims)
    bounds: tuple = ()  # bounds.IndexBound per index argument to check before a kernel runs
    guard: object = None  # guards.Guard: known wrong kernels of this op run natively
    scalar_args: frozenset = frozenset()  # positions and names of arguments that may be runtime scalars


@dataclass(frozen=True)
class DimRank:
    """Where the rank that a negative `dim`/`dims` argument counts from comes from, read from
    the schema: `("rank", i, extra)`: the rank of tensor argument i, plus `extra` for ops whose
    dim indexes their output (unsqueeze_copy, stack: one more dim); `("list", i, extra)`: the
    rank of the first tensor of the tensor-list argument i (cat, stack); `("len", i)`: the
    length of the int-list argument i (backward ops given `input_sizes`)."""

    source: str
    index: int
    extra: int = 0

    def rank(self, args, kwargs, arg_names):
        value = args[self.index] if self.index < len(args) else kwargs.get(arg_names[self.index])
        if self.source == "len":
            return len(value) if isinstance(value, (list, tuple)) else None
        if self.source == "list":
            tensors = [t for t in value or () if isinstance(t, torch.Tensor)]
            # cat skips legacy 1-D empty tensors when it reads the rank
            ranked = [t for t in tensors if not (t.dim() == 1 and t.numel() == 0)] or tensors
            return ranked[0].dim() + self.extra if ranked else None
        return value.dim() + self.extra if isinstance(value, torch.Tensor) else None


DIM_ARGS = ("dim", "dims")

# Ops whose scalars may be runtime arguments: the scalar enters their computation the same way
# whatever its value. Any other op keeps its scalars in the key, because PyTorch's kernels or
# torch-mlir's lowerings may specialise on the value in ways a trace does not show (norm's
# ord=inf takes a max, smooth_l1_loss's beta=0 is an L1 loss, pow's 0.5 is a sqrt, addmm's
# beta=0 ignores NaNs in its input). In-place variants (add_) share their op's entry.
RUNTIME_SCALAR_OPS = {
    "add", "sub", "rsub", "mul", "div", "true_divide", "addcmul", "addcdiv", "lerp",
    "clamp", "clamp_min", "clamp_max", "clip", "fill", "full_like", "new_full", "masked_fill",
    "index_fill", "where", "eq", "ne", "lt", "le", "gt", "ge",
    "leaky_relu", "leaky_relu_backward", "hardtanh", "hardtanh_backward", "threshold",
    "threshold_backward", "elu", "elu_backward", "celu", "softplus", "softplus_backward",
    "hardshrink", "hardshrink_backward", "softshrink", "softshrink_backward", "nan_to_num",
}


def _scalar_args(schema) -> frozenset:
    """Arguments that can carry a Python float or int that varies between calls (learning
    rates, alpha, momentum, clamp bounds): Scalar and float arguments, and Tensor arguments
    (where PyTorch passes Python numbers as wrapped numbers), of the ops in
    RUNTIME_SCALAR_OPS. Int arguments (dims, sizes) always stay in the key."""
    base = schema.name.split("::")[-1]
    if base.endswith("_") and not base.startswith("__"):
        base = base[:-1]
    if base not in RUNTIME_SCALAR_OPS:
        return frozenset()
    out = set()
    for i, a in enumerate(schema.arguments):
        t = a.type
        if isinstance(t, torch.OptionalType):
            t = t.getElementType()
        if isinstance(t, (torch.NumberType, torch.FloatType, torch.TensorType)):
            out.add(i)
            out.add(a.name)
    return frozenset(out)


# ops whose dim indexes their result, which has one more dim than the input
_OUTPUT_RANK_OPS = {"unsqueeze", "unsqueeze_copy", "unsqueeze_", "stack", "_stack"}
# ops where dim=-1 means "no dim", not the last one
_NO_DIM_NORMALIZATION = {
    "_weight_norm", "_weight_norm_interface", "_weight_norm_interface_backward",
    "_weight_norm_differentiable_backward", "norm_except_dim",
}
_SIZES_ARGS = ("input_sizes", "self_sizes")


def _dim_rank(schema) -> DimRank | None:
    names = [a.name for a in schema.arguments]
    if not any(n in DIM_ARGS for n in names):
        return None
    base = schema.name.split("::")[-1]
    if base in _NO_DIM_NORMALIZATION:
        return None
    for i, n in enumerate(names):
        if n in _SIZES_ARGS or (base == "value_selecting_reduction_backward" and n == "sizes"):
            return DimRank("len", i)
    extra = 1 if base in _OUTPUT_RANK_OPS else 0
    for i, a in enumerate(schema.arguments):
        if isinstance(a.type, torch.TensorType):
            return DimRank("rank", i, extra)
        if _is_tensor_container(a.type):
            return DimRank("list", i, extra)
    return None


def _batch_norm_functional(input, weight, bias, running_mean, running_var, training, momentum, eps):
    """native_batch_norm writes its running statistics; functionalization does not rewrite it.
    Returns (results, new values of running_mean/running_var, None where unchanged)."""
    if training and running_mean is not None and running_var is not None:
        out, mean, rstd, new_mean, new_var = aten._native_batch_norm_legit_functional.default(
            input, weight, bias, running_mean, running_var, True, momentum, eps
        )
        return (out, mean, rstd), (new_mean, new_var)
    if running_mean is not None and running_var is not None:
        results = aten._native_batch_norm_legit_no_training.default(
            input, weight, bias, running_mean, running_var, momentum, eps
        )
    else:
        results = aten._native_batch_norm_legit.no_stats(input, weight, bias, training, momentum, eps)
    return tuple(results), (None, None)


# Mutating ops that PyTorch's functionalization leaves alone (native_batch_norm's schema does not
# even mark its running statistics as written): fn(*args) -> (returns, new values of the written
# arguments, None where unchanged), and the names of those arguments.
FUNCTIONAL_REWRITES = {
    aten.native_batch_norm.default: _batch_norm_functional,
}
REWRITE_WRITTEN = {
    aten.native_batch_norm.default: ("running_mean", "running_var"),
}

# Ops that are never compiled.
_NATIVE_OPS = {
    aten._local_scalar_dense.default: "reads a value back to Python (host transfer)",
    aten.set_.source_Storage_storage_offset: "changes storage metadata",
    aten.set_.source_Tensor: "changes storage metadata",
    aten.set_.source_Storage: "changes storage metadata",
}


# Random ops that read only the metadata of `self`: they overwrite it, or make a new tensor like it.
_SELF_NOT_READ = {
    "normal_", "uniform_", "exponential_", "cauchy_", "log_normal_", "geometric_", "random_",
    "aten.bernoulli_.float", "rand_like", "randn_like", "randint_like",
}


def _is_write(arg) -> bool:
    return arg.alias_info is not None and arg.alias_info.is_write


@functools.lru_cache(maxsize=None)
def classify(func) -> OpKind:
    from . import bounds, guards

    schema = func._schema
    name = str(func)
    arg_names = tuple(a.name for a in schema.arguments)
    written = REWRITE_WRITTEN.get(func) or tuple(a.name for a in schema.arguments if _is_write(a))
    common = dict(name=name, arg_names=arg_names, written=written)
    if torch.Tag.inplace_view in func.tags:
        return OpKind(MUTATION, inplace_view=True, **common)
    if func in _NATIVE_OPS:
        step = "transfer" if func is aten._local_scalar_dense.default else "unsupported"
        return OpKind(NATIVE, reason=_NATIVE_OPS[func], native_step=step, **common)
    if torch.Tag.nondeterministic_seeded in func.tags:
        reason = "random op: runs natively with the CPU generator, so values match the CPU's under the same seed"
        reads = schema.name.split("::")[-1] not in _SELF_NOT_READ and str(func) not in _SELF_NOT_READ
        return OpKind(NATIVE, reason=reason, native_step="random", reads_self=reads, **common)
    for ret in schema.returns:
        t = ret.type
        if not (isinstance(t, torch.TensorType) or _is_tensor_container(t) or _is_optional_tensor(t)):
            return OpKind(NATIVE, reason=f"returns {t}, not tensors", **common)
    facts = dict(dim_rank=_dim_rank(schema), bounds=bounds.for_schema(schema), guard=guards.for_op(name),
                 scalar_args=_scalar_args(schema), **common)
    if written:
        return OpKind(MUTATION, **facts)
    if any(r.alias_info is not None for r in schema.returns):
        return OpKind(VIEW, **facts)
    return OpKind(FUNCTIONAL, **facts)


def _is_tensor_container(t) -> bool:
    return isinstance(t, torch.ListType) and isinstance(t.getElementType(), (torch.TensorType, torch.OptionalType))


def _is_optional_tensor(t) -> bool:
    return isinstance(t, torch.OptionalType) and isinstance(t.getElementType(), torch.TensorType)
