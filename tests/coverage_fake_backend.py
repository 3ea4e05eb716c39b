"""A stand-in for torch_mlir_eager's public API, used to test the coverage tool itself.

Every aten call runs natively on the unwrapped tensor; the bookkeeping pretends:
view ops are metadata, `sub` falls back (step "lower"), `neg` is wrong, `exp` raises,
everything else "compiles".
"""

import torch
from torch.utils._pytree import tree_map

_STATS = {}

VIEW_OPS = {"view", "_unsafe_view", "expand", "transpose", "permute", "t", "squeeze", "unsqueeze",
            "select", "slice", "alias", "as_strided", "detach", "_reshape_alias"}


def reset_stats():
    _STATS.clear()
    _STATS.update(compiled_calls=0, metadata_calls=0, fallback_calls=0, kernels_compiled=0,
                  compile_failures=0, compile_seconds=0.0, cache_hits=0, cache_misses=0,
                  validation_mismatches=0, fallbacks={})


def stats():
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in _STATS.items()}


reset_stats()


class TorchMLIRTensor(torch.Tensor):
    @staticmethod
    def __new__(cls, x, device=None):
        r = torch.Tensor._make_wrapper_subclass(cls, x.shape, strides=x.stride(), dtype=x.dtype,
                                                device=x.device, storage_offset=x.storage_offset())
        r.inner = x.detach().clone()
        return r

    def __init__(self, *a, **k):
        pass

    def cpu(self):
        return self.inner.clone()

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        full = str(func).replace("aten::", "aten.")
        if name in ("exp", "exp_"):
            raise RuntimeError("fake backend: exp is broken\nsecond line")
        if name.rstrip("_") == "sub":
            _STATS["fallback_calls"] += 1
            fb = _STATS["fallbacks"].setdefault(full, {"count": 0, "reason": "failed to legalize operation 'torch.aten.sub.Tensor'", "step": "lower"})
            fb["count"] += 1
        elif name in VIEW_OPS:
            _STATS["metadata_calls"] += 1
        else:
            _STATS["compiled_calls"] += 1
        uw = tree_map(lambda t: t.inner if isinstance(t, TorchMLIRTensor) else t, (args, kwargs))
        out = func(*uw[0], **uw[1])
        if name == "neg":
            out = out + 1
        if name.endswith("_") and out is uw[0][0]:
            return args[0]
        return tree_map(lambda t: TorchMLIRTensor(t) if isinstance(t, torch.Tensor) else t, out)
