"""Argument checks that PyTorch's CPU kernels make and its fake (meta) kernels do not.

A kernel's plan comes from fake tensors, so an argument the CPU kernel rejects but the meta
kernel accepts would be compiled and return a value where PyTorch raises. The compile step runs
these checks on the plan's fake arguments (once per key): a failed check is a build failure, and
the call runs natively, which raises PyTorch's own error. Found by the differential sweep's
error-input column.
"""

from __future__ import annotations

import torch


def _complex(bound):
    real, imag = bound["real"], bound["imag"]
    if real.dtype != imag.dtype:
        raise RuntimeError(f"complex: real and imag have dtypes {real.dtype} and {imag.dtype}")
    out = bound.get("out")
    expected = {torch.float32: torch.complex64, torch.float64: torch.complex128,
                torch.float16: torch.complex32}.get(real.dtype)
    if out is not None and expected is not None and out.dtype != expected:
        raise RuntimeError(f"Expected object of scalar type {expected} but got scalar type {out.dtype} for argument 'out'")


def _aminmax_out(bound):
    for name in ("min", "max"):
        out = bound.get(name)
        if out is not None and out.dtype != bound["self"].dtype:
            raise RuntimeError(f"aminmax: out tensor {name} has dtype {out.dtype}, not {bound['self'].dtype}")


def _narrow_copy(bound):
    rank = max(bound["self"].dim(), 1)
    if not -rank <= bound["dim"] < rank:
        raise IndexError(f"narrow_copy: dim {bound['dim']} out of range for rank {rank}")


def _index_add(bound):
    this, source, index, dim = bound["self"], bound["source"], bound["index"], bound["dim"]
    if index.dim() > 1:
        raise IndexError("index_add: index must be a vector")
    if this.dim() != source.dim() and not (this.dim() <= 1 and source.dim() <= 1):
        raise RuntimeError("index_add: source and self must have the same number of dims")
    d = dim % max(this.dim(), 1)
    for i in range(source.dim()):
        if i != d and source.shape[i] != this.shape[i]:
            raise RuntimeError("index_add: source tensor shape must match self tensor shape, excluding the specified dimension")
    if source.dim() and index.numel() != source.shape[d]:
        raise RuntimeError("index_add: number of indices must equal source.size(dim)")


def _select_scatter(bound):
    this, dim, index = bound["self"], bound["dim"], bound["index"]
    rank = max(this.dim(), 1)
    size = this.shape[dim % rank] if this.dim() else 1
    if not -size <= index < size:
        raise IndexError(f"select(): index {index} out of range for tensor of size {list(this.shape)} "
                         f"at dimension {dim % rank}")


# op base name (in-place and out= variants share it) -> check(bound arguments by name)
CHECKS = {
    "select_scatter": _select_scatter,
    "complex": _complex,
    "aminmax": _aminmax_out,
    "narrow_copy": _narrow_copy,
    "index_add": _index_add,
}


def _cpu_probe(func, args, kwargs, replace=None):
    """Run PyTorch's CPU kernel of `func` on one-element tensors of the call's dtypes and ranks,
    with the call's own scalars (`replace`: arguments by name given other values), and raise
    what it raises. For checks of dtypes that the CPU kernel makes and the meta kernel does not:
    - an in-place or out= pointwise op whose result dtype cannot be cast to the written tensor's
      (`int.mul_(2.5)`; the meta kernels of `mul_`, `addcmul_`, `addcdiv_`, `ldexp_`, `logit_`
      do not check it);
    - `sub`/`rsub` of a bool tensor, `argmax`/`argmin`/`topk` of bools, `cumsum`/`cumprod` into
      bool, `heaviside` of two dtypes (`_PROBED`)."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    written = {a.name for a in func._schema.arguments if a.alias_info is not None and a.alias_info.is_write}
    names = [a.name for a in func._schema.arguments]
    replace = replace or {}

    def small(value, name):
        if name in replace:
            return replace[name]
        if not isinstance(value, torch.Tensor):
            return value
        if name in written and name != "self":  # out=: resized to the result, as when empty
            return torch.empty(0, dtype=value.dtype)
        return torch.ones((1,) * value.dim(), dtype=value.dtype)

    tensors = [v for v in list(args) + list(kwargs.values()) if isinstance(v, torch.Tensor)]
    if any(t.is_quantized or t.dtype not in _PROBE_DTYPES for t in tensors):
        return
    with unset_fake_temporarily():
        small_args = [small(v, names[i] if i < len(names) else None) for i, v in enumerate(args)]
        small_kwargs = {k: small(v, k) for k, v in kwargs.items()}
        func(*small_args, **small_kwargs)


# op base name -> arguments the probe gives other values (topk's k fits one element)
_PROBED = {"sub": {}, "rsub": {}, "argmax": {}, "argmin": {}, "topk": {"k": 1}, "cumsum": {}, "cumprod": {},
           "heaviside": {}}


_PROBE_DTYPES = frozenset({torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                           torch.float16, torch.bfloat16, torch.float32, torch.float64,
                           torch.complex64, torch.complex128})


def check(func, kind, args, kwargs):
    """Raise what PyTorch's CPU kernel would raise for these (fake) arguments, where known."""
    if not isinstance(func, torch._ops.OpOverload) or kind is None:
        return
    base = func._schema.name.split("::")[-1]
    if base.endswith("_") and not base.startswith("__"):
        base = base[:-1]
    if base in _PROBED or (torch.Tag.pointwise in func.tags and any(
            a.alias_info is not None and a.alias_info.is_write for a in func._schema.arguments)):
        _cpu_probe(func, args, kwargs, _PROBED.get(base))
    fn = CHECKS.get(base)
    if fn is not None:
        bound = dict(zip(kind.arg_names, args))
        bound.update(kwargs)
        fn(bound)
