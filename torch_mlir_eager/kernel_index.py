"""The disk index: from a dispatch key to everything needed to run it, so that a known key costs
a new process one file read and one module load, and no planning, tracing or lowering.

The disk cache (disk_cache.py) keeps compiled kernels keyed by their lowered module. The index,
keyed by the dispatch key, this package's source (every module, so that a change to how keys,
templates or plans are made never serves an old kernel) and the target flags, holds one of:

    {"kernel": <entry>, "plan": <OutputPlan>, "copy_inputs": [...], "runtime_scalars": bool,
     "probed": bool}                    probed: copy_inputs holds a first call's verdict
    {"fallback": [step, reason]}        a failure or a validation verdict: run natively
    {"static_scalars": true}            the op's scalars must be baked in (see compiler.py)
"""

from __future__ import annotations

import base64
import logging
import os
import pickle
import threading

from .recipe import loads

log = logging.getLogger("torch_mlir_eager")

_disk = None
_disk_opened = False
_disk_lock = threading.Lock()


def disk():
    """The process's disk cache, or None when it is off or cannot be opened."""
    global _disk, _disk_opened
    if not _disk_opened:
        with _disk_lock:
            if not _disk_opened:
                try:
                    from .disk_cache import open_default_cache

                    _disk = open_default_cache()
                except Exception as e:  # no cache is better than a broken op
                    log.warning("disk kernel cache disabled: %s", e)
                    _disk = None
                _disk_opened = True
    return _disk


def source_digest(here: str = os.path.dirname(__file__)) -> str:
    """A hash of every module of the package and of its guard list: whatever shapes keys,
    templates, decompositions and plans. Changing any of them makes a new index."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(os.listdir(here)):
        if name.endswith(".py") or name == "guards.json":
            h.update(name.encode())
            with open(os.path.join(here, name), "rb") as f:
                h.update(f.read())
    return h.hexdigest()


_SOURCE_DIGEST = None


def _stable(x) -> str:
    """A text for a key that is the same in every process."""
    if isinstance(x, (tuple, list)):
        return "(" + ",".join(_stable(v) for v in x) + ")"
    if isinstance(x, type):
        return x.__name__
    if callable(x) and hasattr(x, "__name__") and not type(x).__module__.startswith("torch"):
        return x.__name__
    return str(x)


def index_key(key, flags) -> str:
    global _SOURCE_DIGEST
    if _SOURCE_DIGEST is None:
        _SOURCE_DIGEST = source_digest()
    from .disk_cache import entry_key

    from .prepack import settings

    return entry_key(f"op-index\n{_stable(key)}\n{_SOURCE_DIGEST}\n{settings()}", list(flags))


def lookup(key, flags) -> dict | None:
    """The index record of `key`, with its plan unpickled; None when unknown."""
    d = disk()
    if d is None or key is None:
        return None
    record = d.get_index(index_key(key, flags))
    if record is None:
        return None
    if "kernel" in record:
        try:
            record["plan"] = loads(base64.b64decode(record["plan"]))
            record["vmfb"] = d.get(record["kernel"])
        except Exception:  # a record of another shape, or a lost kernel: unknown
            return None
        if record["vmfb"] is None:
            return None
    return record


def remember_kernel(key, flags, built) -> str | None:
    """Index a built kernel (storing its binary); returns its disk entry."""
    d = disk()
    if d is None or key is None:
        return None
    entry = built.entry
    if entry is None:  # not stored by the compile step (its module was not known there)
        entry = _kernel_entry(built.vmfb, flags)
        d.put(entry, built.vmfb)
    d.put_index(index_key(key, flags), {
        "kernel": entry,
        "plan": base64.b64encode(pickle.dumps(built.plan)).decode("ascii"),
        "copy_inputs": list(built.copy_inputs),
        "runtime_scalars": bool(built.runtime_scalars),
        "probed": bool(built.probed),
    })
    return entry


def _kernel_entry(vmfb: bytes, flags) -> str:
    import hashlib

    from .disk_cache import entry_key

    return entry_key("vmfb\n" + hashlib.sha256(vmfb).hexdigest(), list(flags))


def remember_fallback(key, flags, step: str, reason: str):
    """Record that `key` runs natively (a failure, a crash or a validation verdict)."""
    d = disk()
    if d is not None and key is not None:
        d.put_index(index_key(key, flags), {"fallback": [step, reason]})


def remember_static_scalars(key, flags):
    d = disk()
    if d is not None and key is not None:
        d.put_index(index_key(key, flags), {"static_scalars": True})


def forget(record):
    """Drop the binary of an index record that does not load, so that the kernel is compiled
    again (the rebuilt kernel's record then replaces this one)."""
    d = disk()
    if d is not None and "kernel" in record and record.get("vmfb") is not None:
        d.discard(record["kernel"], record["vmfb"])
