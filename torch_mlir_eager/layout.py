"""Strided views and dense device buffers.

IREE buffers are dense, with no strides. A kernel takes each tensor input as a dense buffer in
the tensor's *physical order*: the order of its dims from the largest stride to the smallest.
For a row-major tensor that is its logical shape; for a channels_last tensor it is (N, H, W, C),
and the kernel permutes it back to (N, C, H, W). A tensor whose strides are such a dense
permutation and that covers its whole storage is passed as the storage itself, with no copy.

Any other tensor (a slice, an expand, a gappy view) reaches a kernel through a *gather*: a
compiled kernel that reads the view's elements out of the flat storage into a dense buffer. A
write into such a view is a *scatter*: a compiled kernel that returns the flat storage with the
view's elements replaced. Both are ordinary cached kernels, keyed by the view's geometry, and
described by plain data (`LayoutOp`) so that they can be built anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def contiguous_strides(shape) -> tuple:
    """Row-major strides of `shape`, as PyTorch gives them (size-0/1 dims count as 1)."""
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(strides))


def is_row_major(size, stride) -> bool:
    """True when the strides are row-major contiguous (size-1 dims may have any stride)."""
    expect = contiguous_strides(size)
    return all(s == 1 or st == e for s, st, e in zip(size, stride, expect))


def physical_order(size, stride):
    """(perm, dense) of a tensor's geometry.

    `perm` lists the dims from the largest stride to the smallest (None when that is the
    logical order); `dense` is True when the strides are exactly the row-major strides of the
    permuted sizes: no gaps and no overlaps, so the elements fill one dense run of memory.
    """
    size, stride = tuple(size), tuple(stride)
    if is_row_major(size, stride):
        return None, True
    perm = tuple(sorted(range(len(size)), key=lambda d: (-stride[d], d)))
    phys = tuple(size[d] for d in perm)
    expect = contiguous_strides(phys)
    dense = all(size[d] == 1 or stride[d] == expect[i] for i, d in enumerate(perm))
    if not dense:
        return None, False
    return perm, True


def permute_geometry(size, stride, perm):
    """Sizes and strides in the order `perm` (identity when perm is None)."""
    if perm is None:
        return tuple(size), tuple(stride)
    return tuple(size[d] for d in perm), tuple(stride[d] for d in perm)


def inverse(perm) -> tuple:
    inv = [0] * len(perm)
    for i, d in enumerate(perm):
        inv[d] = i
    return tuple(inv)


def has_internal_overlap(size, stride) -> bool:
    """A zero stride over more than one element: PyTorch refuses to write such a tensor."""
    return any(st == 0 and s > 1 for s, st in zip(size, stride))


def overlaps_itself(size, stride) -> bool:
    """Whether elements share memory with no zero stride (`as_strided((3, 3), (1, 1))`), which
    PyTorch writes element by element. Conservative: a layout not shown free of overlap counts."""
    reach = 1  # elements spanned by the dims so far, from the smallest stride up
    for st, s in sorted((st, s) for s, st in zip(size, stride) if s > 1):
        if st == 0:
            return False  # has_internal_overlap
        if st < reach:
            return True
        reach += st * (s - 1)
    return False


# ---- gather and scatter --------------------------------------------------------------------------
def _flat_index(size, stride, offset):
    """int64 tensor of `size`: the storage position of each element of the view."""
    idx = torch.full((), offset, dtype=torch.int64)
    for dim, (s, st) in enumerate(zip(size, stride)):
        shape = [1] * len(size)
        shape[dim] = s
        idx = idx + (torch.arange(s, dtype=torch.int64) * st).view(shape)
    return idx


@dataclass(frozen=True)
class LayoutOp:
    """A gather (flat storage -> dense values of `size`) or a scatter ((flat storage, dense
    values of `size`) -> flat storage with the view's elements replaced), for the view
    (`size`, `stride`, `offset`) of a flat storage. Plain data: it names its kernel."""

    kind: str  # "gather" | "scatter"
    size: tuple
    stride: tuple
    offset: int

    @property
    def __name__(self) -> str:
        return f"{self.kind}{list(self.size)}{list(self.stride)}+{self.offset}"

    def __call__(self, flat, values=None):
        idx = _flat_index(self.size, self.stride, self.offset).reshape(-1)  # 1-D: a 0-d index reads a scalar
        if self.kind == "gather":
            return flat[idx].reshape(self.size)
        return torch.ops.aten.index_put.default(flat, [idx], values.reshape(-1))


def gather_op(size, stride, offset) -> LayoutOp:
    return LayoutOp("gather", tuple(size), tuple(stride), int(offset))


def scatter_op(size, stride, offset) -> LayoutOp:
    return LayoutOp("scatter", tuple(size), tuple(stride), int(offset))
