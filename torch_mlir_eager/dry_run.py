"""Dry runs, and precompile: build every kernel a call needs, in parallel, before the call runs.

    torch_mlir_eager.precompile(model, example_input)

The call runs once *dry*: its inputs become `DryTensor`s, device tensors with metadata and no
data. Every op on them takes the ordinary path up to the kernel key (keys, layouts, bounds
probes, scalars), submits each unknown key to the compile workers, and makes its results on
fake CPU tensors (as the workers plan), without touching the device. Then precompile waits for the workers,
reporting progress. The real call that follows finds its kernels in the cache.

A dry run stops early at an op whose result depends on values (`.item()`, `nonzero`, a copy
to the host): the kernels found up to there are built, the rest compile when the real call
reaches them.
"""

from __future__ import annotations

import sys
import time

import torch
from torch.utils._pytree import tree_flatten, tree_map

from . import bounds, compile_service, views
from .buffers import gather_of, layout_recipe, scatter_of
from .flat import flat_call
from .kernel_cache import CACHE, Fallback, Pending
from .keys import abstract
from .ops import MUTATION, NATIVE, VIEW, classify
from .tensor import DeviceStorage, TorchMLIRTensor


class DryRunStop(Exception):
    """The dry run reached an op whose result depends on values."""


class DryTensor(TorchMLIRTensor):
    """A device tensor with metadata and no data, for dry runs."""

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _dry_dispatch(func, args, kwargs or {})


class _DryRun:
    def __init__(self):
        from torch._subclasses.fake_tensor import FakeTensorMode

        self.submitted: dict = {}  # key -> (recipe, scalars, device)
        self.fake_mode = FakeTensorMode(allow_non_fake_inputs=False)

    def want(self, key, recipe, scalars, device):
        if key in self.submitted or CACHE.get(key) is not None:
            return
        self.submitted[key] = (recipe, scalars, device)
        compile_service.build_in_background(recipe, scalars, device)


_run: _DryRun | None = None

_VALUE_READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default}


def _dry_dispatch(func, args, kwargs):
    kind = classify(func)
    if func in _VALUE_READS:
        raise DryRunStop(f"{kind.name} reads values")
    if func is torch.ops.aten._to_copy.default and str(kwargs.get("device", "")).startswith("cpu"):
        raise DryRunStop("a copy to the host reads values")
    if kind.kind not in (VIEW, NATIVE) and not kind.inplace_view:
        _want_kernels(func, kind, args, kwargs)
    return _meta_results(func, kind, args, kwargs)


def _want_kernels(func, kind, args, kwargs):
    """Submit the kernels this call would run: its own, and the gathers, scatters and bounds
    probe around it."""
    call = abstract(func, kind, args, kwargs)
    if call.host_only or (kind.guard is not None and kind.guard.applies(call.tensors)):
        return
    device = call.device
    target = flat_call(call) or call  # its shape-generic kernel, when it has one (flat.py)
    _run.want(target.key, target.recipe(), target.scalars, device)
    for t in call.tensors:
        if isinstance(t, TorchMLIRTensor) and t.numel() and not t.covers_storage():
            _run.want(*layout_recipe(gather_of(t), t._storage_ref, t.dtype), (), device)
    if kind.kind == MUTATION:
        bound = dict(zip(kind.arg_names, args))
        bound.update(kwargs)
        for name in kind.written:
            for t in tree_flatten(bound.get(name))[0]:
                if isinstance(t, TorchMLIRTensor) and t.numel() and not t.covers_storage():
                    _run.want(*layout_recipe(scatter_of(t), t._storage_ref, t.dtype), (), device)
    if kind.bounds:
        checks = [c for c in bounds.checks_of(kind.bounds, kind.arg_names, args, kwargs)
                  if isinstance(c.tensor, TorchMLIRTensor)]
        if checks:
            _run.want(*bounds.probe_recipe(checks, device), (), device)


def _meta_results(func, kind, args, kwargs):
    """The call's results, with the metadata PyTorch's CPU kernels give (from fake CPU tensors,
    as the compile workers plan; meta kernels disagree on some strides): views share their
    base's storage, inputs returned (in-place ops) are themselves, anything else is a new dry
    tensor."""
    originals = {}  # id(fake) -> the device tensor it stands for
    fakes = {}  # id(device tensor) -> its fake

    def to_fake(x):
        if isinstance(x, TorchMLIRTensor):
            dtype = views._proxy_dtype(x.dtype)
            base = torch.empty((x._storage_ref.nbytes // dtype.itemsize,), dtype=dtype)
            f = base.as_strided(x.shape, x.stride(), x.storage_offset())
            originals[id(f)] = x
            fakes[id(x)] = f
            return f
        if isinstance(x, torch.device) and x.type == "iree":
            return torch.device("cpu")
        return x

    try:
        with _run.fake_mode:
            out = func(*tree_map(to_fake, args), **tree_map(to_fake, kwargs))
    except Exception as e:  # a data-dependent result, or an op fake tensors cannot run
        raise DryRunStop(f"{kind.name}: {type(e).__name__}: {e}".splitlines()[0]) from None
    device = next(t for t in tree_flatten((args, kwargs))[0] if isinstance(t, TorchMLIRTensor))._storage_ref.device
    base = next((a for a in tree_flatten(args)[0] if isinstance(a, TorchMLIRTensor)), None)
    fake_base = fakes.get(id(base)) if base is not None else None

    def wrap(m):
        if not isinstance(m, torch.Tensor):
            return m
        original = originals.get(id(m))
        if original is not None:
            if kind.inplace_view and not isinstance(original, DryTensor):
                raise DryRunStop(f"{kind.name} would change a real tensor's metadata")
            return original
        dtype = base.dtype if base is not None and m.dtype == views._proxy_dtype(base.dtype) else m.dtype
        if kind.kind == VIEW and fake_base is not None and m.untyped_storage()._cdata == fake_base.untyped_storage()._cdata:
            storage = base._storage_ref  # a view (reshape and contiguous may give copies)
        else:
            extent = 1 + sum((s - 1) * st for s, st in zip(m.shape, m.stride())) + m.storage_offset() if m.numel() else 0
            storage = DeviceStorage(device, extent * m.element_size(), None)
        return DryTensor._make(storage, dtype, tuple(m.shape), tuple(m.stride()), m.storage_offset())

    return tree_map(wrap, out)


def _dry(x):
    """A dry stand-in for an input: CPU tensors and device tensors alike."""
    if isinstance(x, torch.Tensor) and not isinstance(x, DryTensor):
        from .device import get_device

        device = x._storage_ref.device if isinstance(x, TorchMLIRTensor) else get_device()
        storage = DeviceStorage(device, x.untyped_storage().nbytes() if not isinstance(x, TorchMLIRTensor) else x._storage_ref.nbytes, None)
        stride = tuple(x.stride()) if isinstance(x, TorchMLIRTensor) else _device_strides(x)
        offset = x.storage_offset() if isinstance(x, TorchMLIRTensor) else 0
        if not isinstance(x, TorchMLIRTensor):
            storage.nbytes = x.numel() * x.element_size()
        return DryTensor._make(storage, x.dtype, tuple(x.shape), stride, offset, requires_grad=x.requires_grad)
    return x


def _device_strides(x):
    from .tensor import device_strides

    return device_strides(x)


def precompile(fn_or_module, *example_inputs, progress: bool = True, **example_kwargs) -> dict:
    """Build every kernel that `fn_or_module(*example_inputs, **example_kwargs)` needs, in
    parallel on the compile workers, without running it on the device. The inputs may be CPU
    or device tensors (only their metadata is used); a module's parameters must already be on
    the device (`to_device`). Returns what was found and built:
    {"kernels", "compiled", "loaded", "failed", "seconds", "stopped_at"}."""
    global _run
    start = time.perf_counter()
    _run = _DryRun()
    stopped_at = None
    try:
        with torch.no_grad() if not any(getattr(x, "requires_grad", False) for x in example_inputs) else _nothing():
            fn_or_module(*tree_map(_dry, example_inputs), **tree_map(_dry, example_kwargs))
    except DryRunStop as e:
        stopped_at = str(e)
    finally:
        run, _run = _run, None
    results = _wait(run, progress)
    # keys whose op needs its scalars baked in lead to a second key: build those too
    for key, (recipe, scalars, device) in list(run.submitted.items()):
        if results.get(key) is compile_service.STATIC_SCALARS and scalars:
            static = compile_service.static_key_of(key, scalars)
            if CACHE.get(static) is None:
                baked = _baked(recipe, scalars, static)
                run.submitted[static] = (baked, (), device)
                compile_service.build_in_background(baked, (), device)
    results.update(_wait(run, progress))
    kernels = [e for e in results.values() if e is not compile_service.STATIC_SCALARS]
    summary = {
        "kernels": len(kernels),
        "compiled": sum(1 for e in kernels if not isinstance(e, Fallback) and not getattr(e, "from_disk", False)),
        "loaded": sum(1 for e in kernels if getattr(e, "from_disk", False)),
        "failed": sum(1 for e in kernels if isinstance(e, Fallback)),
        "seconds": time.perf_counter() - start,
        "stopped_at": stopped_at,
    }
    if progress:
        print(f"precompile: {summary['kernels']} kernels ({summary['compiled']} compiled, {summary['loaded']} "
              f"from the disk cache, {summary['failed']} falling back) in {summary['seconds']:.1f} s"
              + (f"; the dry run stopped at {stopped_at}" if stopped_at else ""), file=sys.stderr)
    return summary


def _baked(recipe, scalars, key):
    from .recipe import Slot, fill

    template = fill(recipe.template, [Slot(i) for i in range(len(recipe.specs))], scalars)
    return type(recipe)(recipe.name, recipe.func, template, recipe.specs, recipe.driver, recipe.flags, key)


def _wait(run, progress) -> dict:
    """Wait for the submitted builds; {key: entry}."""
    results = {}
    total = len(run.submitted)
    last = 0.0
    while True:
        pending = 0
        for key in run.submitted:
            entry = CACHE.get(key)
            if isinstance(entry, Pending) and not entry.future.done():
                pending += 1
            else:
                results[key] = entry.future.result() if isinstance(entry, Pending) else entry
        if pending == 0:
            return results
        now = time.perf_counter()
        if progress and now - last > 2.0:
            print(f"precompile: {total - pending}/{total} kernels ready", file=sys.stderr)
            last = now
        time.sleep(0.05)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
