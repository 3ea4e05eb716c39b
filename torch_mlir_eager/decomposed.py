"""Eager decompositions: before an op falls back to native PyTorch, run its decomposition
through dispatch, so that each part compiles (and caches) on its own.

An op gets here when it has no lowering (its build failed at import, lower or compile), or when
it is a fused op that no compiler lowers: `nn.TransformerEncoderLayer` in eval mode under
`no_grad` reaches `aten._transformer_encoder_layer_fwd`, and `nn.MultiheadAttention`
`aten._native_multi_head_attention`. The decompositions come from this module (the fused ops)
or PyTorch's table. The outer call has no kernel and no host round trip of its own: it counts as
a metadata call, its parts as they run, and `stats()["decomposed"]` lists it.
"""

from __future__ import annotations

import functools
import math
import threading

import torch
import torch.nn.functional as F

aten = torch.ops.aten

# build failures that a decomposition can route around (not: unsupported dtypes, guards,
# bounds, validation verdicts, data-dependent shapes)
DECOMPOSABLE_STEPS = frozenset({"import", "lower", "compile", "crash", "timeout", "functionalize", "decompose"})


def native_multi_head_attention(query, key, value, embed_dim, num_head, qkv_weight, qkv_bias, proj_weight,
                                proj_bias, mask=None, need_weights=True, average_attn_weights=True,
                                mask_type=None):
    """aten._native_multi_head_attention: batch-first (B, L, E) self- or cross-attention with a
    boolean mask (True: masked out) of type 0 (L, S), 1 (B, S) key padding, or 2 (B, H, L, S)."""
    b, tgt, _ = query.shape
    src = key.shape[1]
    head = embed_dim // num_head
    if query is key and key is value:
        q, k, v = F.linear(query, qkv_weight, qkv_bias).chunk(3, dim=-1)
    else:
        wq, wk, wv = qkv_weight.chunk(3)
        bq, bk, bv = qkv_bias.chunk(3)
        q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)
    q = q.reshape(b, tgt, num_head, head).transpose(1, 2)
    k = k.reshape(b, src, num_head, head).transpose(1, 2)
    v = v.reshape(b, src, num_head, head).transpose(1, 2)
    scores = (q / math.sqrt(head)) @ k.transpose(-2, -1)  # (B, H, L, S)
    if mask is not None:
        if mask.dtype == torch.bool:
            if mask_type == 1:
                mask = mask.view(b, 1, 1, src)
            elif mask.dim() == 2:
                mask = mask.view(1, 1, tgt, src)
            scores = scores.masked_fill(mask, float("-inf"))
        else:
            scores = scores + (mask.view(b, 1, 1, src) if mask_type == 1 else mask)
    weights = torch.softmax(scores, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(b, tgt, embed_dim)
    out = F.linear(out, proj_weight, proj_bias)
    if not need_weights:
        return out, torch.empty(0, dtype=query.dtype, device=query.device)
    if average_attn_weights:
        weights = weights.mean(dim=1)
    return out, weights


def transformer_encoder_layer_fwd(src, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias,
                                  use_gelu, norm_first, eps, norm_weight_1, norm_bias_1, norm_weight_2,
                                  norm_bias_2, ffn_weight_1, ffn_bias_1, ffn_weight_2, ffn_bias_2, mask=None,
                                  mask_type=None):
    """aten._transformer_encoder_layer_fwd, as PyTorch's transformer.cpp computes it."""
    if src.numel() == 0:
        return src.clone()

    def norm(x, w, b):
        return F.layer_norm(x, (embed_dim,), w, b, eps)

    x = norm(src, norm_weight_1, norm_bias_1) if norm_first else src
    x = native_multi_head_attention(x, x, x, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias,
                                    mask, False, True, mask_type)[0]
    x = x + src
    if not norm_first:
        x = norm(x, norm_weight_1, norm_bias_1)
    residual = x
    if norm_first:
        x = norm(x, norm_weight_2, norm_bias_2)
    x = F.linear(x, ffn_weight_1, ffn_bias_1)
    x = F.gelu(x) if use_gelu else F.relu(x)
    x = F.linear(x, ffn_weight_2, ffn_bias_2) + residual
    if not norm_first:
        x = norm(x, norm_weight_2, norm_bias_2)
    return x


# Fused ops no compiler lowers: decomposed at once, without trying to compile them.
FUSED = {
    aten._native_multi_head_attention.default: native_multi_head_attention,
    aten._transformer_encoder_layer_fwd.default: transformer_encoder_layer_fwd,
}


@functools.lru_cache(maxsize=None)
def decomposition_for(func):
    """A decomposition to run eagerly for `func`, or None. Only decompositions into other aten
    ops: PyTorch's references (torch._refs) are written in prims, the same ops one level down.
    None for ops decompositions.py decomposes itself: PyTorch's decompositions of them give other
    numbers than its kernels."""
    if func in FUSED:
        return FUSED[func]
    from torch._decomp import decomposition_table

    from .decompositions import PROJECT_DECOMPOSITIONS

    if func in PROJECT_DECOMPOSITIONS:  # its kernel is this project's because PyTorch's decomposition
        return None                     # differs from its CPU kernel (NaN, inf, dtypes): native

    decomposition = decomposition_table.get(func)
    if decomposition is None or getattr(decomposition, "__module__", "").startswith("torch._refs"):
        return None
    return decomposition


_active = threading.local()


def run(func, args, kwargs):
    """The op's results from its decomposition, run through dispatch; None when that cannot
    be done (no decomposition, or it is already being decomposed on this thread)."""
    decomposition = decomposition_for(func)
    active = getattr(_active, "ops", None)
    if active is None:
        active = _active.ops = set()
    if decomposition is None or func in active:
        return None
    active.add(func)
    try:
        return decomposition(*args, **kwargs)
    finally:
        active.discard(func)
