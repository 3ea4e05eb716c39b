"""Convolutions with pre-packed weights, on llvm-cpu targets.

IREE 3.13 compiles a convolution (im2col + data tiling + ukernels) into a kernel that transposes
and packs its weight into the matmul ukernel's tiled layout on every call: for a 512-channel 3x3
convolution that is 9.4 MB read and written, about 0.6 ms of the 1.6 ms it takes at batch 1.
Eval weights do not change between calls, so here the kernel's module has two functions:

    pack(weight)               the weight in the tiled layout (N1, K, N0, 1) of `linalg.mmt4d`'s
                               right-hand side, K ordered (kh, kw, c)
    main(input, packed, bias)  pad, im2col (a gather in channels-last order), pack the
                               left-hand side, mmt4d (IREE's ukernel), unpack, bias, layout

written here in linalg rather than lowered from the torch dialect, and the packed weight of each
weight storage is kept (`packed_weight`), keyed by the storage and its version: a write to the
weight (an optimizer step, `copy_`, `.data =` of another storage) bumps the version or changes the
storage, so it is packed again on its next use; it dies with its storage. The cost is one more
copy of each such weight in memory.

Only plain 2-D float32 convolutions take this path: first, those where `benchmarks/prepack.py`
measured it faster (see MIN_WEIGHT_ELEMENTS below); the others when IREE's own lowering of the
convolution fails to compile (a 3x4 kernel of stride 2 over a 4x3 input, in OpInfo's samples).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from typing import NamedTuple

import torch

from .kernel_cache import STATS
from .recipe import fill

# which convolutions take this path (benchmarks/prepack.py; README "Measurements"): at batch 1,
# those with a large weight (IREE's own kernel, channels-last at batch 1, is as fast for small
# ones); at larger batches, those whose im2col matrix is not huge (IREE's own NCHW kernel is
# 1.5-2.5x slower there, but this one is 3x slower on ResNet18's stem and layer1 at batch 8, with
# im2col matrices of 14M elements)
MIN_WEIGHT_ELEMENTS = int(os.environ.get("TORCH_MLIR_EAGER_PREPACK_MIN_WEIGHT", 1 << 18))
MAX_IM2COL_ELEMENTS = int(os.environ.get("TORCH_MLIR_EAGER_PREPACK_MAX_IM2COL", 1 << 23))
_CHANNELS_LAST = (0, 2, 3, 1)


def _tile() -> int:
    """The mmt4d tile (M0 = N0; K0 = 1) IREE's data tiling picks for float32 on this CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return 8
    return 16 if " avx512f" in flags else 8


TILE = _tile()


class Eligible(NamedTuple):
    index: int  # the weight's position among the kernel's inputs
    preferred: bool  # measured faster than IREE's own convolution (else: only if that fails)


def packed_input_of(recipe, plan) -> Eligible | None:
    """Whether (and how) this path serves `recipe`: None when it is not a plain float32 2-D
    convolution on an llvm-cpu target."""
    if recipe.name not in CONVOLUTIONS or not enabled(recipe.flags):
        return None
    specs = recipe.specs
    if len(plan.out_specs) != 1 or plan.out_specs[0].numel == 0 or plan.writes \
            or len(plan.live_inputs) != len(specs):
        return None
    a = convolution_args(recipe)
    if a is None or a.transposed or a.groups != 1 or any(a.output_padding):
        return None
    xs, ws, out = specs[a.x], specs[a.w], plan.out_specs[0]
    rank = 3 if a.unbatched else 4
    if len(xs.shape) != rank or len(ws.shape) != 4 or len(out.shape) != rank:
        return None
    if any(s.dtype is not torch.float32 for s in (xs, ws, out) + ((specs[a.b],) if a.b is not None else ())):
        return None
    layouts = (None,) if a.unbatched else (None, _CHANNELS_LAST)
    if ws.perm is not None or xs.perm not in layouts or out.perm not in layouts \
            or (a.b is not None and specs[a.b].perm is not None):
        return None
    im2col = out.numel // ws.shape[0] * (ws.numel // ws.shape[0])  # (N*OH*OW) x (C*KH*KW)
    batch = 1 if a.unbatched else xs.shape[0]
    preferred = ws.numel >= MIN_WEIGHT_ELEMENTS if batch == 1 else im2col <= MAX_IM2COL_ELEMENTS
    return Eligible(plan.live_inputs.index(a.w), preferred)


def enabled(flags) -> bool:
    return "--iree-hal-local-target-device-backends=llvm-cpu" in flags and ENABLED


# $TORCH_MLIR_EAGER_PREPACK=0 switches the path off (for A/B runs); both settings are part of
# the disk index's keys (settings()), so a kernel of the other form is not served from it
ENABLED = os.environ.get("TORCH_MLIR_EAGER_PREPACK", "1").strip().lower() not in ("0", "false", "no", "off")


def settings() -> str:
    return f"prepack={int(ENABLED)},{MIN_WEIGHT_ELEMENTS},{MAX_IM2COL_ELEMENTS},{TILE}"


# aten.convolution, and aten.conv2d as it comes under torch.inference_mode (which does not
# decompose it), its string-padding overload ('same', 'valid') included
CONVOLUTIONS = ("aten.convolution.default", "aten.conv2d.default", "aten.conv2d.padding")


class ConvArgs(NamedTuple):
    x: int  # tensor arguments: their positions among the recipe's inputs
    w: int
    b: int | None
    stride: list
    pad_lo: list  # padding before and after, per spatial dim
    pad_hi: list
    dilation: list
    transposed: bool
    output_padding: list
    groups: int
    unbatched: bool  # aten.conv2d of a (C, H, W) input


def convolution_args(recipe) -> ConvArgs | None:
    """The call's arguments, normalised; None when they are not of a form handled here."""
    args, kwargs = fill(recipe.template, list(range(len(recipe.specs))), ())
    args = list(args)
    if recipe.name == "aten.convolution.default":
        if kwargs or len(args) != 9:
            return None
        x, w, b, stride, padding, dilation, transposed, output_padding, groups = args
        unbatched = False
    else:  # aten.conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1)
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        if len(args) > 7 or set(kwargs) - set(names[len(args):]):
            return None
        bound = dict(zip(names, args), **kwargs)
        if "input" not in bound or "weight" not in bound:
            return None
        x, w = bound["input"], bound["weight"]
        b, stride, dilation, groups = (bound.get("bias"), bound.get("stride", 1), bound.get("dilation", 1),
                                       bound.get("groups", 1))
        padding = bound.get("padding", "valid" if recipe.name == "aten.conv2d.padding" else 0)
        transposed, output_padding = False, [0, 0]
        if not isinstance(x, int):
            return None
        unbatched = len(recipe.specs[x].shape) == 3
    if not (isinstance(x, int) and isinstance(w, int) and (b is None or isinstance(b, int))):
        return None
    stride, dilation, output_padding = _pair(stride), _pair(dilation), _pair(output_padding)
    if isinstance(padding, str):
        if padding == "valid":
            lo = hi = [0, 0]
        elif padding == "same" and len(recipe.specs[w].shape) == 4:  # as PyTorch: the odd one after
            total = [d * (k - 1) for d, k in zip(dilation, recipe.specs[w].shape[2:])]
            lo = [t // 2 for t in total]
            hi = [t - l for t, l in zip(total, lo)]
        else:
            return None
    else:
        lo = hi = _pair(padding)
    if any(len(v) != 2 for v in (stride, lo, hi, dilation, output_padding)):
        return None
    return ConvArgs(x, w, b, stride, lo, hi, dilation, bool(transposed), output_padding, groups, unbatched)


def _pair(v) -> list:
    """An int[2] argument as given: an int or a one-element list stands for both dims."""
    if isinstance(v, int):
        return [v, v]
    return list(v) * 2 if len(v) == 1 else list(v)


def module_text(recipe, plan) -> str:
    """The linalg module of a convolution `packed_input_of` accepts: `main` and `pack`."""
    specs = recipe.specs
    a = convolution_args(recipe)
    b = a.b
    xs, ws, out = specs[a.x], specs[a.w], plan.out_specs[0]
    n, c, h, wd = (1,) + tuple(xs.shape) if a.unbatched else xs.shape
    o, _, kh, kw = ws.shape
    (sh, sw), (dh, dw) = a.stride, a.dilation
    (ph, pw), (qh, qw) = a.pad_lo, a.pad_hi
    oh, ow = out.shape[-2], out.shape[-1]
    t = plan.packed[1]
    m, k = n * oh * ow, kh * kw * c
    m1, n1 = -(-m // t), -(-o // t)
    hp, wp = h + ph + qh, wd + pw + qw
    f = "f32"

    def ty(*dims):
        return "tensor<" + "x".join(str(d) for d in dims) + f"x{f}>"

    lines = [
        f"#im2col_in = affine_map<(n, oh, ow, kh, kw, c) -> (n, oh * {sh} + kh * {dh}, ow * {sw} + kw * {dw}, c)>",
        "#im2col_out = affine_map<(n, oh, ow, kh, kw, c) -> (n, oh, ow, kh, kw, c)>",
        "#bias_in = affine_map<(m, o) -> (o)>",
        "#ident2 = affine_map<(m, o) -> (m, o)>",
        f"func.func @pack(%w: {ty(o, c, kh, kw)}) -> {ty(n1, k, t, 1)} {{",
        f"  %zero = arith.constant 0.0 : {f}",
        f"  %te = tensor.empty() : {ty(o, kh, kw, c)}",
        f"  %wt = linalg.transpose ins(%w : {ty(o, c, kh, kw)}) outs(%te : {ty(o, kh, kw, c)}) permutation = [0, 2, 3, 1]",
        f"  %wk = tensor.collapse_shape %wt [[0], [1, 2, 3]] : {ty(o, kh, kw, c)} into {ty(o, k)}",
        f"  %pe = tensor.empty() : {ty(n1, k, t, 1)}",
        f"  %p = linalg.pack %wk padding_value(%zero : {f}) inner_dims_pos = [0, 1] inner_tiles = [{t}, 1] "
        f"into %pe : {ty(o, k)} -> {ty(n1, k, t, 1)}",
        f"  return %p : {ty(n1, k, t, 1)}",
        "}",
    ]
    bias_arg = f", %b: {ty(o)}" if b is not None else ""
    out_shape = (n, o, oh, ow) if out.perm is None else (n, oh, ow, o)
    result_shape = (o, oh, ow) if a.unbatched else out_shape
    lines += [
        f"func.func @main(%x: {ty(*xs.physical_shape)}, %wp: {ty(n1, k, t, 1)}{bias_arg}) -> {ty(*result_shape)} {{",
        f"  %zero = arith.constant 0.0 : {f}",
    ]
    if a.unbatched:  # (C, H, W) as (1, C, H, W)
        lines += [f"  %x4 = tensor.expand_shape %x [[0, 1], [2], [3]] output_shape [1, {c}, {h}, {wd}] : "
                  f"{ty(c, h, wd)} into {ty(1, c, h, wd)}"]
    else:
        lines += [f"  %x4 = tensor.cast %x : {ty(*xs.physical_shape)} to {ty(*xs.physical_shape)}"]
    if xs.perm is None:  # NCHW -> NHWC: the gather then reads contiguous channels
        lines += [f"  %xe = tensor.empty() : {ty(n, h, wd, c)}",
                  f"  %xt = linalg.transpose ins(%x4 : {ty(n, c, h, wd)}) outs(%xe : {ty(n, h, wd, c)}) permutation = [0, 2, 3, 1]"]
    else:
        lines += [f"  %xt = tensor.cast %x4 : {ty(n, h, wd, c)} to {ty(n, h, wd, c)}"]
    lines += [
        f"  %xp = tensor.pad %xt low[0, {ph}, {pw}, 0] high[0, {qh}, {qw}, 0] {{",
        "  ^bb0(%i0: index, %i1: index, %i2: index, %i3: index):",
        f"    tensor.yield %zero : {f}",
        f"  }} : {ty(n, h, wd, c)} to {ty(n, hp, wp, c)}",
    ]
    # the rows and columns the windows reach: a padded input wider than that trips MLIR's
    # folding of unit dims in the gather (`ow*s + kw` becomes `kw` when OW is 1, which must then
    # span the whole width), so the rest is sliced off
    need_h, need_w = (oh - 1) * sh + (kh - 1) * dh + 1, (ow - 1) * sw + (kw - 1) * dw + 1
    if (need_h, need_w) != (hp, wp):
        lines += [f"  %xw = tensor.extract_slice %xp[0, 0, 0, 0] [{n}, {need_h}, {need_w}, {c}] [1, 1, 1, 1] : "
                  f"{ty(n, hp, wp, c)} to {ty(n, need_h, need_w, c)}"]
        hp, wp = need_h, need_w
    else:
        lines += [f"  %xw = tensor.cast %xp : {ty(n, hp, wp, c)} to {ty(n, hp, wp, c)}"]
    lines += [
        f"  %ce = tensor.empty() : {ty(n, oh, ow, kh, kw, c)}",
        "  %col = linalg.generic {indexing_maps = [#im2col_in, #im2col_out], iterator_types = "
        "[\"parallel\", \"parallel\", \"parallel\", \"parallel\", \"parallel\", \"parallel\"]}",
        f"      ins(%xw : {ty(n, hp, wp, c)}) outs(%ce : {ty(n, oh, ow, kh, kw, c)}) {{",
        f"  ^bb0(%a: {f}, %unused: {f}):",
        f"    linalg.yield %a : {f}",
        f"  }} -> {ty(n, oh, ow, kh, kw, c)}",
        f"  %lhs = tensor.collapse_shape %col [[0, 1, 2], [3, 4, 5]] : {ty(n, oh, ow, kh, kw, c)} into {ty(m, k)}",
        f"  %le = tensor.empty() : {ty(m1, k, t, 1)}",
        f"  %lp = linalg.pack %lhs padding_value(%zero : {f}) inner_dims_pos = [0, 1] inner_tiles = [{t}, 1] "
        f"into %le : {ty(m, k)} -> {ty(m1, k, t, 1)}",
        f"  %ae = tensor.empty() : {ty(m1, n1, t, t)}",
        f"  %af = linalg.fill ins(%zero : {f}) outs(%ae : {ty(m1, n1, t, t)}) -> {ty(m1, n1, t, t)}",
        f"  %mm = linalg.mmt4d ins(%lp, %wp : {ty(m1, k, t, 1)}, {ty(n1, k, t, 1)}) outs(%af : {ty(m1, n1, t, t)}) "
        f"-> {ty(m1, n1, t, t)}",
        f"  %ue = tensor.empty() : {ty(m, o)}",
        f"  %u = linalg.unpack %mm inner_dims_pos = [0, 1] inner_tiles = [{t}, {t}] into %ue : "
        f"{ty(m1, n1, t, t)} -> {ty(m, o)}",
    ]
    result = "%u"
    if b is not None:
        lines += [
            "  %biased = linalg.generic {indexing_maps = [#ident2, #bias_in, #ident2], "
            "iterator_types = [\"parallel\", \"parallel\"]}",
            f"      ins(%u, %b : {ty(m, o)}, {ty(o)}) outs(%ue : {ty(m, o)}) {{",
            f"  ^bb0(%v: {f}, %bv: {f}, %unused: {f}):",
            f"    %s = arith.addf %v, %bv : {f}",
            f"    linalg.yield %s : {f}",
            f"  }} -> {ty(m, o)}",
        ]
        result = "%biased"
    if out.perm is None:  # (N*OH*OW, O) -> (N, O, OH, OW)
        lines += [
            f"  %r3 = tensor.expand_shape {result} [[0, 1], [2]] output_shape [{n}, {oh * ow}, {o}] : "
            f"{ty(m, o)} into {ty(n, oh * ow, o)}",
            f"  %re = tensor.empty() : {ty(n, o, oh * ow)}",
            f"  %rt = linalg.transpose ins(%r3 : {ty(n, oh * ow, o)}) outs(%re : {ty(n, o, oh * ow)}) permutation = [0, 2, 1]",
            f"  %r = tensor.expand_shape %rt [[0], [1], [2, 3]] output_shape [{n}, {o}, {oh}, {ow}] : "
            f"{ty(n, o, oh * ow)} into {ty(n, o, oh, ow)}",
        ]
    else:  # channels-last: (N*OH*OW, O) is already (N, OH, OW, O)
        lines += [f"  %r = tensor.expand_shape {result} [[0, 1, 2], [3]] output_shape [{n}, {oh}, {ow}, {o}] : "
                  f"{ty(m, o)} into {ty(n, oh, ow, o)}"]
    if a.unbatched:
        lines += [f"  %r3d = tensor.collapse_shape %r [[0, 1], [2], [3]] : {ty(*out_shape)} into {ty(o, oh, ow)}",
                  f"  return %r3d : {ty(o, oh, ow)}", "}", ""]
    else:
        lines += [f"  return %r : {ty(*out_shape)}", "}", ""]
    return "\n".join(lines)


# ---- the packed weights ---------------------------------------------------------------------------
_PACKED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # DeviceStorage -> {geometry: (version, packed)}
MAX_VIEWS_PER_STORAGE = 4  # packed views kept per storage (a weight is one; slices of one buffer, more)
_LOCK = threading.Lock()


def input_buffers(kernel, tensors) -> list:
    """The kernel's input buffers for its input tensors: the weight packed, the others dense."""
    from .buffers import dense_buffer

    return [packed_weight(kernel, t) if i == kernel.packed_input else dense_buffer(t) for i, t in enumerate(tensors)]


def packed_weight(kernel, weight):
    """The packed form of `weight` (a TorchMLIRTensor) for `kernel`, packed by its `pack`
    function on first use and after every write to the weight's storage."""
    storage = weight._storage_ref
    geometry = (weight._spec, weight.storage_offset(), kernel.pack_tile)
    # the version is read before the buffer: a write from another thread in between makes the
    # packing look older than it is (a repack on the next call), never newer (a stale weight)
    version = storage.version
    with _LOCK:
        held = _PACKED.get(storage)
        hit = held.get(geometry) if held is not None else None
        if hit is not None and hit[0] == version:
            held.move_to_end(geometry)
            return hit[1]
    from .buffers import dense_buffer

    packed = kernel.pack(dense_buffer(weight))
    STATS.weight_packed()
    with _LOCK:
        held = _PACKED.get(storage)
        if held is None:
            held = _PACKED[storage] = OrderedDict()
        for g in [g for g, (v, _) in held.items() if v != storage.version]:
            del held[g]  # stale: the storage was written since
        held[geometry] = (version, packed)
        while len(held) > MAX_VIEWS_PER_STORAGE:  # many views of one storage: the least recently used go
            held.popitem(last=False)
    return packed


def forget_all():
    """Drop every packed weight (clear_kernel_cache)."""
    with _LOCK:
        _PACKED.clear()
