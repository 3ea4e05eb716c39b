"""Inspect or clear the on-disk kernel cache.

    python -m torch_mlir_eager.cache            # location, entries, size, failures, hits
    python -m torch_mlir_eager.cache --json     # the same as JSON
    python -m torch_mlir_eager.cache --clear    # delete every cached kernel and failure

The cache is the one the backend uses: $TORCH_MLIR_EAGER_CACHE_DIR (``off`` disables),
else $XDG_CACHE_HOME/torch_mlir_eager, else ~/.cache/torch_mlir_eager; --dir overrides.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .disk_cache import DiskCache, default_cache_dir, default_max_bytes


def _human(n: int) -> str:
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if x < 1024 or unit == "GiB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return f"{n} B"  # pragma: no cover


def _format(info: dict) -> str:
    if not info["enabled"]:
        return "torch_mlir_eager kernel cache: disabled ($TORCH_MLIR_EAGER_CACHE_DIR=off)"
    cum = info["cumulative"]
    lookups = cum["hits"] + cum["misses"]
    rate = f" ({100.0 * cum['hits'] / lookups:.1f}% hit rate)" if lookups else ""
    lines = [
        f"location:          {info['location']}",
        f"entries:           {info['entries']}",
        f"total size:        {_human(info['bytes'])} ({info['bytes']} bytes) "
        f"of {_human(info['max_bytes'])} max",
        f"failures:          {info['failures']} remembered compile failures",
        f"index records:     {info['index_records']}",
        f"hits:              {cum['hits']}",
        f"misses:            {cum['misses']}{rate}",
        f"writes:            {cum['writes']}",
        f"evictions:         {cum['evictions']}",
        f"corrupt entries:   {cum['corrupt']}",
        f"failure hits:      {cum['failure_hits']}",
        f"index hits:        {cum['index_hits']} (misses {cum['index_misses']})",
    ]
    if "since" in cum:
        lines.append(f"counting since:    {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(cum['since']))}")
    lines.append("versions:          " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m torch_mlir_eager.cache",
        description="Show or clear the torch_mlir_eager on-disk kernel cache.",
    )
    ap.add_argument("--clear", action="store_true", help="delete all cached kernels, failures and stats")
    ap.add_argument("--json", action="store_true", help="print the information as JSON")
    ap.add_argument("--dir", help="cache directory (default: the backend's)")
    args = ap.parse_args(argv)

    root = args.dir if args.dir else default_cache_dir()
    cache = DiskCache(root, default_max_bytes(), persist_stats=False)
    if not cache.enabled:
        info = cache.info()
        print(json.dumps(info, indent=2) if args.json else _format(info))
        return 0

    cleared = None
    if args.clear:
        cleared = cache.clear()
    info = cache.info()
    if args.json:
        if cleared is not None:
            info["cleared"] = cleared
        print(json.dumps(info, indent=2))
    else:
        if cleared is not None:
            print(f"cleared {cleared} entries (kernels, failures, index records) from {info['location']}")
        print(_format(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
