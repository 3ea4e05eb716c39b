"""This project's own decompositions: aten ops rewritten in aten ops that lower correctly.

`lowering.decomposition_attempts` puts `PROJECT_DECOMPOSITIONS` over torch-mlir's decomposition
table, so an entry here replaces the op's body in its one-op kernel. Each entry routes around one
upstream behaviour (a missing lowering, or a lowering whose NaN / inf / signed-zero semantics
differ from PyTorch's CPU kernels) and says which in its comment. `tools/numerics_probe.py` finds
such disagreements; `tests/test_numerics.py` holds each fix to native PyTorch.

A decomposition may call `upstream(op, ...)` to get the op as torch-mlir lowers it (for example
to keep the upstream kernel for the ordinary case and fix only the special values), and returns
`NotImplemented` where it does not apply (say, integer inputs): the op is then traced as it is.

Three things hold for every decomposition here:
- A Scalar argument of an op whose scalars may be runtime arguments (clamp, hardtanh,
  leaky_relu, threshold_backward, div, ...: the dispatcher's list) goes into the graph as it is:
  no Python test or arithmetic on its value, which the trace would fix for every later value.
- It builds NaN tests with `torch.isnan`, never `x != x` or `x == x`: torch-mlir folds
  `aten.eq.Tensor(x, x)` to true (see `_eq`).
- IREE's CPU runtime flushes denormals to zero (FTZ/DAZ) in every kernel, so no decomposition
  can depend on denormal values; the results differ from PyTorch's only where a denormal is read
  or made, as every other kernel does.
"""

from __future__ import annotations

import functools
import itertools
import math
import struct
import threading

import torch

aten = torch.ops.aten

PROJECT_DECOMPOSITIONS: dict = {}
# Ops whose kernel must come from the decomposition here or not at all: PyTorch's own
# decompositions of them (the lowering's later attempts) give other numbers.
SOLE_DECOMPOSITIONS: set = set()

_state = threading.local()


def _bypassed() -> set:
    s = getattr(_state, "bypassed", None)
    if s is None:
        s = _state.bypassed = set()
    return s


def register(*ops):
    """Make `fn` the project decomposition of each op in `ops`."""

    def deco(fn):
        for op in ops:
            PROJECT_DECOMPOSITIONS[op] = _bypassable(op, fn)
        return fn

    return deco


def _bypassable(op, fn):
    @functools.wraps(fn)
    def decomposition(*args, **kwargs):
        if op not in _bypassed():
            r = fn(*args, **kwargs)
            if r is not NotImplemented:
                return r
        # inside upstream(op, ...), or declined: what torch-mlir does with op
        previous = _torch_mlir_table().get(op)
        return previous(*args, **kwargs) if previous is not None else NotImplemented

    return decomposition


@functools.lru_cache(maxsize=None)
def _torch_mlir_table():
    from torch_mlir.extras.fx_decomp_util import get_decomposition_table

    return get_decomposition_table()


def upstream(op, *args, **kwargs):
    """`op(*args, **kwargs)` traced without this module's decomposition of `op` (torch-mlir's
    own decomposition of it, if any, still applies)."""
    bypassed = _bypassed()
    if op in bypassed:
        return op(*args, **kwargs)
    bypassed.add(op)
    try:
        return op(*args, **kwargs)
    finally:
        bypassed.discard(op)


# ---- helpers ----------------------------------------------------------------------------------
_REDUCED = (torch.float16, torch.bfloat16)


def _opmath(dtype):
    """The dtype PyTorch's CPU kernels compute a reduced-precision float op in."""
    return torch.float32 if dtype in _REDUCED else dtype


def _float_result(a, b=None):
    """The result dtype of a float elementwise op of a and b (integers promote to the default
    float dtype, as atan2 and true division do)."""
    dtype = a.dtype if b is None else torch.result_type(a, b)
    return dtype if dtype.is_floating_point else torch.get_default_dtype()


def _is_float(x) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point()


def _signbit(x):
    """The sign bit of a float tensor, -0.0 included (aten.signbit has no lowering). A NaN reads
    as positive.

    Comparisons here and everywhere in this module use float literals (`x < 0.0`): torch-mlir's
    canonicalizer folds aten.lt/gt/eq.Scalar of a constant float tensor and an *int* scalar
    to a wrong answer that changes from process to process (a scalar made a 0-d tensor in the
    graph is such a constant)."""
    return (x < 0.0) | (torch.reciprocal(x) < 0.0)


def _round_to(v: float, dtype) -> float:
    """A Python float rounded to dtype, computed in Python (a torch.tensor made while tracing
    would put a lift_fresh/detach_ into the graph)."""
    if dtype == torch.float64 or not math.isfinite(v):
        return v
    if dtype == torch.float32:
        try:
            return struct.unpack("<f", struct.pack("<f", v))[0]
        except OverflowError:
            return math.copysign(math.inf, v)
    if dtype == torch.float16:
        try:
            return struct.unpack("<e", struct.pack("<e", v))[0]
        except OverflowError:
            return math.copysign(math.inf, v)
    if dtype == torch.bfloat16:  # round the float32 bits to nearest even in the upper half
        bits = struct.unpack("<I", struct.pack("<f", _round_to(v, torch.float32)))[0]
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return struct.unpack("<f", struct.pack("<I", bits))[0]
    return v


def _tensor(x, dtype):
    """x as a tensor of dtype (a Python scalar becomes a 0-d tensor)."""
    if isinstance(x, torch.Tensor):
        return x.to(dtype)
    return torch.scalar_tensor(x, dtype=dtype)


# ---- ops this project decomposes because torch-mlir has no lowering for them ------------------
@register(aten.log10.default)
def _log10(x):
    # IREE 3.13 cannot link log10f on llvm-cpu.
    return torch.log(x) * 0.4342944819032518


@register(aten.erfc.default)
def _erfc(x):
    # torch-mlir has no erfc (PyTorch's decomposition leaves prims.erfc). 1 - erf(x) alone
    # loses every digit for x > 3 (erfc(4) came out 0, not 1.5e-8). For x >= 1 this evaluates
    # the continued fraction erfc(x) = exp(-x^2)/sqrt(pi) / (x + 1/2/(x + 1/(x + 3/2/(x + ...))))
    # in float64 (60 terms: 3e-9 at x = 1); below it 1 - erf(x), which loses at most a factor
    # 6.4 there. IREE cannot compile a float64 erf, so float64 inputs are left to the fallback.
    if not x.is_floating_point() and not x.is_complex():
        x = x.to(torch.get_default_dtype())  # integers: erfc of their float value
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return NotImplemented
    z = x.to(torch.float64)
    za = torch.where(z > 1.0, z, 1.0)  # the continued fraction for z >= 1 only
    tail = za
    for k in range(60, 0, -1):
        tail = za + (k / 2.0) / tail
    cf = torch.exp(-za * za) * (1.0 / math.sqrt(math.pi)) / tail
    small = 1.0 - torch.erf(x.to(torch.float32))
    return torch.where(z > 1.0, cf.to(torch.float32), small).to(x.dtype)


@register(aten.hypot.default)
def _hypot(a, b):
    # torch-mlir has no hypot (PyTorch's decomposition leaves prims.hypot). sqrt(a*a + b*b)
    # overflows for |a| > 1.8e19 and gives NaN for hypot(inf, nan) (C's hypot: inf).
    dtype = _float_result(a, b)
    comp = _opmath(dtype)
    a, b = torch.abs(_tensor(a, comp)), torch.abs(_tensor(b, comp))
    big = torch.where(a > b, a, b)
    small = torch.where(a > b, b, a)
    ratio = small / torch.where(big == 0.0, 1.0, big)
    r = big * torch.sqrt(1.0 + ratio * ratio)
    r = torch.where(torch.isnan(a) | torch.isnan(b), math.nan, r)
    r = torch.where(torch.isinf(a) | torch.isinf(b), math.inf, r)
    return r.to(dtype)


# ---- comparisons ------------------------------------------------------------------------------
@register(aten.eq.Tensor)
def _eq(a, b):
    # torch-mlir's canonicalizer folds aten.eq.Tensor(x, x) to true for every dtype, so
    # `x == x` (and isfinite, which PyTorch implements as `(x == x) & (x.abs() != inf)`) is True
    # for NaN. eq(x, x) is ~isnan(x) for floats.
    if a is b and a.is_floating_point():
        return torch.logical_not(torch.isnan(a))
    return NotImplemented


# ---- clamp, maximum, minimum: NaN propagates ---------------------------------------------------
@register(aten.clamp.default, aten.clamp.Tensor)
def _clamp(x, min=None, max=None):
    # torch-mlir lowers clamp with unordered compares (cmpf ult/ugt + select) and hardtanh,
    # clamp_min and clamp_max with ordered ones the other way round: clamp(nan, -1, 1) is -1.
    # PyTorch returns NaN for a NaN input, and NaN everywhere for a NaN bound. Keeping x where
    # it is NaN or inside the bound, and the bound otherwise, gives both; a bound is used as it
    # is (no test on its value here: it may be a runtime scalar).
    if not x.is_floating_point():
        return NotImplemented
    out = x
    if min is not None:
        out = torch.where(torch.isnan(out) | (out >= min), out, min)
    if max is not None:
        out = torch.where(torch.isnan(out) | (out <= max), out, max)
    return out


@register(aten.clamp_min.default, aten.clamp_min.Tensor)
def _clamp_min(x, min):
    return _clamp(x, min=min)


@register(aten.clamp_max.default, aten.clamp_max.Tensor)
def _clamp_max(x, max):
    return _clamp(x, max=max)


@register(aten.hardtanh.default)
def _hardtanh(x, min_val=-1, max_val=1):
    # torch-mlir lowers hardtanh as max/min with ordered compares: hardtanh(nan) is min_val.
    # PyTorch's hardtanh is clamp.
    return _clamp(x, min_val, max_val)


@register(aten.hardsigmoid.default)
def _hardsigmoid(x):
    # torch-mlir decomposes hardsigmoid into a NaN-dropping clamp inside its own pipeline:
    # hardsigmoid(nan) is 0. PyTorch: min(max(x + 3, 0), 6) / 6, NaN in, NaN out.
    if not x.is_floating_point():
        return NotImplemented
    return _clamp(x + 3.0, 0.0, 6.0) / 6.0


@register(aten.maximum.default)
def _maximum(a, b):
    # torch-mlir lowers maximum as select(a > b, a, b): maximum(nan, 0) is 0. PyTorch
    # propagates a NaN from either side (max.other lands here too).
    return _nan_propagating(a, b, torch.gt)


@register(aten.minimum.default)
def _minimum(a, b):
    # as maximum: select(a < b, a, b) drops a NaN in a.
    return _nan_propagating(a, b, torch.lt)


def _nan_propagating(a, b, better):
    if not (a.is_floating_point() or b.is_floating_point()):
        return NotImplemented
    take_a = better(a, b)
    if a.is_floating_point():
        take_a = take_a | torch.isnan(a)
    return torch.where(take_a, a, b)


# ---- atan2 ------------------------------------------------------------------------------------
@register(aten.atan2.default)
def _atan2(y, x):
    # IREE expands math.atan2 without C's special cases: atan2(0, 0) and atan2(inf, inf) are
    # NaN (C: 0 and pi/4), and the sign of a zero y is lost (atan2(-0., -1.) is pi, not -pi).
    # Here: atan(y / x), moved by +-pi (the sign of y) when x has its sign bit set, with the
    # cases where y / x is 0/0 or inf/inf taken from C's table.
    dtype = _float_result(y, x)
    comp = _opmath(dtype)
    y, x = _tensor(y, comp), _tensor(x, comp)
    both_zero = (y == 0.0) & (x == 0.0)
    q = torch.atan(torch.where(both_zero, y, y / x))
    y_neg = _signbit(y)
    r = torch.where(_signbit(x), q + torch.where(y_neg, -math.pi, math.pi), q)
    quarter = torch.where(x > 0.0, math.pi / 4, 3 * math.pi / 4)
    r = torch.where(torch.isinf(x) & torch.isinf(y), torch.where(y_neg, -quarter, quarter), r)
    return r.to(dtype)


# ---- floor division, fmod ----------------------------------------------------------------------
@register(aten.floor_divide.default, aten.floor_divide.Scalar)
def _floor_divide(a, b):
    # torch-mlir lowers float floor division as floor(a / b): floor_divide(inf, 2) is inf and
    # 1 // 0.1 is 10. PyTorch's is div_floor_floating (c10/util/generic_math.h), from fmod:
    # NaN for an infinite dividend, 9 for 1 // 0.1.
    if not _is_float(a) and not isinstance(b, float) and not _is_float(b):
        return _div_floor_integer(a, b)
    return _div_floor_floating(a, b)


@register(aten.div.Tensor_mode, aten.div.Scalar_mode)
def _div_mode(a, b, rounding_mode=None):
    # (rounding_mode="floor" of floats: as floor_divide)
    if rounding_mode != "floor":
        return NotImplemented
    if not _is_float(a) and not isinstance(b, float) and not _is_float(b):
        return _div_floor_integer(a, b)
    return _div_floor_floating(a, b)


def _div_floor_integer(a, b):
    """c10::div_floor_integer: truncating division, one less where the remainder is non-zero and
    its sign differs from b's. torch-mlir lowers integer floor division through float64
    (2**53 + 1 // 1 was 2**53, int16 -32768 // -1 was 32767)."""
    if not isinstance(a, torch.Tensor) or a.dtype == torch.bool or (isinstance(b, torch.Tensor) and b.dtype == torch.bool):
        return NotImplemented
    b = b if isinstance(b, torch.Tensor) else torch.scalar_tensor(b, dtype=torch.int64)
    dtype = torch.result_type(a, b)
    a, b = a.to(dtype), b.to(dtype)
    q = torch.div(a, b, rounding_mode="trunc")
    r = a - q * b
    return torch.where((r != 0) & ((r < 0) != (b < 0)), q - 1, q)


def _div_floor_floating(a, b):
    """c10::div_floor_floating, elementwise. A scalar b becomes a 0-d tensor: nothing here tests
    its value in Python (div's scalar may be a runtime argument)."""
    dtype = _float_result(a, b)
    comp = _opmath(dtype)
    a = a.to(comp)
    b = b.to(comp) if isinstance(b, torch.Tensor) else torch.scalar_tensor(b, dtype=comp)
    quotient = a / b
    mod = _fmod_float(a, b)
    div = (a - mod) / b
    div = torch.where((mod != 0.0) & ((b < 0.0) != (mod < 0.0)), div - 1.0, div)
    floordiv = torch.floor(div)
    floordiv = torch.where(div - floordiv > 0.5, floordiv + 1.0, floordiv)
    signed_zero = torch.where(_signbit(quotient), -0.0, 0.0)
    floordiv = torch.where(div != 0.0, floordiv, signed_zero)
    return torch.where(b == 0.0, quotient, floordiv).to(dtype)


@register(aten.fmod.Tensor, aten.fmod.Scalar)
def _fmod(a, b):
    # torch-mlir lowers float fmod as a - b * trunc(a / b): wrong once a / b is not exact
    # (fmod(0, inf) is NaN, not 0; fmod(1e10, 3) is off) and it drops the sign of a zero
    # result. C's fmod is exact: |fmod(a, b)| = remainder(|a|, |b|), which torch-mlir lowers
    # to arith.remf, with the sign of a.
    if not _is_float(a) and not isinstance(b, float) and not _is_float(b):
        return NotImplemented
    dtype = _float_result(a, b)
    comp = _opmath(dtype)
    # (fmod keeps its scalar in the key, so a Python b may stay a number: remainder by a
    # number links for float64, remainder by a float64 tensor does not)
    return _fmod_float(a.to(comp), b.to(comp) if isinstance(b, torch.Tensor) else float(b)).to(dtype)


def _fmod_float(a, b):
    if isinstance(b, torch.Tensor):
        r = aten.remainder.Tensor(torch.abs(a), torch.abs(b))
    else:
        r = aten.remainder.Scalar(torch.abs(a), abs(b))
    return torch.where(_signbit(a), -r, r)


# ---- logaddexp ----------------------------------------------------------------------------------
def _make_logaddexp(op):
    # torch-mlir lowers logaddexp as max(a, b) + log1p(exp(-|a - b|)) with an ordered max and
    # an equal-infinities fix: logaddexp(nan, inf) is inf. PyTorch: NaN. (And for float16 it
    # computes in float16: logaddexp2(0, -7.25) off by 4%; PyTorch computes in float.)
    def decomposition(a, b):
        dtype = torch.result_type(a, b)
        if not dtype.is_floating_point:
            return NotImplemented
        comp = _opmath(dtype)
        r = upstream(op, a.to(comp), b.to(comp))
        return torch.where(torch.isnan(a) | torch.isnan(b), math.nan, r).to(dtype)

    return decomposition


for _op in (aten.logaddexp.default, aten.logaddexp2.default):
    PROJECT_DECOMPOSITIONS[_op] = _bypassable(_op, _make_logaddexp(_op))


# ---- integer negation -----------------------------------------------------------------------
@register(aten.neg.default)
def _neg(x):
    # torch-mlir lowers integer neg through f32 (sitofp, negf, fptosi): neg(16777217) is
    # -16777216 and neg(2**31 - 1) is -2**31. Multiplying by -1 stays in integers (and wraps
    # at the minimum, as PyTorch does).
    if x.dtype in (torch.int32, torch.int64):
        return torch.mul(x, -1)
    if x.dtype in (torch.int8, torch.int16):  # through f32, neg(-32768) came out 32767
        return torch.bitwise_not(x) + 1  # two's complement, wrapping at the minimum
    return NotImplemented


# ---- argmax / argmin and max.dim / min.dim: the index of a NaN --------------------------------
@register(aten.argmax.default)
def _argmax(x, dim=None, keepdim=False):
    # torch-mlir's reduction keeps the value with maximumf (NaN wins) but moves the index only
    # on `x > best`, never true once best is NaN: argmax([1, nan, 3]) is 0. PyTorch returns
    # the index of the first NaN.
    return _arg_with_nan(aten.argmax.default, x, dim, keepdim)


@register(aten.argmin.default)
def _argmin(x, dim=None, keepdim=False):
    return _arg_with_nan(aten.argmin.default, x, dim, keepdim)


def _arg_with_nan(op, x, dim, keepdim):
    if not x.is_floating_point():
        return NotImplemented
    index = upstream(op, x, dim, keepdim)
    return _nan_index(x, dim, keepdim, index)


def _nan_index(x, dim, keepdim, index):
    """`index` where the reduced slice has no NaN, else the index of its first NaN."""
    nan = torch.isnan(x)
    first_nan = aten.argmax.default(nan.to(torch.int32), dim, keepdim)
    any_nan = torch.any(nan) if dim is None else torch.any(nan, dim, keepdim)
    if dim is None and keepdim:
        any_nan = any_nan.reshape(index.shape)
    return torch.where(any_nan, first_nan, index)


def _extreme_dim(op):
    # as argmax: the values are right (maximumf / minimumf), the index of a NaN is not.
    def decomposition(x, dim, keepdim=False):
        if not x.is_floating_point():
            return NotImplemented
        values, index = upstream(op, x, dim, keepdim)
        return values, _nan_index(x, dim, keepdim, index)

    return decomposition


for _op in (aten.max.dim, aten.min.dim):
    PROJECT_DECOMPOSITIONS[_op] = _bypassable(_op, _extreme_dim(_op))


# ---- pow: C's special cases, and the sign of a negative base ----------------------------------
@register(aten.pow.Tensor_Tensor)
def _pow_tensor_tensor(x, y):
    # IREE expands math.powf as exp(y * log(x)): pow(-2, 3) is 8, pow(nan, 0) and
    # pow(1, nan) are NaN, pow(inf, 0) is NaN (C: -8, 1, 1, 1), and it is accurate to only
    # 7e-6 in float32. _c_pow has C's table, and computes float32 in float64.
    dtype = torch.result_type(x, y)
    if not dtype.is_floating_point:
        return NotImplemented
    return _c_pow(x, y.to(_pow_comp(dtype)), dtype)


@register(aten.pow.Scalar)
def _pow_scalar(base, y):
    # PyTorch: 1 ** y is 1, else pow(tensor(base), y) (see _pow_tensor_tensor). The base is a
    # Python number, so its cases are settled here rather than on a constant in the graph.
    dtype = torch.result_type(base, y)
    if not dtype.is_floating_point or isinstance(base, complex):
        return NotImplemented
    if base == 1:
        return torch.ones_like(y, dtype=dtype)
    base = _round_to(float(base), dtype)  # the base as the kernel sees it
    comp = _pow_comp(dtype)
    y = y.to(comp)
    if math.isnan(base):  # NaN, but 1 for y = 0 (and no exp of a NaN constant: see _c_pow)
        return torch.where(y == 0.0, 1.0, math.nan).to(dtype)
    ax = abs(base)
    log_ax = -math.inf if ax == 0 else math.log(ax)
    r = torch.exp(y * log_ax)
    if math.copysign(1.0, base) < 0:  # negative or -0.0: the sign of an odd integer power
        half = y * 0.5
        y_odd = (y == torch.floor(y)) & (torch.floor(half) != half) & (torch.abs(y) < math.inf)
        r = torch.where(y_odd, -r, r)
        if math.isfinite(base) and base < 0:
            r = torch.where(y != torch.floor(y), math.nan, r)
    if ax == 1:
        r = torch.where(torch.isinf(y), 1.0, r)
    r = torch.where(y == 0.0, 1.0, r)
    return r.to(dtype)


@register(aten.pow.Tensor_Scalar)
def _pow_tensor_scalar(x, e):
    # PyTorch (pow_Tensor_Scalar_out, pow_tensor_scalar_kernel): x ** 0 is 1 and x ** 1 is x;
    # for float, double and bfloat16, 0.5 / -0.5 / -1 are sqrt / rsqrt / reciprocal and 2 / 3 / -2
    # are x*x, x*x*x, 1/(x*x); everything else is C's pow with the exponent rounded to the
    # tensor's dtype. torch-mlir's math.powf / math.fpowi get the special values wrong
    # (pow(0, -1) is -inf, pow(-inf, 0.5) is NaN) and are inaccurate (see _pow_tensor_tensor).
    dtype = torch.result_type(x, e)
    if not dtype.is_floating_point or isinstance(e, complex):
        return NotImplemented
    if e == 0:
        return torch.ones_like(x, dtype=dtype)
    if e == 1:
        return x.to(dtype, copy=True)
    if dtype in (torch.float32, torch.float64, torch.bfloat16):
        comp = _opmath(dtype)
        xc = x.to(comp)
        special = {0.5: torch.sqrt, -0.5: torch.rsqrt, -1: torch.reciprocal,
                   2: lambda v: v * v, 3: lambda v: v * v * v, -2: lambda v: 1.0 / (v * v)}
        for value, fn in special.items():
            if e == value:
                return fn(xc).to(dtype)
    if dtype in (torch.float16, torch.float32):  # the exponent as the kernel sees it
        e = _round_to(float(e), dtype)
    return _c_pow(x, float(e), dtype)


def _pow_comp(dtype):
    return torch.float64 if dtype == torch.float32 else _opmath(dtype)


def _c_pow(x, y, dtype):
    """C's pow(x, y) (what std::pow and Sleef give PyTorch), as exp(y * log|x|) plus its table
    of special cases. y is a tensor, or a Python float whose cases are settled here."""
    comp = _pow_comp(dtype)
    x = x.to(comp)
    if not isinstance(y, torch.Tensor) and math.isnan(y):
        # 1 where x is 1, else NaN. (Not via exp(NaN * log|x|): IREE compiles exp of a product
        # with a NaN constant to 0 or 1.)
        return torch.where(x == 1.0, 1.0, math.nan).to(dtype)
    ax = torch.abs(x)
    r = torch.exp(y * torch.log(ax))  # right for |x| = 0 or inf, and for y = +-inf unless |x| = 1
    if isinstance(y, torch.Tensor):
        y_int = y == torch.floor(y)
        half = y * 0.5
        y_odd = y_int & (torch.floor(half) != half) & (torch.abs(y) < math.inf)
        r = torch.where(_signbit(x) & y_odd, -r, r)
        r = torch.where((x < 0.0) & (x > -math.inf) & ~y_int, math.nan, r)
        r = torch.where((ax == 1.0) & torch.isinf(y), 1.0, r)
        r = torch.where((x == 1.0) | (y == 0.0), 1.0, r)
    else:
        if math.isfinite(y) and y == math.floor(y) and math.fmod(y, 2.0) != 0:
            r = torch.where(_signbit(x), -r, r)
        if math.isfinite(y) and y != math.floor(y):
            r = torch.where((x < 0.0) & (x > -math.inf), math.nan, r)
        if math.isinf(y):
            r = torch.where(ax == 1.0, 1.0, r)
    return r.to(dtype)


# ---- activations: NaN and the sign of zero ----------------------------------------------------
@register(aten.relu.default)
def _relu(x):
    # torch-mlir: select(x ugt 0, x, 0), so relu(-0.0) is +0.0; PyTorch keeps x unless x < 0.
    if not x.is_floating_point():
        return NotImplemented
    return torch.where(x < 0.0, 0.0, x)


@register(aten.leaky_relu.default)
def _leaky_relu(x, negative_slope=0.01):
    # torch-mlir: max(x, 0) + slope * min(x, 0), so leaky_relu(-1, 0.) is +0.0 (PyTorch: -0.0)
    # and an infinite or NaN slope makes positive x NaN. PyTorch: x > 0 ? x : x * slope.
    if not x.is_floating_point():
        return NotImplemented
    return torch.where(x > 0.0, x, x * negative_slope)


@register(aten.elu.default)
def _elu(x, alpha=1, scale=1, input_scale=1):
    # torch-mlir: max(x, 0) + alpha * (exp(min(x, 0)) - 1): elu(-0.0) is +0.0 and exp(x) - 1
    # cancels (elu(-1e-37) is 0). PyTorch: x <= 0 ? expm1(x * input_scale) * alpha * scale
    # : x * scale. (selu and celu are elu.)
    if not x.is_floating_point():
        return NotImplemented
    negcoef = float(alpha) * float(scale)
    return torch.where(x <= 0.0, torch.expm1(x * float(input_scale)) * negcoef, x * float(scale))


@register(aten.trunc.default)
def _trunc(x):
    # torch-mlir: sign(x) * floor(|x|), so trunc(-0.0) (and frac(-0.0), which PyTorch makes
    # x - trunc(x)) get the wrong sign. ceil for negatives and floor otherwise keep it.
    if not x.is_floating_point():
        return NotImplemented
    return torch.where(x < 0.0, torch.ceil(x), torch.floor(x))


# ---- odd functions: f(-0.0) is -0.0, f(x) is x for tiny x ----------------------------------------
def _odd(op, c):
    """f(x) = x (1 + c x^2 + ...): return x itself where that is exact to rounding (which also
    keeps the sign of a zero); upstream's expansion elsewhere."""

    def decomposition(x):
        if not x.is_floating_point():
            return NotImplemented
        eps = torch.finfo(torch.float32 if x.dtype in _REDUCED else x.dtype).eps
        tiny = math.sqrt(eps / 4 / abs(c)) if c else 0.0
        r = upstream(op, x)
        if tiny:
            return torch.where(torch.abs(x) < tiny, x, r)
        return torch.where(x == 0.0, x, r)

    return decomposition


# sinh, asinh: c = 1/6, -1/6; atanh: 1/3; erf: 2/sqrt(pi) x, so only the zero. IREE's
# expansions return +0.0 for -0.0, and sinh and atanh cancel for tiny x (sinh(-1e-37) is 0).
for _op, _c in ((aten.sinh.default, 1 / 6), (aten.atanh.default, 1 / 3), (aten.erf.default, 0)):
    PROJECT_DECOMPOSITIONS[_op] = _bypassable(_op, _odd(_op, _c))


# ---- sin, cos, tan: range reduction ------------------------------------------------------------
# pi/2 in four pieces, the first three of 20 significant bits: k * piece is exact in float64
# for |k| < 2**33, so x - k*pi/2 is accurate for |x| < 1.3e10.
_HALF_PI_PIECES = (1.5707969665527344, -6.39757672615815e-07, -1.651400370616951e-13, 8.333742918520879e-20)


def _quadrant(x):
    """x = k pi/2 + r with |r| <= pi/4: (r, k mod 4), both float64 tensors."""
    xd = x.to(torch.float64)
    k = torch.round(xd * (2.0 / math.pi))
    r = xd
    for piece in _HALF_PI_PIECES:
        r = r - k * piece
    return r, k - 4.0 * torch.floor(k * 0.25)


# Taylor coefficients of sin(r)/r and cos(r) in r^2, to r^16: below 3e-18 for |r| <= pi/4.
_SIN_COEFFS = tuple((-1) ** n / math.factorial(2 * n + 1) for n in range(9))
_COS_COEFFS = tuple((-1) ** n / math.factorial(2 * n) for n in range(9))


def _horner(z, coeffs):
    acc = torch.full_like(z, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        acc = acc * z + c
    return acc


def _trig(kind):
    # IREE's float32 sin/cos/tan reduce the argument in float32, so the error grows with |x|
    # (sin: 3e-4 at |x| = 1e4, |sin x| > 1 at 1e8, inf at 1e20; tan NaN for huge x), are
    # accurate only absolutely near 0 (sin(-0.0013) off by 5e-5 relative) and give +0.0 for
    # sin(-0.0). Here: the reduction x = k pi/2 + r in float64, sin r and cos r as float64
    # polynomials on |r| <= pi/4, rounded once: within 0.5 ulp of the true value for
    # |x| < 1.3e10. Beyond that (float32 spacing > 1000 there) the reduction is not exact and
    # the result, kept in [-1, 1], is not PyTorch's. IREE cannot compile float64 sin/cos/tan: those
    # are left to the fallback.
    def decomposition(x):
        if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            return NotImplemented
        r, q = _quadrant(x)
        r2 = r * r
        s, c = r * _horner(r2, _SIN_COEFFS), _horner(r2, _COS_COEFFS)
        if kind == "tan":
            out = torch.where((q == 1.0) | (q == 3.0), -c / s, s / c)
        else:
            if kind == "cos":  # cos(x) = sin(x + pi/2): one quadrant on
                s, c = c, -s
            out = torch.where(q == 0.0, s, torch.where(q == 1.0, c, torch.where(q == 2.0, -s, -c)))
            out = torch.where(out > 1.0, 1.0, torch.where(out < -1.0, -1.0, out))  # |x| >= 1.3e10
        if kind != "cos":
            out = torch.where(x == 0.0, x.to(torch.float64), out)  # the sign of a zero
        return out.to(x.dtype)

    return decomposition


for _kind in ("sin", "cos", "tan"):
    _op = getattr(aten, _kind).default
    PROJECT_DECOMPOSITIONS[_op] = _bypassable(_op, _trig(_kind))


@register(aten.asinh.default)
def _asinh(x):
    # math.asinh expands to log(x + sqrt(x*x + 1)): inf for |x| > 1.8e19 (asinh(3e38) is 89.4),
    # NaN for -inf, cancellation for negative x, +0.0 for -0.0. Here asinh(|x|) with the sign
    # of x, and log(2|x|) where x*x + 1 is x*x.
    if not x.is_floating_point():
        return NotImplemented
    comp = _opmath(x.dtype)
    a = torch.abs(x.to(comp))
    big = 2.0 ** 12 if comp == torch.float32 else 2.0 ** 28
    r = torch.where(a > big, torch.log(a) + math.log(2.0), upstream(aten.asinh.default, a))
    r = torch.where(a < math.sqrt(torch.finfo(comp).eps), a, r)
    return torch.where(_signbit(x), -r, r).to(x.dtype)


@register(aten.acosh.default)
def _acosh(x):
    # math.acosh expands to log(x + sqrt(x*x - 1)): inf for x > 1.8e19 (acosh(3e38) is 89.4),
    # and inf instead of NaN for x < -1.8e19.
    if not x.is_floating_point():
        return NotImplemented
    comp = _opmath(x.dtype)
    xc = x.to(comp)
    big = 2.0 ** 12 if comp == torch.float32 else 2.0 ** 28
    r = torch.where(xc > big, torch.log(xc) + math.log(2.0), upstream(aten.acosh.default, xc))
    return torch.where(xc < 1.0, math.nan, r).to(x.dtype)


# ---- copysign ---------------------------------------------------------------------------------
@register(aten.copysign.Tensor)
def _copysign(a, b):
    # torch-mlir lowers copysign of integers through float without the sign of zero:
    # copysign(0, -1) is 0.0 (PyTorch: -0.0). An integer b has no -0 or NaN, so its sign is
    # b < 0. (For a float b the sign of a NaN cannot be read without a bitcast: left to the
    # fallback, as it is now.)
    if b.is_floating_point():
        return NotImplemented
    dtype = _float_result(a, b)
    m = torch.abs(a.to(dtype))
    return torch.where(b < 0, -m, m)


@register(aten.copysign.Scalar)
def _copysign_scalar(a, b):
    # torch-mlir has no copysign.Scalar: the sign of a Python scalar is known here.
    dtype = _float_result(a, b)
    m = torch.abs(a.to(dtype))
    return -m if math.copysign(1.0, float(b)) < 0 else m


# ---- threshold_backward: the result dtype ----------------------------------------------------
@register(aten.threshold_backward.default)
def _threshold_backward(grad, self, threshold):
    # PyTorch's decomposition, where(self <= threshold, 0, grad), has grad's dtype; the CPU
    # kernel is a TensorIterator over (self, grad) that promotes them: an integer grad with a
    # float self gives a float result (and it compares in that dtype, with the threshold
    # converted to it: rounded, or truncated to an integer).
    dtype = torch.result_type(grad, self)
    if dtype == torch.bool:
        return NotImplemented
    if dtype.is_floating_point:
        limit = torch.scalar_tensor(threshold, dtype=dtype)
    else:
        limit = torch.trunc(torch.scalar_tensor(threshold, dtype=torch.float64)).to(dtype)
    zero = torch.scalar_tensor(0, dtype=dtype)
    return torch.where(self.to(dtype) <= limit, zero, grad.to(dtype))


def _fix_threshold_backward_meta():
    """The compiler plans a kernel's outputs by running the op on fake tensors, and for
    threshold_backward FakeTensor runs that same decomposition (torch/_decomp) rather than the
    C++ meta function: an int64 grad with a float32 self is planned as int64 where the CPU
    kernel returns float32. This gives threshold_backward a Python meta kernel with the CPU
    kernel's promotion, and lists it in torch._decomp.meta_table so that FakeTensor uses it.

    It changes PyTorch's meta/fake result for this op process-wide (to what eager CPU computes),
    so it is done once, here, and only for this op."""
    op = aten.threshold_backward.default
    from torch._decomp import meta_table

    if op in meta_table:
        return

    def meta(grad, self, threshold):
        dtype = torch.result_type(grad, self)
        return torch.where(self.to(dtype) <= threshold, torch.scalar_tensor(0, dtype=dtype, device=grad.device),
                           grad.to(dtype))

    global _META_LIB
    _META_LIB = torch.library.Library("aten", "IMPL")
    _META_LIB.impl("threshold_backward", meta, "Meta")
    meta_table[op] = meta


_META_LIB = None
_fix_threshold_backward_meta()


# ---- nearest upsampling: PyTorch's index arithmetic ---------------------------------------------
def _nearest_source_index(isize, osize, scale, exact, shortcuts):
    """Input index of each output index along one dim, as PyTorch's CPU kernel computes it
    (ATen/native/UpSample.h): floor(i * s) (nearest) or floor(float((i + 0.5) * s)) (exact),
    with s = float(1 / scale) when a scale is given, float(isize) / osize otherwise, clamped to
    the last input index. With `shortcuts` (nearest_idx: the 2d kernel only, as measured
    against 1d/3d and both memory formats), an output 1x or 2x the input copies / halves the
    index whatever the scale."""
    import numpy as np

    if shortcuts and osize == isize:
        return torch.arange(osize, dtype=torch.int64)
    if shortcuts and osize == 2 * isize:
        return torch.div(torch.arange(osize, dtype=torch.int64), 2, rounding_mode="floor")
    if scale is not None and scale > 0:
        s = float(np.float32(1.0 / scale))
    else:
        s = float(np.float32(isize) / np.float32(osize))
    if exact:  # (dst_index + 0.5) * scale in double, then floorf of it as a float
        src = ((torch.arange(osize, dtype=torch.float64) + 0.5) * s).to(torch.float32)
    else:
        src = torch.arange(osize, dtype=torch.float32) * s
    index = torch.floor(src).to(torch.int64)
    return torch.clamp(index, max=isize - 1)


def _upsample_nearest(x, output_size, scales, exact):
    # PyTorch's decomposition (torch._decomp, which torch-mlir uses) has no special cases, where
    # the 2d CPU kernel copies / halves the index when the output is 1x / 2x the input: with
    # scale_factor 2.1 on 5 columns (10 outputs) the kernel reads column i // 2, the
    # decomposition floor(i / 2.1). (It also computes exact's (i + 0.5) * s in float, not double.)
    spatial = len(output_size)
    index = []
    for d in range(spatial):
        i = _nearest_source_index(x.shape[-spatial + d], output_size[d], scales[d], exact,
                                  shortcuts=not exact and spatial == 2)
        index.append(i.reshape((-1,) + (1,) * (spatial - 1 - d)))
    return aten.index.Tensor(x, [None] * (x.dim() - spatial) + index)


def _register_upsample(op, spatial, exact):
    def decomposition(x, output_size, *scales):
        scales = list(scales) + [None] * (spatial - len(scales))
        return _upsample_nearest(x, list(output_size), scales, exact)

    PROJECT_DECOMPOSITIONS[op] = _bypassable(op, decomposition)


for _spatial in (1, 2, 3):
    _register_upsample(getattr(aten, f"upsample_nearest{_spatial}d").default, _spatial, False)
    _register_upsample(getattr(aten, f"_upsample_nearest_exact{_spatial}d").default, _spatial, True)


# ---- max pooling: the index of a NaN ----------------------------------------------------------
def _per_dim(v, spatial):
    """A pooling argument (an int or a list of 1 or `spatial` ints; [] for a default) per dim."""
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return v * spatial if len(v) == 1 else v


def _pool_geometry(plane, kernel_size, stride, padding, dilation, ceil_mode):
    """Per spatial dim: (input size, output size, padded extent the windows read, padding)."""
    spatial = len(plane)
    k = _per_dim(kernel_size, spatial)
    st = _per_dim(stride, spatial) or k
    p = _per_dim(padding, spatial)
    d = _per_dim(dilation, spatial)
    out = []
    for n, kk, ss, pp, dd in zip(plane, k, st, p, d):
        span = n + 2 * pp - dd * (kk - 1) - 1
        o = (-(-span // ss) if ceil_mode else span // ss) + 1
        if ceil_mode and (o - 1) * ss >= n + pp:
            o -= 1
        out.append((n, o, (o - 1) * ss + dd * (kk - 1) + 1, pp))
    return out


def _window_extent(x, geometry, fill):
    """x cropped to what the windows read and padded with `fill` (a slice, then a pad: torch-mlir
    miscompiles constant_pad_nd with a negative pad)."""
    spatial = len(geometry)
    pads = []
    for d, (n, _, e, p) in enumerate(geometry):
        keep = min(n, e - p)
        if keep < n:
            x = aten.slice.Tensor(x, x.dim() - spatial + d, 0, keep)
    for n, _, e, p in reversed(geometry):
        pads += [p, max(e - p - n, 0)]
    return aten.constant_pad_nd(x, pads, fill) if any(pads) else x


def _unpadded_index(index, geometry):
    """Flat indices into the padded window extent, as flat indices into the unpadded input."""
    result = torch.zeros_like(index)
    rest = index
    stride = 1  # of the dim in the unpadded input
    for n, _, e, p in reversed(geometry):  # the last spatial dim varies fastest
        coord = torch.remainder(rest, e) - p
        rest = torch.div(rest, e, rounding_mode="floor")
        result = result + coord * stride
        stride *= n
    return result


# A window of at most this many elements is pooled by _max_pool_by_offsets: one strided slice per
# window offset, in passes IREE fuses (ResNet18's 3x3 pool: 2.3-2.6 ms against 3.6-3.7 ms for
# three pools and a gather of indices). Larger windows (a global pool) keep the pools.
_MAX_UNROLLED_WINDOW = 64


def _max_pool_by_offsets(x, geometry, kernel, stride, dilation):
    """Max pooling with indices as PyTorch's CPU kernel computes them. It scans each window in
    order, starting from -inf and the index of the window's first element inside the input, and
    an element replaces the maximum when `val > max || isnan(val)`. So the maximum is the first
    of equal values (its zero's sign too), a NaN wins with the last NaN's index, and a window of
    -inf keeps its first element. Padding reads -inf and is never taken.

    Three chains of elementwise ops over one strided slice per window offset, each link used once
    so that IREE fuses a chain into one pass: the maximum; then the first offset equal to it; and
    the last NaN."""
    spatial = len(geometry)
    ext = _window_extent(x, geometry, -math.inf)
    plane_strides = [math.prod(n for n, *_ in geometry[d + 1:]) for d in range(spatial)]

    def along(d, v):  # a per-output-position vector along spatial dim d, shaped to broadcast
        return v.reshape([-1] + [1] * (spatial - 1 - d))

    base = first = 0  # flat input index of a window's position 0, and of its first element inside
    for d, ((n, o, _, p), s, dil, w) in enumerate(zip(geometry, stride, dilation, plane_strides)):
        start = torch.arange(o, dtype=torch.int64) * s - p
        base = base + along(d, start * w)
        inside = start + torch.div(torch.clamp(-start, min=0) + dil - 1, dil, rounding_mode="floor") * dil
        first = first + along(d, torch.clamp(inside, 0, n - 1) * w)

    def windows():  # (the window offset's slice, its flat input index), in scan order
        for offsets in itertools.product(*(range(k) for k in kernel)):
            window = ext
            for d, ((_, o, _, _), k, s, dil) in enumerate(zip(geometry, offsets, stride, dilation)):
                window = aten.slice.Tensor(window, x.dim() - spatial + d, k * dil, k * dil + (o - 1) * s + 1, s)
            yield window, base + sum(k * dil * w for k, dil, w in zip(offsets, dilation, plane_strides))

    scan = list(windows())
    values = torch.full_like(scan[0][0], -math.inf)
    for window, _ in scan:
        values = torch.where((window > values) | torch.isnan(window), window, values)
    equal = last_nan = torch.zeros(values.shape, dtype=torch.int64) + first
    for window, at in reversed(scan):
        equal = torch.where(window == values, at, equal)
    for window, at in scan:
        last_nan = torch.where(torch.isnan(window), at, last_nan)
    index = torch.where(torch.isnan(values), last_nan, torch.where(values == -math.inf, first, equal))
    return values, index


def _register_max_pool(op, spatial):
    # torch-mlir pools the values with a max that keeps NaN, then takes as index the first
    # position in the window equal to the pooled value: never one when that is NaN, so a window
    # with a NaN gets index -1 (and max_pool backward scatters to it). PyTorch's kernel updates
    # on `val > max || isnan(val)`: the index of the last NaN in the window. Here a second pool
    # over the flat indices of the NaNs (-1 elsewhere) gives that index.
    def decomposition(x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
        if x.dim() == spatial + 1:  # unbatched: as a batch of one (the 3d index came out wrong)
            values, index = decomposition(x.unsqueeze(0), kernel_size, stride, padding, dilation, ceil_mode)
            return values.squeeze(0), index.squeeze(0)
        geometry = _pool_geometry(x.shape[-spatial:], kernel_size, stride, padding, dilation, ceil_mode)
        kernel = _per_dim(kernel_size, spatial)
        if x.is_floating_point() and math.prod(kernel) <= _MAX_UNROLLED_WINDOW:
            return _max_pool_by_offsets(x, geometry, kernel, _per_dim(stride, spatial) or kernel,
                                        _per_dim(dilation, spatial))
        args = (kernel_size, stride, padding, dilation, ceil_mode)
        pads = None
        if any(e != n + 2 * p for n, o, e, p in geometry):
            # IREE rejects some poolings whose windows read less than the padded input (linalg's
            # shape inference, e.g. one output over 3 columns with a 2-wide window): pool over
            # the extent the windows read, cropped and padded here, instead
            pads = geometry
            args = (kernel_size, stride, 0, dilation, False)
            values, index = upstream(op, _window_extent(x, geometry, -math.inf), *args)
            index = _unpadded_index(index, geometry)
        else:
            values, index = upstream(op, x, *args)
        if not x.is_floating_point():
            return values, index
        plane = x.shape[-spatial:]
        count = math.prod(plane)
        pos_dtype = torch.float32 if count <= 2 ** 24 else torch.float64
        flat = torch.arange(count, dtype=pos_dtype).reshape(plane)
        # isnan * (flat + 1) - 1, not where(isnan, flat, -1): IREE miscompiles that select of a
        # broadcast index plane fused into the pool for a float16 x (the first NaN of channel c
        # came out as 2c).
        nan_pos = torch.isnan(x).to(pos_dtype) * (flat + 1.0) - 1.0
        # A window whose elements are all -inf: PyTorch's index is its first element in the input,
        # torch-mlir's the first position equal to -inf, padding included (a negative index,
        # which max_pool backward then wrote through). The largest -flat over the window's
        # elements in the input (padding -inf) is minus that first element.
        neg_flat = torch.zeros_like(x, dtype=pos_dtype) - flat
        if pads is not None:
            nan_pos = _window_extent(nan_pos, geometry, -1.0)
            neg_flat = _window_extent(neg_flat, geometry, -math.inf)
        last_nan = upstream(op, nan_pos, *args)[0]
        first = torch.clamp(-upstream(op, neg_flat, *args)[0], 0.0, count - 1.0)  # no element: a window in padding
        index = torch.where(values == -math.inf, first.to(index.dtype), index)
        return values, torch.where(torch.isnan(values), last_nan.to(index.dtype), index)

    PROJECT_DECOMPOSITIONS[op] = _bypassable(op, decomposition)


_register_max_pool(aten.max_pool2d_with_indices.default, 2)
_register_max_pool(aten.max_pool3d_with_indices.default, 3)
# PyTorch's decomposition gives a window's first NaN (argmax of isnan), its kernel the last.
SOLE_DECOMPOSITIONS.update((aten.max_pool2d_with_indices.default, aten.max_pool3d_with_indices.default))


# ---- sort and topk: where NaN goes --------------------------------------------------------------
def _nan_largest_key(x):
    """A key that orders like x with NaN above +inf (as PyTorch sorts): float64, with +inf moved
    to the largest finite double and NaN to +inf. (For float64 x, a value equal to that largest
    double ties with +inf.)"""
    key = x.to(torch.float64)
    key = torch.where(key == math.inf, torch.finfo(torch.float64).max, key)
    return torch.where(torch.isnan(x), math.inf, key)


@register(aten.sort.default)
def _sort(x, dim=-1, descending=False):
    # torch-mlir lowers sort to tm_tensor.sort with the comparator x <= y (>= descending),
    # false both ways for NaN, so NaNs land anywhere (first, ascending). PyTorch sorts NaN as
    # the largest value: last ascending, first descending. Sorting a key where that holds and
    # gathering the values keeps upstream's (stable) sort.
    # (aten.sort.stable has no lowering and falls back: left so.)
    if not x.is_floating_point():
        return NotImplemented
    _, index = upstream(aten.sort.default, _nan_largest_key(x), dim, descending)
    return torch.gather(x, dim, index), index


@register(aten.topk.default)
def _topk(x, k, dim=-1, largest=True, sorted=True):
    # as sort (torch-mlir's topk is a sort and a slice): NaN is the largest value.
    if not x.is_floating_point():
        return NotImplemented
    _, index = upstream(aten.topk.default, _nan_largest_key(x), k, dim, largest, sorted)
    return torch.gather(x, dim, index), index


# ---- float64 expm1 / log1p ---------------------------------------------------------------------
_EXPM1_COEFFS = tuple(1.0 / math.factorial(n + 1) for n in range(9))


@register(aten.expm1.default)
def _expm1(x):
    # IREE's float64 expm1 is exp(x) - 1: expm1(-1e-307) is 0, expm1(-0.0) is +0.0, expm1(1e-10)
    # is off by 8e-8 relative (elu, selu and celu inherit it). Below |x| = 0.01 a Taylor
    # polynomial x (1 + x/2 + ... + x^8/9!) instead. (float32 is right.)
    if x.dtype != torch.float64:
        return NotImplemented
    return torch.where(torch.abs(x) < 0.01, x * _horner(x, _EXPM1_COEFFS), upstream(aten.expm1.default, x))


@register(aten.log1p.default)
def _log1p(x):
    # IREE's float64 log1p is log(1 + x): log1p(-1e-307) is 0 and log1p(-0.0) +0.0 (xlog1py,
    # logsigmoid and soft_margin_loss inherit it). Goldberg's log(u) * x / (u - 1) with u = 1 + x
    # is accurate to a few ulp. (float32 is right.)
    if x.dtype != torch.float64:
        return NotImplemented
    u = 1.0 + x
    r = torch.where(u == 1.0, x, torch.log(u) * (x / (u - 1.0)))
    return torch.where(x == math.inf, math.inf, r)


@register(aten.hardsigmoid_backward.default)
def _hardsigmoid_backward(grad, x):
    # PyTorch's kernel multiplies by scalar_t(1.0f / 6.0f), 1/6 rounded to float32 also for
    # double; torch-mlir uses 1/6 in the tensor's precision (float64 results differ by 3e-8).
    if not x.is_floating_point():
        return NotImplemented
    dtype = torch.result_type(grad, x)
    inside = (x > -3.0) & (x < 3.0)
    scaled = grad.to(_opmath(dtype)) * _round_to(1.0 / 6.0, torch.float32)
    return torch.where(inside, scaled, 0.0).to(dtype)


# ---- reduced precision: compute in float as PyTorch does ------------------------------------
def _in_opmath(op):
    # torch-mlir computes these in float16/bfloat16 step by step, PyTorch's CPU kernels in
    # float, rounding once: gelu(-3) in float16 was off by 8%, round(65504., decimals=1) was inf.
    def decomposition(*args, **kwargs):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if not any(t.dtype in _REDUCED for t in tensors):
            return NotImplemented
        dtype = tensors[0].dtype
        up = [a.to(torch.float32) if isinstance(a, torch.Tensor) and a.dtype in _REDUCED else a for a in args]
        return upstream(op, *up, **kwargs).to(dtype)

    return decomposition


PROJECT_DECOMPOSITIONS[aten.round.decimals] = _bypassable(aten.round.decimals, _in_opmath(aten.round.decimals))
_gelu_in_opmath = _in_opmath(aten.gelu.default)


@register(aten.gelu.default)
def _gelu(x, approximate="none"):
    # The tanh approximation by PyTorch's CPU kernel's formula (in float for float16 and
    # bfloat16): torch-mlir's float32 lowering was off by 5e-5 at x = -0.59 (3e-4 relative),
    # while its tanh alone is within 1 ulp. Not bit-exact: below x = -4, 1 + tanh(u) cancels in
    # PyTorch's kernel as here, and the two tanh implementations leave up to 3e-7 absolute
    # between them there. gelu(-inf) stays nan, as in PyTorch.
    if not x.is_floating_point() or x.dtype == torch.float64:  # IREE cannot link a float64 tanh
        return NotImplemented
    if approximate != "tanh":
        return _gelu_in_opmath(x, approximate=approximate)
    xc = x.to(_opmath(x.dtype))
    inner = (math.sqrt(2.0) * (2.0 / math.sqrt(math.pi)) * 0.5) * (xc + 0.044715 * (xc * xc * xc))
    return (0.5 * xc * (1.0 + torch.tanh(inner))).to(x.dtype)


@register(aten.logit.default)
def _logit(x, eps=None):
    # PyTorch clamps to [eps, 1 - eps] in the tensor's dtype (1 - 1e-6 is 1.0 in float16, so
    # logit(1.) stays inf) and then computes log(x / (1 - x)) in float; torch-mlir clamps in
    # float (logit(1., eps=1e-6) in float16 came out 13.8).
    if not x.is_floating_point():
        return NotImplemented
    comp = _opmath(x.dtype)
    xc = x.to(comp)
    if eps is not None:
        lo = _round_to(float(eps), x.dtype)
        hi = _round_to(1.0 - lo, x.dtype)
        xc = torch.where(xc < lo, lo, torch.where(xc > hi, hi, xc))
    return torch.log(xc / (1.0 - xc)).to(x.dtype)


def _upsample_nearest_backward(grad, output_size, input_size, scales, exact):
    # Each output gradient added to the input element it maps to, by PyTorch's index arithmetic.
    # PyTorch's backward kernels take the 1x / 2x shortcuts in 1d, 2d and 3d alike (measured:
    # its 1d and 3d backward are not the adjoint of its forward there). torch-mlir's
    # decomposition of the 2d backward takes none, and its 1d / 3d backward do not lower.
    spatial = len(output_size)
    comp = _opmath(grad.dtype)
    lead = list(input_size[:-spatial])
    rows = math.prod(lead)
    flat_index = None
    for d in range(spatial):
        i = _nearest_source_index(input_size[-spatial + d], output_size[d], scales[d], exact,
                                  shortcuts=not exact)
        i = i.reshape((-1,) + (1,) * (spatial - 1 - d))
        flat_index = i if flat_index is None else flat_index * input_size[-spatial + d] + i
    plane = math.prod(input_size[-spatial:])
    out = torch.zeros((rows, plane), dtype=comp)
    out = out.index_add(1, flat_index.reshape(-1), grad.to(comp).reshape(rows, -1))
    return out.reshape(list(input_size)).to(grad.dtype)


def _register_upsample_backward(op, spatial, exact):
    def decomposition(grad, output_size, input_size, *scales):
        scales = list(scales) + [None] * (spatial - len(scales))
        return _upsample_nearest_backward(grad, list(output_size), list(input_size), scales, exact)

    PROJECT_DECOMPOSITIONS[op] = _bypassable(op, decomposition)


for _spatial in (1, 2, 3):
    _register_upsample_backward(getattr(aten, f"upsample_nearest{_spatial}d_backward").default, _spatial, False)
    _register_upsample_backward(getattr(aten, f"_upsample_nearest_exact{_spatial}d_backward").default, _spatial, True)


# ---- reduced precision with a Python scalar ---------------------------------------------------
def _with_scalar_in_opmath(op):
    # PyTorch's CPU mul and div keep a Python scalar operand in float (opmath) for float16 and
    # bfloat16 tensors: h * 70000.0 is 70 for h = 0.001, h * 1e-5 is 1e-5 for h = 1. torch-mlir
    # rounds the scalar to the tensor's dtype first (inf, 0).
    # A 0-d tensor operand is such a scalar too (TensorIterator's is_scalar), and so are the
    # divisors of div with a rounding mode. The op is then called again on float32 operands, so
    # that a decomposition of it (div's rounding modes) still applies.
    previous = PROJECT_DECOMPOSITIONS.get(op)

    def decomposition(a, b, *rest, **kwargs):
        scalar = (isinstance(b, (int, float)) and not isinstance(b, bool)) or (
            isinstance(b, torch.Tensor) and b.dim() == 0 and not b.is_complex() and b.dtype is not torch.bool)
        if isinstance(a, torch.Tensor) and a.dtype in _REDUCED and scalar:
            b32 = b.to(torch.float32) if isinstance(b, torch.Tensor) else b
            return op(a.to(torch.float32), b32, *rest, **kwargs).to(a.dtype)
        return previous(a, b, *rest, **kwargs) if previous is not None else NotImplemented

    return decomposition


# (add and sub round the scalar to the tensor's dtype in PyTorch too: only mul and div keep it.)
for _op in (aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar, aten.div.Tensor_mode,
            aten.div.Scalar_mode):
    PROJECT_DECOMPOSITIONS[_op] = _bypassable(_op, _with_scalar_in_opmath(_op))


# ---- reduced-precision accumulation -----------------------------------------------------------
def _accumulating_in_opmath(op):
    # PyTorch's CPU sum, mean, nansum, cumsum and vector norms into float16 or bfloat16 (the
    # input's dtype, or `dtype=`) accumulate in float32 and round once; torch-mlir accumulates in
    # the element type. For 4096 values near 0.01, a bfloat16 sum was 2.5% off native and a
    # cumsum 90%; `ones(5000, int32).sum(dtype=float16)` gave 2048. The values are rounded to the
    # result's dtype first (as PyTorch casts the input), the op runs on them in float32, and its
    # result is rounded once. A sum into bool is an "any" (True + True is True in PyTorch; the
    # kernel's 1-bit add wrapped around).
    def decomposition(x, *args, dtype=None, **kwargs):
        if not isinstance(x, torch.Tensor) or x.is_complex():
            return NotImplemented
        if dtype is None and not x.is_floating_point():
            return NotImplemented  # integers and bools sum into int64
        out = dtype or x.dtype
        if out is torch.bool and op in (aten.sum.default, aten.sum.dim_IntList):
            return op(x.to(torch.bool).to(torch.int32), *args, **kwargs) > 0
        if out not in _REDUCED:
            return NotImplemented
        return op(x.to(out).to(torch.float32), *args, **kwargs).to(out)

    return decomposition


for _op in (aten.sum.default, aten.sum.dim_IntList, aten.mean.default, aten.mean.dim, aten.nansum.default,
            aten.cumsum.default, aten.linalg_vector_norm.default):
    PROJECT_DECOMPOSITIONS[_op] = _bypassable(_op, _accumulating_in_opmath(_op))
