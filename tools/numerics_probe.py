"""Probe: NaN / inf / signed-zero / extremal-value semantics of compiled kernels against native
PyTorch, op by op.

    PYTHONPATH=. python tools/numerics_probe.py [--only REGEX] [--dtypes float32,float64]
                                                [--json out.json] [--resume out.json]

Every case runs once natively on CPU tensors and once on TorchMLIRTensors; the results are
compared by value class (NaN positions, +inf/-inf positions, signed zeros where the op makes
them), finite values (relative tolerance) and dtype/shape; `torch_mlir_eager.stats()` tells
whether the device call ran compiled or fell back (a fallback is native, so it cannot disagree).
Unary ops run on a grid of extremal values, binary ops on the cross product of the grid with
itself, Scalar overloads on the grid against extremal Python scalars, reductions on rows built
to contain NaN, +-inf, -0.0/+0.0, all -inf, ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
import traceback

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten

import torch_mlir_eager
from torch_mlir_eager import TorchMLIRTensor, compiler as _compiler


def _digest_with_decompositions():
    # The disk cache's op index is keyed by the source of compiler.py, lowering.py, ... but not
    # decompositions.py: without this, an edited decomposition could load a kernel built from
    # the old one.
    import hashlib

    h = hashlib.sha256(_compiler._source_digest().encode())
    with open(os.path.join(os.path.dirname(_compiler.__file__), "decompositions.py"), "rb") as f:
        h.update(f.read())
    return h.hexdigest()


if hasattr(_compiler, "_source_digest") and os.path.exists(
        os.path.join(os.path.dirname(_compiler.__file__), "decompositions.py")):
    _compiler._SOURCE_DIGEST = _digest_with_decompositions()

nan, inf = float("nan"), float("inf")


# IREE's CPU runtime runs every kernel with denormals flushed to zero (FTZ/DAZ: the task
# workers and the inline command buffer push IREE_FPU_STATE_FLAG_FLUSH_DENORMALS_TO_ZERO), so
# denormal inputs read as +-0 and denormal results come out as +-0 in every op. That is one
# finding for the whole backend; the grid leaves denormals out unless --denormals is given.
DENORMALS = False


RANDOM = False


def grid(dtype):
    """Extremal and ordinary values of `dtype` (with --random: ordinary random values)."""
    fi = torch.finfo(dtype)
    if RANDOM:
        g = torch.Generator().manual_seed(1234)
        n = 24
        normal = torch.randn(n, generator=g, dtype=torch.float64) * 3
        wide = torch.sign(torch.randn(n, generator=g, dtype=torch.float64)) * 10 ** (torch.rand(n, generator=g, dtype=torch.float64) * 8 - 4)
        return torch.cat([normal, wide]).to(dtype)
    vals = [nan, inf, -inf, 0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 1.5, -2.5, 3.0, -7.25, 100.0, 0.1,
            fi.max, -fi.max, fi.max / 4, fi.tiny, -fi.tiny, 4.0, -3.0]
    if dtype in (torch.float32, torch.float64):
        vals += [1e38 if dtype == torch.float32 else 1e308, -1e-37 if dtype == torch.float32 else -1e-307]
    if DENORMALS:
        vals += [fi.smallest_normal / 8, -fi.smallest_normal / 8]
    return torch.tensor(vals, dtype=dtype)


def cross(dtype):
    g = grid(dtype)
    n = g.numel()
    return g.repeat_interleave(n), g.repeat(n)


SCALARS = [nan, inf, -inf, 0.0, -0.0, 2.0, -1.5]


def reduction_rows(dtype):
    """Rows that exercise NaN/inf handling of reductions (8 columns each)."""
    rows = [
        [1.0, 2.0, 3.0, -1.0, 0.5, 4.0, -2.0, 0.25],
        [1.0, nan, 3.0, -1.0, 0.5, 4.0, -2.0, 0.25],
        [nan, 2.0, inf, -inf, 0.5, nan, -2.0, 0.25],
        [1.0, inf, 3.0, -1.0, 0.5, 4.0, -2.0, 0.25],
        [1.0, -inf, 3.0, -1.0, 0.5, 4.0, -2.0, 0.25],
        [1.0, inf, 3.0, -inf, 0.5, 4.0, -2.0, 0.25],
        [-inf] * 8,
        [inf] * 8,
        [nan] * 8,
        [-0.0, 0.0, -0.0, 0.0, -0.0, 0.0, -0.0, 0.0],
        [0.0, -0.0, 0.0, -0.0, 0.0, -0.0, 0.0, -0.0],
        [-0.0] * 8,
        [3.0, 3.0, 1.0, 1.0, 3.0, 2.0, 1.0, 3.0],
        [1e38, 1e38, 1e38, 1e38, -1.0, 2.0, 3.0, 4.0],
        [1e-35, -1e-35, 1e-36, 0.0, -0.0, 1e-37, 2.0, -inf],
        [-inf, nan, -inf, 1.0, 2.0, 3.0, 4.0, 5.0],
    ]
    return torch.tensor(rows, dtype=dtype)


# ---- the cases --------------------------------------------------------------------------------
# (name, fn, inputs-maker): the inputs-maker takes a dtype and returns a tuple of tensors.
CASES: list = []


def case(name, fn, make, dtypes=None, signed_zero=True, elementwise=None):
    if elementwise is None:
        elementwise = not name.startswith(("reduce.", "intred."))
    if name.startswith(("reduce.", "intred.")):
        signed_zero = False  # the sign of a zero sum/max depends on the reduction order
    CASES.append(dict(name=name, fn=fn, make=make, dtypes=dtypes, signed_zero=signed_zero, elementwise=elementwise))


def unary_in(dt):
    return (grid(dt),)


def binary_in(dt):
    return cross(dt)


def red_in(dt):
    return (reduction_rows(dt),)


UNARY = {
    "abs": torch.abs, "neg": torch.neg, "sign": torch.sign, "sgn": torch.sgn, "signbit": torch.signbit,
    "isnan": torch.isnan, "isinf": torch.isinf, "isfinite": torch.isfinite, "isposinf": torch.isposinf,
    "isneginf": torch.isneginf, "isreal": torch.isreal, "exp": torch.exp, "exp2": torch.exp2,
    "expm1": torch.expm1, "log": torch.log, "log2": torch.log2, "log10": torch.log10, "log1p": torch.log1p,
    "sqrt": torch.sqrt, "rsqrt": torch.rsqrt, "reciprocal": torch.reciprocal, "square": torch.square,
    "sin": torch.sin, "cos": torch.cos, "tan": torch.tan, "asin": torch.asin, "acos": torch.acos,
    "atan": torch.atan, "sinh": torch.sinh, "cosh": torch.cosh, "tanh": torch.tanh, "asinh": torch.asinh,
    "acosh": torch.acosh, "atanh": torch.atanh, "sigmoid": torch.sigmoid, "logit": torch.logit,
    "logit_eps": lambda x: torch.logit(x, eps=1e-6), "erf": torch.erf, "erfc": torch.erfc,
    "erfinv": torch.erfinv, "lgamma": torch.lgamma, "digamma": torch.digamma, "i0": torch.i0,
    "sinc": torch.sinc, "round": torch.round, "round_dec1": lambda x: torch.round(x, decimals=1),
    "trunc": torch.trunc, "floor": torch.floor, "ceil": torch.ceil, "frac": torch.frac, "fix": torch.fix,
    "nan_to_num": torch.nan_to_num, "nan_to_num_args": lambda x: torch.nan_to_num(x, nan=0.5, posinf=7.0, neginf=-7.0),
    "relu": torch.relu, "relu6": F.relu6, "hardtanh": F.hardtanh, "hardtanh_2": lambda x: F.hardtanh(x, -2.0, 2.0),
    "leaky_relu": F.leaky_relu, "elu": F.elu, "selu": F.selu, "celu": F.celu, "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "silu": F.silu, "mish": F.mish,
    "softplus": F.softplus, "softplus_beta": lambda x: F.softplus(x, beta=2.0, threshold=10.0),
    "hardsigmoid": F.hardsigmoid, "hardswish": F.hardswish, "hardshrink": F.hardshrink,
    "softshrink": F.softshrink, "tanhshrink": F.tanhshrink, "logsigmoid": F.logsigmoid,
    "threshold": lambda x: F.threshold(x, 0.5, -3.0), "glu_like_sigmoid": torch.special.expit,
    "clamp": lambda x: torch.clamp(x, -1.0, 1.0), "clamp_min": lambda x: torch.clamp(x, min=-1.0),
    "clamp_max": lambda x: torch.clamp(x, max=1.0), "clip": lambda x: torch.clip(x, -1.0, 1.0),
    "clamp_min_nan": lambda x: torch.clamp(x, min=nan), "clamp_max_nan": lambda x: torch.clamp(x, max=nan),
    "clamp_zero": lambda x: torch.clamp(x, 0.0, 0.0), "clamp_negzero": lambda x: torch.clamp(x, min=-0.0),
    "clamp_inverted": lambda x: torch.clamp(x, 1.0, -1.0), "clamp_int_bounds": lambda x: torch.clamp(x, -1, 1),
    "deg2rad": torch.deg2rad, "rad2deg": torch.rad2deg, "positive": torch.positive, "logical_not": torch.logical_not,
    "angle": torch.angle, "ndtr": torch.special.ndtr, "ndtri": torch.special.ndtri,
    "log_ndtr": torch.special.log_ndtr, "entr": torch.special.entr, "i0e": torch.special.i0e,
    "i1": torch.special.i1, "i1e": torch.special.i1e, "erfcx": torch.special.erfcx,
    "float_power_2": lambda x: torch.float_power(x, 2), "pow_2": lambda x: torch.pow(x, 2),
    "pow_0.5": lambda x: torch.pow(x, 0.5), "pow_3": lambda x: torch.pow(x, 3), "pow_-1": lambda x: torch.pow(x, -1),
    "pow_0": lambda x: torch.pow(x, 0), "pow_-2": lambda x: torch.pow(x, -2), "pow_nan": lambda x: torch.pow(x, nan),
    "pow_inf": lambda x: torch.pow(x, inf), "rpow_2": lambda x: torch.pow(2.0, x), "rpow_-2": lambda x: torch.pow(-2.0, x),
    "rpow_1": lambda x: torch.pow(1.0, x), "rpow_0": lambda x: torch.pow(0.0, x), "rpow_nan": lambda x: torch.pow(nan, x),
    "xlogy_s": lambda x: torch.xlogy(x, 2.0), "xlogy_rs": lambda x: torch.xlogy(2.0, x),
    "rsub_s": lambda x: torch.rsub(x, 1.0), "sigmoid_mul": lambda x: x * torch.sigmoid(x),
    "logsumexp_1": lambda x: torch.logsumexp(x.unsqueeze(1), 1), "softmax_1": lambda x: torch.softmax(x.unsqueeze(1), 1),
    "to_f16": lambda x: x.to(torch.float16), "to_bf16": lambda x: x.to(torch.bfloat16),
    "to_int32": lambda x: x.to(torch.int32), "to_bool": lambda x: x.to(torch.bool),
    "to_f64": lambda x: x.to(torch.float64), "frexp_m": lambda x: torch.frexp(x)[0],
    "frexp_e": lambda x: torch.frexp(x)[1], "polygamma1": lambda x: torch.polygamma(1, x),
    "mvlgamma": lambda x: torch.mvlgamma(x, 1), "nonzero_mask": lambda x: x != 0,
}

BINARY = {
    "add": torch.add, "add_alpha": lambda a, b: torch.add(a, b, alpha=2), "sub": torch.sub, "mul": torch.mul,
    "div": torch.div, "div_trunc": lambda a, b: torch.div(a, b, rounding_mode="trunc"),
    "div_floor": lambda a, b: torch.div(a, b, rounding_mode="floor"), "floor_divide": torch.floor_divide,
    "fmod": torch.fmod, "remainder": torch.remainder, "pow": torch.pow, "float_power": torch.float_power,
    "atan2": torch.atan2, "hypot": torch.hypot, "copysign": torch.copysign, "nextafter": torch.nextafter,
    "logaddexp": torch.logaddexp, "logaddexp2": torch.logaddexp2, "xlogy": torch.xlogy,
    "xlog1py": torch.special.xlog1py, "maximum": torch.maximum, "minimum": torch.minimum, "fmax": torch.fmax,
    "fmin": torch.fmin, "max_other": torch.max, "min_other": torch.min, "eq": torch.eq, "ne": torch.ne,
    "lt": torch.lt, "le": torch.le, "gt": torch.gt, "ge": torch.ge, "isclose": torch.isclose,
    "logical_and": torch.logical_and, "logical_or": torch.logical_or, "logical_xor": torch.logical_xor,
    "where": lambda a, b: torch.where(a > b, a, b), "where_nan_cond": lambda a, b: torch.where(a == a, a, b),
    "lerp_0.5": lambda a, b: torch.lerp(a, b, 0.5), "lerp_t": lambda a, b: torch.lerp(a, b, torch.full_like(a, 0.75)),
    "heaviside": torch.heaviside, "clamp_t": lambda a, b: torch.clamp(a, min=b),
    "clamp_t_max": lambda a, b: torch.clamp(a, max=b), "clamp_t_both": lambda a, b: torch.clamp(a, -b.abs(), b.abs()),
    "ldexp": lambda a, b: torch.ldexp(a, b), "rsub": torch.rsub, "addcmul": lambda a, b: torch.addcmul(a, a, b, value=0.5),
    "addcdiv": lambda a, b: torch.addcdiv(a, a, b, value=0.5), "sub_alpha": lambda a, b: torch.sub(a, b, alpha=0.5),
    "mse_none": lambda a, b: F.mse_loss(a, b, reduction="none"), "l1_none": lambda a, b: F.l1_loss(a, b, reduction="none"),
    "smooth_l1_none": lambda a, b: F.smooth_l1_loss(a, b, reduction="none"),
    "huber_none": lambda a, b: F.huber_loss(a, b, reduction="none"),
    "bce_logits_none": lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction="none"),
    "soft_margin_none": lambda a, b: F.soft_margin_loss(a, b, reduction="none"),
    "igamma": torch.special.gammainc, "zeta": torch.special.zeta, "polar_abs": lambda a, b: torch.polar(a, b).abs(),
    "threshold_bwd": lambda a, b: torch.ops.aten.threshold_backward(a, b, 0.5),
    "hardtanh_bwd": lambda a, b: torch.ops.aten.hardtanh_backward(a, b, -1.0, 1.0),
    "leaky_relu_bwd": lambda a, b: torch.ops.aten.leaky_relu_backward(a, b, 0.01, False),
    "gelu_bwd": lambda a, b: torch.ops.aten.gelu_backward(a, b),
    "silu_bwd": lambda a, b: torch.ops.aten.silu_backward(a, b),
    "sigmoid_bwd": lambda a, b: torch.ops.aten.sigmoid_backward(a, b),
    "tanh_bwd": lambda a, b: torch.ops.aten.tanh_backward(a, b),
    "elu_bwd": lambda a, b: torch.ops.aten.elu_backward(a, 1.0, 1.0, 1.0, False, b),
    "softplus_bwd": lambda a, b: torch.ops.aten.softplus_backward(a, b, 1.0, 20.0),
    "hardswish_bwd": lambda a, b: torch.ops.aten.hardswish_backward(a, b),
    "hardsigmoid_bwd": lambda a, b: torch.ops.aten.hardsigmoid_backward(a, b),
    "mish_bwd": lambda a, b: torch.ops.aten.mish_backward(a, b),
}

SCALAR_BINARY = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
    "div_trunc": lambda a, s: torch.div(a, s, rounding_mode="trunc"),
    "div_floor": lambda a, s: torch.div(a, s, rounding_mode="floor"), "floor_divide": torch.floor_divide,
    "fmod": torch.fmod, "remainder": torch.remainder, "pow": torch.pow, "rpow": lambda a, s: torch.pow(s, a),
    "maximum0d": lambda a, s: torch.maximum(a, torch.tensor(s)), "minimum0d": lambda a, s: torch.minimum(a, torch.tensor(s)),
    "fmax0d": lambda a, s: torch.fmax(a, torch.tensor(s)), "atan2_0d": lambda a, s: torch.atan2(a, torch.tensor(s)),
    "clamp_min": lambda a, s: torch.clamp(a, min=s), "clamp_max": lambda a, s: torch.clamp(a, max=s),
    "eq": torch.eq, "lt": torch.lt, "ge": torch.ge, "copysign": torch.copysign, "rsub": torch.rsub,
    "where_s": lambda a, s: torch.where(a > 0, a, s), "leaky_relu": lambda a, s: F.leaky_relu(a, s),
    "hardtanh_lo": lambda a, s: F.hardtanh(a, s, 1e30) if not math.isnan(s) else F.hardtanh(a, -1.0, 1.0),
    "fill_mask": lambda a, s: a.masked_fill(a < 0, s), "xlogy": torch.xlogy, "lerp_w": lambda a, s: torch.lerp(a, torch.ones_like(a), s),
    "nan_to_num_nan": lambda a, s: torch.nan_to_num(a, nan=s), "threshold": lambda a, s: F.threshold(a, s, 9.0),
}

def _pointed(x, values_indices):
    values, indices = values_indices
    return values, torch.gather(x, 1, indices)


REDUCTIONS = {
    "max": lambda x: torch.max(x), "min": lambda x: torch.min(x), "amax1": lambda x: torch.amax(x, 1),
    "amin1": lambda x: torch.amin(x, 1), "amax0": lambda x: torch.amax(x, 0), "argmax1": lambda x: torch.argmax(x, 1),
    "argmin1": lambda x: torch.argmin(x, 1), "argmax": lambda x: torch.argmax(x), "max_dim": lambda x: torch.max(x, 1),
    "min_dim": lambda x: torch.min(x, 1), "aminmax": lambda x: torch.aminmax(x, dim=1),
    # sort/topk: the values, and what the indices point at (the order of ties is not PyTorch's
    # contract: its CPU sort is not stable)
    "sort": lambda x: _pointed(x, torch.sort(x, 1)), "sort_desc": lambda x: _pointed(x, torch.sort(x, 1, descending=True)),
    "sort_stable": lambda x: torch.sort(x, dim=1, stable=True), "sort_values": lambda x: torch.sort(x, 1).values,
    "topk3": lambda x: _pointed(x, torch.topk(x, 3, 1)), "topk3_small": lambda x: _pointed(x, torch.topk(x, 3, 1, largest=False)),
    "msort": lambda x: torch.msort(x.t()), "cumsum": lambda x: torch.cumsum(x, 1), "cumprod": lambda x: torch.cumprod(x, 1),
    "cummax": lambda x: torch.cummax(x, 1), "cummin": lambda x: torch.cummin(x, 1),
    "logcumsumexp": lambda x: torch.logcumsumexp(x, 1), "softmax": lambda x: torch.softmax(x, 1),
    "log_softmax": lambda x: torch.log_softmax(x, 1), "logsumexp": lambda x: torch.logsumexp(x, 1),
    "sum": lambda x: torch.sum(x, 1), "sum_all": lambda x: torch.sum(x), "mean": lambda x: torch.mean(x, 1),
    "prod": lambda x: torch.prod(x, 1), "var": lambda x: torch.var(x, 1), "std": lambda x: torch.std(x, 1),
    "var_mean": lambda x: torch.var_mean(x, 1), "norm2": lambda x: torch.norm(x, dim=1),
    "norm_inf": lambda x: torch.linalg.vector_norm(x, inf, dim=1), "norm_-inf": lambda x: torch.linalg.vector_norm(x, -inf, dim=1),
    "norm1": lambda x: torch.linalg.vector_norm(x, 1, dim=1), "norm0": lambda x: torch.linalg.vector_norm(x, 0, dim=1),
    "norm3": lambda x: torch.linalg.vector_norm(x, 3, dim=1), "nanmean": lambda x: torch.nanmean(x, 1),
    "nansum": lambda x: torch.nansum(x, 1), "median": lambda x: torch.median(x, 1), "median_all": lambda x: torch.median(x),
    "nanmedian": lambda x: torch.nanmedian(x, 1), "kthvalue": lambda x: torch.kthvalue(x, 3, 1),
    "all": lambda x: torch.all(x, 1), "any": lambda x: torch.any(x, 1), "count_nonzero": lambda x: torch.count_nonzero(x, 1),
    "max_pool1d": lambda x: F.max_pool1d(x.unsqueeze(0), 2), "max_pool1d_idx": lambda x: F.max_pool1d(x.unsqueeze(0), 2, return_indices=True),
    "max_pool2d": lambda x: F.max_pool2d(x.view(1, 1, 16, 8), 2), "adaptive_max_pool1d": lambda x: F.adaptive_max_pool1d(x.unsqueeze(0), 2),
    "avg_pool1d": lambda x: F.avg_pool1d(x.unsqueeze(0), 2), "layer_norm": lambda x: F.layer_norm(x, (8,)),
    "normalize": lambda x: F.normalize(x, dim=1), "cosine_sim": lambda x: F.cosine_similarity(x, x.flip(1), dim=1),
    "dist": lambda x: torch.cdist(x[:, :4].contiguous(), x[:, 4:].contiguous()),
    "clamp_by_rowmax": lambda x: x - torch.amax(x, 1, keepdim=True),
    "cross_entropy": lambda x: F.cross_entropy(x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device), reduction="none"),
    "renorm": lambda x: torch.renorm(x, 2, 0, 1.0), "mode": lambda x: torch.mode(x, 1),
}

for name, fn in UNARY.items():
    case(f"unary.{name}", fn, unary_in)
for name, fn in BINARY.items():
    case(f"binary.{name}", fn, binary_in)
for name, fn in SCALAR_BINARY.items():
    for s in SCALARS:
        case(f"scalar.{name}[{s!r}]", (lambda f, s: (lambda a: f(a, s)))(fn, s), unary_in)
for name, fn in REDUCTIONS.items():
    case(f"reduce.{name}", fn, red_in)
# integer and mixed-dtype paths of the NaN-free ops
def int_grid(dt):
    """Small values, and values past float32's (2**24) and float64's (2**53) exact integers."""
    vals = [0, 1, -1, 2, -2, 3, -3, 7, -7, 100, -100, 2**24 + 1, -(2**24 + 1), 2**31 - 1, -(2**31)]
    if dt == torch.int64:
        vals += [2**53 + 1, -(2**53 + 1), 2**62 + 1, 2**63 - 1, -(2**63)]
    return torch.tensor(vals, dtype=dt)


def int_cross(dt):
    g = int_grid(dt)
    n = g.numel()
    return g.repeat_interleave(n), g.repeat(n)


INT_BINARY = ("add", "sub", "mul", "floor_divide", "div_floor", "div_trunc", "fmod", "remainder", "div",
              "maximum", "minimum", "max_other", "min_other", "eq", "lt", "ge", "atan2", "copysign",
              "clamp_t", "clamp_t_max", "where", "pow", "bitwise_and", "bitwise_or", "bitwise_xor",
              "lshift", "rshift", "gcd", "add_alpha", "sub_alpha_int", "threshold_bwd_int")
BINARY.update({
    "bitwise_and": torch.bitwise_and, "bitwise_or": torch.bitwise_or, "bitwise_xor": torch.bitwise_xor,
    "lshift": lambda a, b: torch.bitwise_left_shift(a, b.clamp(0, 8)),
    "rshift": lambda a, b: torch.bitwise_right_shift(a, b.clamp(0, 8)),
    "gcd": torch.gcd, "lcm": torch.lcm, "sub_alpha_int": lambda a, b: torch.sub(a, b, alpha=3),
    "threshold_bwd_int": lambda a, b: torch.ops.aten.threshold_backward(a, b, 2),
})
INT_UNARY = ("abs", "sign", "neg", "clamp", "clamp_int_bounds", "relu", "isfinite", "isnan", "signbit", "sqrt",
             "square", "reciprocal", "exp", "pow_2", "pow_3", "to_f32", "to_f64", "to_int32", "to_bool",
             "bitwise_not", "trunc", "floor", "round", "sgn", "positive", "hardtanh", "relu6", "float_power_2",
             "logical_not", "nan_to_num")
UNARY.update({"to_f32": lambda x: x.to(torch.float32), "bitwise_not": torch.bitwise_not})
INT_REDUCTIONS = ("max", "min", "amax1", "argmax1", "argmin1", "max_dim", "sort", "topk3", "cumsum", "cumprod",
                  "cummax", "sum", "sum_all", "prod", "median", "kthvalue", "count_nonzero", "mode")
for name in INT_BINARY:
    case(f"int.{name}", BINARY[name], int_cross, dtypes=[torch.int32, torch.int64])
for name in INT_UNARY:
    case(f"int.{name}", UNARY[name], lambda dt: (int_grid(dt),), dtypes=[torch.int32, torch.int64])
for name in INT_REDUCTIONS:
    case(f"intred.{name}", REDUCTIONS[name], lambda dt: (int_grid(dt)[:15].reshape(3, 5),), dtypes=[torch.int32, torch.int64])
# mixed dtypes: integer tensors with float tensors / float scalars
MIXED = {
    "add_if": lambda a, b: torch.add(a.to(torch.int64), b), "mul_fi": lambda a, b: torch.mul(a, b.to(torch.int32)),
    "maximum_if": lambda a, b: torch.maximum(a.to(torch.int64), b), "atan2_if": lambda a, b: torch.atan2(a.to(torch.int64), b),
    "threshold_bwd_if": lambda a, b: torch.ops.aten.threshold_backward(a.to(torch.int64), b, 0.5),
    "threshold_bwd_fi": lambda a, b: torch.ops.aten.threshold_backward(a, b.to(torch.int64), 0.5),
    "threshold_bwd_ii": lambda a, b: torch.ops.aten.threshold_backward(a.to(torch.int64), b.to(torch.int32), 0.5),
    "floor_divide_if": lambda a, b: torch.floor_divide(a.to(torch.int64), b), "where_if": lambda a, b: torch.where(a > b, a.to(torch.int32), b),
}
for name, fn in MIXED.items():
    case(f"mixed.{name}", fn, lambda dt: tuple(t.clamp(-1e9, 1e9).nan_to_num(0.0) for t in cross(dt)), dtypes=[torch.float32])


# ---- comparing --------------------------------------------------------------------------------
def classify_diff(dev: torch.Tensor, nat: torch.Tensor, signed_zero: bool):
    """Disagreements of a device result with a native one: ({category: element mask}, or a
    whole-tensor problem string)."""
    if dev.dtype != nat.dtype:
        return f"dtype {dev.dtype} != {nat.dtype}"
    if dev.shape != nat.shape:
        return f"shape {tuple(dev.shape)} != {tuple(nat.shape)}"
    if not dev.is_floating_point():
        return {"value": dev != nat}
    d, n = dev.double(), nat.double()
    masks = {}
    masks["nan"] = d.isnan() != n.isnan()
    both = ~d.isnan() & ~n.isnan()
    masks["inf"] = both & ((d.isinf() | n.isinf()) & (d != n))
    tiny = torch.finfo(nat.dtype).tiny
    # a denormal native result that came out as a zero (of either sign): the runtime's FTZ
    flushed = both & (n != 0) & (n.abs() < tiny) & (d == 0)
    masks["ftz"] = flushed
    fin = both & d.isfinite() & n.isfinite() & ~flushed
    tol = 1e-2 if nat.dtype in (torch.float16, torch.bfloat16) else (1e-4 if nat.dtype == torch.float32 else 1e-9)
    err = (d - n).abs() > tol * n.abs().clamp_min(tiny * 16) + tiny * 4
    masks["value"] = fin & err
    if signed_zero:
        masks["signed-zero"] = both & ~flushed & (d == 0) & (n == 0) & (d.signbit() != n.signbit())
    return masks


def native_variants(fn, ins, nat_leaves):
    """PyTorch's CPU kernels have a vectorized body and a scalar tail loop that do not always
    agree (maximum(-0., 0.), fmod with an overflowing quotient, ...). For elementwise cases,
    the native results of both: each element repeated 32 times (vector body) and strided
    inputs (scalar loop). A device result that matches any of them is not a disagreement."""
    out = []
    for variant in ("vector", "scalar"):
        try:
            if variant == "vector":
                r = fn(*[t.unsqueeze(1).expand(-1, 32).contiguous() for t in ins])
            else:  # one element at a time: PyTorch's scalar loop
                if not all(t.dim() == 1 and t.shape == ins[0].shape for t in ins):
                    continue
                per = [[y for y in tree_flatten(fn(*[t[i:i + 1] for t in ins]))[0] if isinstance(y, torch.Tensor)]
                       for i in range(ins[0].numel())]
                r = [torch.cat([p[j].reshape(-1) for p in per]) for j in range(len(per[0]))]
        except Exception:
            continue
        leaves = [x for x in tree_flatten(r)[0] if isinstance(x, torch.Tensor)]
        fixed = []
        for x, n in zip(leaves, nat_leaves):
            if x.dim() == n.dim() + 1 and x.shape[:-1] == n.shape:
                x = x[..., 0]
            fixed.append(x if x.shape == n.shape else None)
        out.append(fixed)
    return out


def run_case(c, dtype, device):
    ins = c["make"](dtype)
    try:
        nat = c["fn"](*[t.clone() for t in ins])
    except Exception as e:
        return dict(status="native-error", error=str(e).splitlines()[0][:200])
    dev_ins = [TorchMLIRTensor(t.clone(), device=device) for t in ins]
    torch_mlir_eager.reset_stats()
    try:
        dev = c["fn"](*dev_ins)
    except Exception as e:
        return dict(status="device-error", error=f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
    st = torch_mlir_eager.stats()
    fallbacks = {op: f"{v['step']}: {v['reason'][:120]}" for op, v in st["fallbacks"].items() if v["step"] != "transfer"}
    nat_leaves = [x for x in tree_flatten(nat)[0] if isinstance(x, torch.Tensor)]
    dev_leaves = [x for x in tree_flatten(dev)[0] if isinstance(x, torch.Tensor)]
    dev_leaves = [x.cpu() if isinstance(x, TorchMLIRTensor) else x for x in dev_leaves]
    variants = native_variants(c["fn"], ins, nat_leaves) if c["elementwise"] else []
    out = dict(status="ok", compiled=st["compiled_calls"], fallbacks=fallbacks, diffs=[])
    flat_in = [t.reshape(-1) for t in ins]
    for i, (d, n) in enumerate(zip(dev_leaves, nat_leaves)):
        masks = classify_diff(d, n, c["signed_zero"])
        if isinstance(masks, str):
            out["diffs"].append(dict(output=i, problems=[masks], examples=[]))
            continue
        bad = torch.zeros(d.shape, dtype=torch.bool)
        for k, m in masks.items():
            if k != "ftz":
                bad |= m
        inconsistent = torch.zeros(d.shape, dtype=torch.bool)
        for v in variants:
            if v[i] is None:
                continue
            other = classify_diff(d, v[i], c["signed_zero"])
            if isinstance(other, str):
                continue
            other_bad = torch.zeros(d.shape, dtype=torch.bool)
            for k, m in other.items():
                if k != "ftz":
                    other_bad |= m
            inconsistent |= bad & ~other_bad
            bad &= other_bad
        problems = [k for k, m in masks.items() if (m & (bad if k != "ftz" else m)).any()]
        if inconsistent.any():
            out.setdefault("native_inconsistent", 0)
            out["native_inconsistent"] += int(inconsistent.sum())
        if problems:
            examples = []
            if bad.any():
                idx = bad.reshape(-1).nonzero().reshape(-1)[:6].tolist()
                for j in idx:
                    if d.dim() == 1 and all(t.numel() == d.numel() for t in flat_in):
                        inp = [repr(t[j].item()) for t in flat_in]
                    elif d.dim() >= 1 and ins[0].dim() == 2 and d.shape[0] == ins[0].shape[0]:
                        row = j // max(1, d.numel() // d.shape[0])
                        inp = [f"row{row}={ins[0][row].tolist()}"]
                    else:
                        inp = [f"flat[{j}]"]
                    examples.append(dict(input=inp, device=repr(d.reshape(-1)[j].item()), native=repr(n.reshape(-1)[j].item())))
            out["diffs"].append(dict(output=i, problems=problems, examples=examples, count=int(bad.sum())))
    if len(dev_leaves) != len(nat_leaves):
        out["diffs"].append(dict(output=-1, problems=[f"{len(dev_leaves)} results != {len(nat_leaves)}"], examples=[]))
    return out


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--only", default=None)
    p.add_argument("--dtypes", default="float32,float64")
    p.add_argument("--json", default="/tmp/numerics_probe.json")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("--denormals", action="store_true", help="put denormals into the grids")
    p.add_argument("--random", action="store_true", help="ordinary random values instead of the extremal grid")
    a = p.parse_args(argv)
    global DENORMALS, RANDOM
    DENORMALS = a.denormals
    RANDOM = a.random
    dtypes = [getattr(torch, d) for d in a.dtypes.split(",")]
    results = {}
    if a.resume and os.path.exists(a.json):
        with open(a.json) as f:
            results = json.load(f)
    start = time.time()
    for c in CASES:
        if a.only and not re.search(a.only, c["name"]):
            continue
        for dt in (c["dtypes"] or dtypes):
            key = f"{c['name']}@{str(dt).replace('torch.', '')}"
            if key in results:
                continue
            try:
                r = run_case(c, dt, a.device)
            except Exception as e:
                r = dict(status="probe-error", error=traceback.format_exc().splitlines()[-1])
            results[key] = r
            flag = ""
            if r.get("diffs"):
                flag = " DIFF " + "; ".join(",".join(d["problems"]) for d in r["diffs"])
            if r.get("fallbacks"):
                flag += " FALLBACK " + ",".join(r["fallbacks"])
            print(f"[{time.time() - start:7.1f}s] {key}: {r['status']}{flag}", flush=True)
            with open(a.json + ".tmp", "w") as f:
                json.dump(results, f, indent=1)
            os.replace(a.json + ".tmp", a.json)
    summarize(results)


def summarize(results):
    ran = [k for k, r in results.items() if r["status"] == "ok"]
    compiled = [k for k in ran if not results[k]["fallbacks"]]
    print(f"\n{len(results)} cases, {len(ran)} ran on the device, {len(compiled)} fully compiled")
    ftz_only = [k for k, r in results.items() if r.get("diffs") and all(d["problems"] == ["ftz"] for d in r["diffs"])]
    if ftz_only:
        print("denormal results flushed to zero (and nothing else wrong):", ", ".join(ftz_only))
    for k, r in results.items():
        if r.get("diffs") and k not in ftz_only:
            fb = " (partly fell back: " + ",".join(r["fallbacks"]) + ")" if r["fallbacks"] else ""
            for d in r["diffs"]:
                ex = d["examples"][:3]
                print(f"DIFF {k}[{d['output']}]: {','.join(d['problems'])} ({d.get('count', '?')} elements){fb}")
                for e in ex:
                    print(f"      in={e['input']} device={e['device']} native={e['native']}")
    for k, r in results.items():
        if r["status"] not in ("ok", "native-error"):
            print(f"ERROR {k}: {r['status']} {r.get('error')}")


if __name__ == "__main__":
    main()
