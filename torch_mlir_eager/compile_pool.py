"""Building kernels off the dispatching thread, blocking or in the background.

Tracing needs PyTorch's dispatch state as it is outside any __torch_dispatch__
(functionalization misbehaves when nested in one), so a build always runs on a pool thread.
`compiler.build` turns every failure into a `Fallback`; whatever still escapes it (a bug) is
turned into one here, so that a key never stays broken: the next call and every waiter get the
remembered fallback with its reason.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

from . import compiler
from .kernel_cache import CACHE, Fallback, Pending

_pool = None
_pool_lock = threading.Lock()
_background_lock = threading.Lock()  # orders a Pending before the entry that replaces it


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="tme-compile")
    return _pool


def _build(recipe) -> object:
    """Kernel | Fallback for `recipe`; never raises."""
    try:
        return compiler.build(recipe)
    except BaseException as e:  # noqa: BLE001 - a build must never break the caller
        fallback = Fallback("internal", f"{type(e).__name__}: {e}".splitlines()[0][:300])
        compiler.log.warning("%s: building its kernel failed unexpectedly (%s)", recipe.name, fallback.reason, exc_info=True)
        return fallback


def build_blocking(recipe):
    """The cache entry for `recipe.key`, building it (once across threads) when missing."""
    entry, _ = CACHE.get_or_build(recipe.key, lambda: _executor().submit(_build, recipe).result())
    return entry


def build_in_background(recipe):
    """Start building `recipe.key` unless it is known or building; its entry (Pending while it
    builds)."""
    with _background_lock:
        entry = CACHE.get(recipe.key)
        if entry is not None:
            return entry

        def job():
            result = _build(recipe)
            with _background_lock:  # after the Pending below is in place
                CACHE.set(recipe.key, result)
            return result

        pending = Pending(_executor().submit(job))
        CACHE.set(recipe.key, pending)
        return pending


def synchronize():
    """Wait for every background build to finish."""
    for _, entry in CACHE.entries():
        if isinstance(entry, Pending):
            entry.future.result()
