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
    written: tuple = ()  # MUTATION: names of the written arguments, in schema order
    reason: str = ""  # NATIVE: why
    inplace_view: bool = False  # changes the metadata of `self` (squeeze_, t_, as_strided_, ...)
    arg_names: tuple = field(default=())



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


def _is_write(arg) -> bool:
    return arg.alias_info is not None and arg.alias_info.is_write


@functools.lru_cache(maxsize=None)
def classify(func) -> OpKind:
    schema = func._schema
    name = str(func)
    arg_names = tuple(a.name for a in schema.arguments)
    if torch.Tag.inplace_view in func.tags:
        return OpKind(MUTATION, name, written=("self",), arg_names=arg_names, inplace_view=True)
    if func in _NATIVE_OPS:
        return OpKind(NATIVE, name, reason=_NATIVE_OPS[func], arg_names=arg_names)
    if torch.Tag.nondeterministic_seeded in func.tags:
        return OpKind(NATIVE, name, reason="random op (no compiled form; runs natively)", arg_names=arg_names)
    for ret in schema.returns:
        t = ret.type
        if not (isinstance(t, torch.TensorType) or _is_tensor_container(t) or _is_optional_tensor(t)):
            return OpKind(NATIVE, name, reason=f"returns {t}, not tensors", arg_names=arg_names)

    written = REWRITE_WRITTEN.get(func) or tuple(a.name for a in schema.arguments if _is_write(a))
    if written:
        return OpKind(MUTATION, name, written=written, arg_names=arg_names)
    if any(r.alias_info is not None for r in schema.returns):
        return OpKind(VIEW, name, arg_names=arg_names)
    return OpKind(FUNCTIONAL, name, arg_names=arg_names)


def _is_tensor_container(t) -> bool:
    return isinstance(t, torch.ListType) and isinstance(t.getElementType(), (torch.TensorType, torch.OptionalType))


def _is_optional_tensor(t) -> bool:
    return isinstance(t, torch.OptionalType) and isinstance(t.getElementType(), torch.TensorType)
