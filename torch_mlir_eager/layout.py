"""Strided views and dense device buffers.

IREE buffers are dense, with no strides. A tensor that is not exactly its storage in row-major
order (a transpose, a slice, an expand) reaches a kernel through a *gather*: a compiled kernel
that reads the view's elements out of the flat storage into a dense buffer. A write into such a
view is a *scatter*: a compiled kernel that returns the flat storage with the view's elements
replaced. Both are ordinary cached kernels, keyed by the view's geometry.
"""

from __future__ import annotations

import functools

import torch


def contiguous_strides(shape) -> tuple:
    """Row-major strides of `shape`, as PyTorch gives them (size-0/1 dims count as 1)."""
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(strides))


def _flat_index(size, stride, offset):
    """int64 tensor of `size`: the storage position of each element of the view."""
    idx = torch.full((), offset, dtype=torch.int64)
    for dim, (s, st) in enumerate(zip(size, stride)):
        shape = [1] * len(size)
        shape[dim] = s
        idx = idx + (torch.arange(s, dtype=torch.int64) * st).view(shape)
    return idx


@functools.lru_cache(maxsize=4096)
def gather_op(size: tuple, stride: tuple, offset: int):
    """flat storage -> dense tensor of `size` holding the view's elements."""

    def gather(flat):
        idx = _flat_index(size, stride, offset)
        return flat[idx.reshape(-1)].reshape(size)  # 1-D indices: a 0-d index would read a scalar

    gather.__name__ = gather.__qualname__ = f"gather{list(size)}{list(stride)}+{offset}"
    return gather


@functools.lru_cache(maxsize=4096)
def scatter_op(size: tuple, stride: tuple, offset: int):
    """(flat storage, dense values of `size`) -> flat storage with the view's elements replaced."""

    def scatter(flat, values):
        idx = _flat_index(size, stride, offset).reshape(-1)
        return torch.ops.aten.index_put.default(flat, [idx], values.reshape(-1))

    scatter.__name__ = scatter.__qualname__ = f"scatter{list(size)}{list(stride)}+{offset}"
    return scatter


def has_internal_overlap(size, stride) -> bool:
    return any(st == 0 and s > 1 for s, st in zip(size, stride))
