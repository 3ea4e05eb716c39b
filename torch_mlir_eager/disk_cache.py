"""On-disk cache of compiled kernels (.vmfb) and of remembered compile failures.

Layout under the cache root::

    <root>/<k[:2]>/<k>.vmfb     compiled kernel      (k = entry_key(...), 64 hex chars)
    <root>/<k[:2]>/<k>.fail     remembered failure   (JSON payload)
    <root>/<k[:2]>/<k>.idx      index record: another key (e.g. op signature -> kernel key)
    <root>/size.lock            lock file serialising entry changes between processes; its
                                content is the size record (total bytes of the entries)
    <root>/stats.json           cumulative hit/miss counters of all processes
    <root>/stats.lock           lock file for updating stats.json

Every entry file is ``HEADER + payload``, the header holding a magic, the format version,
the payload length and the payload's sha256. A truncated, corrupted or foreign file is
detected on read, logged (logger ``torch_mlir_eager.disk_cache``), deleted and treated
as a miss. Writes go to a temporary file in the same directory, are fsync'ed and then
``os.replace``d into place, so readers only ever see a whole old entry or a whole new one,
and concurrent writers of one key (threads or processes) all end with a valid entry.

Size is bounded by ``max_bytes`` across every process sharing the root. Each change of
the entries (a write's rename, a deletion) happens under an exclusive ``flock`` on
``size.lock`` and updates the size record that file holds, so the record is the up-to-date
total of all processes' entries. A write that takes the total over ``max_bytes`` scans the
directory and deletes the entries with the oldest mtimes (a hit refreshes an entry's mtime)
until the total is at most 90% of ``max_bytes``, and resets the record to what the scan
found. An entry bigger than that 90% is not stored. A missing or unreadable record is
rebuilt by a scan. The record errs only upwards (a deletion from outside, a writer killed
between recording and renaming), which makes eviction come early and resynchronises it.
Measured with 5,000 entries: a put takes ~2-4 ms; scanning on every put made it ~75 ms.
Readers take no lock: an entry evicted while a reader has it open is still read whole (POSIX
keeps an unlinked file's data until it is closed), and one evicted before it is a miss.

Without ``fcntl`` (not POSIX) the lock covers only this process's threads and no record is
kept: every write takes the total from a scan. The bound then holds once writers stop (the
last write's scan sees every entry), but concurrent evictions may delete more than needed.

A caller whose kernel passes the checksum but fails to load reports it with
:meth:`DiskCache.discard`, which deletes the entry so the next get misses.

The key (:func:`entry_key`) covers the lowered module text, the compiler flags, the
versions of torch, torch-mlir, iree-base-compiler and iree-base-runtime, the format
version and, for flags that target the host CPU ("...=host"), the host CPU model/features,
so a cache directory shared between different machines never hands out a kernel built for
another CPU.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import platform
import struct
import tempfile
import threading
import time
import weakref
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

try:  # POSIX advisory locks for size.lock and stats.json; see the module docstring.
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DiskCache",
    "FORMAT_VERSION",
    "DEFAULT_MAX_BYTES",
    "CACHE_DIR_ENV",
    "CACHE_MAX_BYTES_ENV",
    "default_cache_dir",
    "default_max_bytes",
    "open_default_cache",
    "entry_key",
    "stack_versions",
]

logger = logging.getLogger("torch_mlir_eager.disk_cache")

FORMAT_VERSION = 1
DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB
CACHE_DIR_ENV = "TORCH_MLIR_EAGER_CACHE_DIR"
CACHE_MAX_BYTES_ENV = "TORCH_MLIR_EAGER_CACHE_MAX_BYTES"
_OFF_VALUES = {"off", "none", "0", "false", "no", "disable", "disabled"}

_KERNEL_MAGIC = b"TMEK"
_FAILURE_MAGIC = b"TMEF"
_INDEX_MAGIC = b"TMEI"
# magic, format version, payload length, sha256(payload)
_HEADER = struct.Struct("<4sIQ32s")
_KERNEL_EXT = ".vmfb"
_FAILURE_EXT = ".fail"
_INDEX_EXT = ".idx"
_ENTRY_EXTS = (_KERNEL_EXT, _FAILURE_EXT, _INDEX_EXT)
_TMP_PREFIX = ".tmp-"
_STATS_FILE = "stats.json"
_STATS_LOCK = "stats.lock"
_SIZE_LOCK = "size.lock"
_SIZE_RECORD_WIDTH = 20  # the size record: total bytes as 20 decimal digits
_STALE_TMP_S = 3600.0
_EVICT_TO = 0.9  # evict down to this fraction of max_bytes
_HEX = set("0123456789abcdef")
_STAT_FIELDS = (
    "hits",
    "misses",
    "writes",
    "evictions",
    "corrupt",
    "failure_hits",
    "failure_misses",
    "failure_writes",
    "index_hits",
    "index_misses",
)


# ---------------------------------------------------------------------------------------
# Configuration


def default_cache_dir() -> Path | None:
    """$TORCH_MLIR_EAGER_CACHE_DIR ("off" disables: None), else
    $XDG_CACHE_HOME/torch_mlir_eager, else ~/.cache/torch_mlir_eager."""
    env = os.environ.get(CACHE_DIR_ENV, "").strip()
    if env:
        if env.lower() in _OFF_VALUES:
            return None
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg:
        return Path(xdg).expanduser() / "torch_mlir_eager"
    return Path.home() / ".cache" / "torch_mlir_eager"


def _parse_size(text: str) -> int:
    t = text.strip().lower().replace("_", "")
    if t.endswith("ib"):
        t = t[:-2]
    elif t.endswith("b"):
        t = t[:-1]
    mult = 1
    for suffix, m in (("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30), ("t", 1 << 40)):
        if t.endswith(suffix):
            t, mult = t[:-1], m
            break
    value = int(float(t) * mult)
    if value < 0:
        raise ValueError(text)
    return value


def default_max_bytes() -> int:
    """$TORCH_MLIR_EAGER_CACHE_MAX_BYTES (an integer, or with a K/M/G suffix), else 1 GiB."""
    env = os.environ.get(CACHE_MAX_BYTES_ENV, "").strip()
    if not env:
        return DEFAULT_MAX_BYTES
    try:
        return _parse_size(env)
    except ValueError:
        logger.warning("ignoring $%s=%r: not a size; using %d", CACHE_MAX_BYTES_ENV, env,
                       DEFAULT_MAX_BYTES)
        return DEFAULT_MAX_BYTES


def open_default_cache() -> "DiskCache | None":
    """The cache at :func:`default_cache_dir` with :func:`default_max_bytes`, or None
    when $TORCH_MLIR_EAGER_CACHE_DIR=off."""
    root = default_cache_dir()
    if root is None:
        return None
    return DiskCache(root, default_max_bytes())


# ---------------------------------------------------------------------------------------
# Keys


def _dist_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not-installed"


@lru_cache(maxsize=1)
def _stack_versions_cached() -> tuple[tuple[str, str], ...]:
    return tuple(
        (name, _dist_version(name))
        for name in ("torch", "torch-mlir", "iree-base-compiler", "iree-base-runtime")
    )


def stack_versions() -> dict[str, str]:
    """Versions of the packages whose change invalidates compiled kernels."""
    return dict(_stack_versions_cached())


@lru_cache(maxsize=1)
def _host_cpu_fingerprint() -> str:
    """What LLVM's "host" CPU resolves from: model and feature flags (Linux), else the
    platform's description."""
    parts = [platform.machine(), platform.system()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            wanted = ("vendor_id", "cpu family", "model", "model name", "flags", "features",
                      "cpu part", "cpu implementer", "isa")
            seen = set()
            for line in f:
                if not line.strip():
                    if seen:
                        break  # first processor block is enough
                    continue
                k, _, v = line.partition(":")
                k = k.strip().lower()
                if k in wanted and k not in seen:
                    seen.add(k)
                    parts.append(f"{k}={' '.join(sorted(v.split())) if k in ('flags', 'features') else v.strip()}")
    except OSError:
        parts.append(platform.processor())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def entry_key(lowered_module_text: str, flags: Sequence[str]) -> str:
    """sha256 hex key of a compiled kernel: module text + flags + stack versions + format
    version (+ host CPU fingerprint when a flag targets "host")."""
    flags = [str(f) for f in flags]
    meta = {
        "format": FORMAT_VERSION,
        "versions": stack_versions(),
        "flags": flags,
    }
    if any(f.endswith("=host") for f in flags):
        meta["host_cpu"] = _host_cpu_fingerprint()
    h = hashlib.sha256()
    h.update(json.dumps(meta, sort_keys=True).encode("utf-8"))
    h.update(b"\0")
    h.update(lowered_module_text.encode("utf-8"))
    return h.hexdigest()


# ---------------------------------------------------------------------------------------
# Cache


def _header(magic: bytes, payload: bytes) -> bytes:
    return _HEADER.pack(magic, FORMAT_VERSION, len(payload), hashlib.sha256(payload).digest())


def _pack(magic: bytes, payload: bytes) -> bytes:
    return _header(magic, payload) + payload


def _store_size_record(lock_fd: int, total: int) -> None:
    os.pwrite(lock_fd, b"%0*d" % (_SIZE_RECORD_WIDTH, total), 0)


def _unpack(magic: bytes, blob: bytes) -> tuple[bytes | None, str]:
    """(payload, "") if ``blob`` is a valid entry, else (None, reason)."""
    if len(blob) < _HEADER.size:
        return None, f"truncated header ({len(blob)} bytes)"
    m, version, length, digest = _HEADER.unpack_from(blob)
    if m != magic:
        return None, f"bad magic {m!r}"
    if version != FORMAT_VERSION:
        return None, f"format version {version} (expected {FORMAT_VERSION})"
    payload = blob[_HEADER.size:]
    if len(payload) != length:
        return None, f"payload is {len(payload)} bytes, header says {length}"
    if hashlib.sha256(payload).digest() != digest:
        return None, "payload checksum mismatch"
    return payload, ""


def _chmod_readable(fd: int) -> None:
    # mkstemp makes 0600 files; entries are not secret, make them 0644 like other files.
    try:
        os.fchmod(fd, 0o644)
    except (OSError, AttributeError):
        pass


def _check_key(key: str) -> str:
    if not isinstance(key, str) or len(key) < 3 or not set(key) <= _HEX:
        raise ValueError(f"cache key must be a lowercase hex string, got {key!r}")
    return key


class DiskCache:
    """On-disk kernel cache; see the module docstring. Thread-safe and multi-process safe.

    ``root=None`` uses :func:`default_cache_dir` (a disabled, always-missing cache when
    that is "off"); ``max_bytes=None`` uses :func:`default_max_bytes`. I/O errors are
    logged and turn into misses / skipped writes: the cache never raises from get/put/discard.
    ``persist_stats`` adds this object's hit/miss counts to ``<root>/stats.json`` at
    process exit (or on :meth:`flush_stats`).
    """

    def __init__(self, root: Path | str | None = None, max_bytes: int | None = None, *,
                 persist_stats: bool = True):
        if root is None:
            root = default_cache_dir()
        self.root: Path | None = Path(root).expanduser() if root is not None else None
        self.enabled = self.root is not None
        self.max_bytes = default_max_bytes() if max_bytes is None else int(max_bytes)
        self._lock = threading.Lock()  # the counters
        self._size_lock = threading.Lock()  # this process's part of _size_locked()
        self._made_dirs: set[str] = set()
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self.evictions = 0
        self.corrupt = 0
        self.failure_hits = 0
        self.failure_misses = 0
        self.failure_writes = 0
        self.index_hits = 0
        self.index_misses = 0
        self._flushed = dict.fromkeys(_STAT_FIELDS, 0)
        self._write_failed_logged = False
        if self.enabled and persist_stats:
            # A weak reference: the cache may be dropped before exit.
            ref = weakref.ref(self)

            def _flush_at_exit():
                obj = ref()
                if obj is not None:
                    obj.flush_stats()

            atexit.register(_flush_at_exit)

    def __repr__(self):
        return f"DiskCache(root={str(self.root)!r}, max_bytes={self.max_bytes})"

    # --- paths ---------------------------------------------------------------------

    def _path(self, key: str, ext: str) -> Path:
        key = _check_key(key)
        return self.root / key[:2] / (key + ext)  # type: ignore[operator]

    def kernel_path(self, key: str) -> Path:
        """Where the kernel entry for ``key`` lives (it may not exist)."""
        return self._path(key, _KERNEL_EXT)

    # --- reading -------------------------------------------------------------------

    def _read(self, path: Path, magic: bytes) -> bytes | None:
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                blob = f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            logger.warning("cannot read cache entry %s: %s", path, e)
            return None
        payload, reason = _unpack(magic, blob)
        if payload is None:
            with self._lock:
                self.corrupt += 1
            logger.warning("discarding corrupt cache entry %s: %s", path, reason)
            try:
                with self._size_locked() as lock_fd:
                    # Delete only the file we read: a writer may just have replaced it.
                    now = os.stat(path)
                    if (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev):
                        self._unlink_entry(lock_fd, path, now.st_size)
            except OSError:
                pass
            return None
        try:
            os.utime(path)  # LRU: a hit makes the entry the newest
        except OSError:
            pass
        return payload

    def get(self, key: str) -> bytes | None:
        """The cached .vmfb for ``key``, or None (miss, or a corrupt entry, now deleted)."""
        if not self.enabled:
            return None
        payload = self._read(self._path(key, _KERNEL_EXT), _KERNEL_MAGIC)
        with self._lock:
            if payload is None:
                self.misses += 1
            else:
                self.hits += 1
        return payload

    def get_failure(self, key: str) -> dict | None:
        """The remembered failure for ``key`` ({"step", "message", "time", "versions"}),
        or None."""
        if not self.enabled:
            return None
        payload = self._read(self._path(key, _FAILURE_EXT), _FAILURE_MAGIC)
        record = None
        if payload is not None:
            try:
                record = json.loads(payload.decode("utf-8"))
                if not isinstance(record, dict):
                    record = None
            except (UnicodeDecodeError, json.JSONDecodeError):
                record = None
        with self._lock:
            if record is None:
                self.failure_misses += 1
            else:
                self.failure_hits += 1
        return record

    def get_index(self, key: str) -> dict | None:
        """The record stored by :meth:`put_index` under ``key``, or None."""
        if not self.enabled:
            return None
        payload = self._read(self._path(key, _INDEX_EXT), _INDEX_MAGIC)
        record = None
        if payload is not None:
            try:
                record = json.loads(payload.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                record = None
            if not isinstance(record, dict):
                record = None
        with self._lock:
            if record is None:
                self.index_misses += 1
            else:
                self.index_hits += 1
        return record

    # --- writing -------------------------------------------------------------------

    def _write(self, path: Path, blob: bytes) -> bool:
        if len(blob) > self._evict_target():
            logger.debug("not caching %s: %d bytes, more than %.0f%% of the cache's %d bytes",
                         path, len(blob), 100 * _EVICT_TO, self.max_bytes)
            return False
        d = path.parent
        tmp = None
        try:
            ds = str(d)
            if ds not in self._made_dirs:
                d.mkdir(parents=True, exist_ok=True)
                self._made_dirs.add(ds)
            try:
                fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=d)
            except FileNotFoundError:  # the shard was removed (clear() elsewhere): remake
                d.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=d)
            try:
                _chmod_readable(fd)
                with os.fdopen(fd, "wb") as f:
                    f.write(blob)
                    f.flush()
                    os.fsync(f.fileno())
                self._commit(tmp, path, len(blob))
                tmp = None
            finally:
                if tmp is not None:
                    try:
                        os.unlink(tmp)
                    except OSError:
                        pass
        except OSError as e:
            if not self._write_failed_logged:
                self._write_failed_logged = True
                logger.warning("cannot write cache entry %s: %s (further write errors are "
                               "logged at debug level)", path, e)
            else:
                logger.debug("cannot write cache entry %s: %s", path, e)
            return False
        return True

    def put(self, key: str, vmfb: bytes) -> None:
        """Store the .vmfb for ``key`` (atomically; replaces an existing entry)."""
        if not self.enabled:
            return
        if self._write(self._path(key, _KERNEL_EXT), _pack(_KERNEL_MAGIC, bytes(vmfb))):
            with self._lock:
                self.writes += 1

    def put_failure(self, key: str, step: str, message: str) -> None:
        """Remember that building ``key`` failed at ``step`` with ``message``."""
        if not self.enabled:
            return
        record = {
            "step": str(step),
            "message": str(message),
            "time": time.time(),
            "versions": stack_versions(),
        }
        payload = json.dumps(record).encode("utf-8")
        if self._write(self._path(key, _FAILURE_EXT), _pack(_FAILURE_MAGIC, payload)):
            with self._lock:
                self.failure_writes += 1

    def put_index(self, key: str, record: dict) -> None:
        """Record ``key`` -> ``record`` (a JSON object), e.g. from an op signature to the
        kernel entry it compiled to, so a new process finds the kernel without lowering the op
        again. Index records are not counted as kernel entries or kernel hits/misses, and are
        evicted like any entry."""
        if not self.enabled:
            return
        _check_key(key)
        payload = json.dumps(record, sort_keys=True).encode("utf-8")
        self._write(self._path(key, _INDEX_EXT), _pack(_INDEX_MAGIC, payload))

    def discard(self, key: str, vmfb: bytes) -> bool:
        """Delete the kernel entry for ``key`` if it still holds ``vmfb``: for a caller whose
        :meth:`get` returned a kernel that passed the checksum but fails to load. The next
        get misses, so the caller compiles again and puts the new kernel. An entry another
        process has meanwhile replaced with different bytes is kept. Returns whether an
        entry was deleted."""
        if not self.enabled:
            return False
        path = self._path(key, _KERNEL_EXT)
        expected = _header(_KERNEL_MAGIC, bytes(vmfb))
        try:
            with self._size_locked() as lock_fd:
                with open(path, "rb") as f:
                    if f.read(_HEADER.size) != expected:
                        return False
                    size = os.fstat(f.fileno()).st_size
                self._unlink_entry(lock_fd, path, size)
        except FileNotFoundError:
            return False
        except OSError as e:
            logger.warning("cannot discard cache entry %s: %s", path, e)
            return False
        logger.info("discarded cache entry %s: reported bad by its user", path)
        return True

    # --- size bound ----------------------------------------------------------------

    def _evict_target(self) -> int:
        return int(self.max_bytes * _EVICT_TO)

    @contextlib.contextmanager
    def _size_locked(self):
        """Hold the lock under which entries change: this process's threads by a thread
        lock, other processes by ``flock`` on <root>/size.lock. Yields that file's descriptor
        (the size record lives in it), or None without fcntl (no record is kept)."""
        with self._size_lock:
            if fcntl is None:
                yield None
                return
            lock_path = self.root / _SIZE_LOCK  # type: ignore[operator]
            try:
                lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # no root yet, or it was removed
                self.root.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
                lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
                yield lock_fd
            finally:
                os.close(lock_fd)  # releases the flock

    def _recorded_total(self, lock_fd: int) -> int:
        """The size record (the lock must be held), or when it is missing or unreadable,
        the total of a scan."""
        try:
            total = int(os.pread(lock_fd, _SIZE_RECORD_WIDTH, 0))
            if total >= 0:
                return total
        except ValueError:
            pass
        return self._scanned_total()

    def _scanned_total(self) -> int:
        return sum(size for _, _, size in self._scan())

    def _commit(self, tmp: str, path: Path, size: int) -> None:
        """Rename the written temp file ``tmp`` (``size`` bytes) to ``path``, then evict
        if the total is over the bound."""
        with self._size_locked() as lock_fd:
            if lock_fd is None:
                os.replace(tmp, path)
                total = self._scanned_total()
            else:
                try:
                    replaced = os.stat(path).st_size
                except FileNotFoundError:
                    replaced = 0
                before = self._recorded_total(lock_fd)
                total = before + size - replaced
                # The larger of the totals before and after the rename is recorded first, so
                # that a writer killed in between leaves the record too high (evicting
                # early), never too low (over the bound).
                _store_size_record(lock_fd, max(before, total))
                try:
                    os.replace(tmp, path)
                except OSError:
                    _store_size_record(lock_fd, before)
                    raise
                if total < before:
                    _store_size_record(lock_fd, total)
            if total > self.max_bytes:
                self._evict_locked(lock_fd, self._evict_target())

    def _unlink_entry(self, lock_fd: int | None, path: Path | str, size: int) -> None:
        """Delete the entry of ``size`` bytes at ``path`` (the lock must be held)."""
        if lock_fd is None:
            os.unlink(path)
            return
        total = self._recorded_total(lock_fd)  # before the unlink: a scan still counts it
        os.unlink(path)
        _store_size_record(lock_fd, total - size)

    def _scan(self):
        """(path, mtime, size) of every entry file; removes stale temp files."""
        out = []
        if not self.enabled:
            return out
        try:
            shards = list(os.scandir(self.root))
        except OSError:
            return out
        now = time.time()
        for shard in shards:
            if len(shard.name) != 2 or not set(shard.name) <= _HEX or not shard.is_dir():
                continue
            try:
                files = list(os.scandir(shard.path))
            except OSError:
                continue
            for e in files:
                name = e.name
                try:
                    st = e.stat()
                except OSError:
                    continue
                if name.endswith(_ENTRY_EXTS):
                    out.append((e.path, st.st_mtime, st.st_size))
                elif name.startswith(_TMP_PREFIX) and now - st.st_mtime > _STALE_TMP_S:
                    try:
                        os.unlink(e.path)  # left by a killed writer
                    except OSError:
                        pass
        return out

    def evict(self, target_bytes: int | None = None) -> int:
        """Delete least-recently-used entries until the total is at most ``target_bytes``
        (default 90% of max_bytes). Returns the number of entries deleted."""
        if not self.enabled:
            return 0
        if target_bytes is None:
            target_bytes = self._evict_target()
        with self._size_locked() as lock_fd:
            return self._evict_locked(lock_fd, target_bytes)

    def _evict_locked(self, lock_fd: int | None, target_bytes: int) -> int:
        entries = self._scan()
        total = sum(size for _, _, size in entries)
        removed = 0
        if total > target_bytes:
            entries.sort(key=lambda e: e[1])  # oldest mtime first
            for path, _, size in entries:
                if total <= target_bytes:
                    break
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass  # already gone: deleted by hand, or by a process without fcntl
                except OSError as ex:
                    logger.debug("cannot evict %s: %s", path, ex)
                    continue
                total -= size
                removed += 1
            if removed:
                logger.debug("evicted %d cache entries from %s", removed, self.root)
        if lock_fd is not None:
            _store_size_record(lock_fd, total)
        with self._lock:
            self.evictions += removed
        return removed

    # --- introspection ---------------------------------------------------------------

    def stats(self) -> dict:
        """This object's counters (since it was created)."""
        with self._lock:
            return {k: getattr(self, k) for k in _STAT_FIELDS}

    def read_persisted_stats(self) -> dict:
        """Cumulative counters in <root>/stats.json (all processes, flushed at exit)."""
        out = dict.fromkeys(_STAT_FIELDS, 0)
        if not self.enabled:
            return out
        try:
            data = json.loads((self.root / _STATS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return out
        if isinstance(data, dict):
            for k in _STAT_FIELDS:
                v = data.get(k)
                if isinstance(v, int) and v >= 0:
                    out[k] = v
            for k in ("since", "updated"):
                if isinstance(data.get(k), (int, float)):
                    out[k] = data[k]
        return out

    def flush_stats(self) -> None:
        """Add the counts not yet flushed to <root>/stats.json (atomic, file-locked)."""
        if not self.enabled:
            return
        with self._lock:
            current = {k: getattr(self, k) for k in _STAT_FIELDS}
            delta = {k: current[k] - self._flushed[k] for k in _STAT_FIELDS}
            if not any(delta.values()):
                return
            self._flushed = current
        try:
            self._update_stats_file(delta)
        except OSError as e:
            logger.debug("cannot update %s: %s", self.root / _STATS_FILE, e)

    def _update_stats_file(self, delta: Mapping[str, int] | None) -> None:
        """Read-modify-write of stats.json under a lock; ``delta=None`` resets it."""
        self.root.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        lock_fd = os.open(self.root / _STATS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
            now = time.time()
            if delta is None:
                data = dict.fromkeys(_STAT_FIELDS, 0)
                data["since"] = now
            else:
                data = self.read_persisted_stats()
                data.setdefault("since", now)
                for k, v in delta.items():
                    data[k] = data.get(k, 0) + v
            data["updated"] = now
            fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=self.root)
            try:
                _chmod_readable(fd)
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(data, f, indent=1, sort_keys=True)
                os.replace(tmp, self.root / _STATS_FILE)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        finally:
            os.close(lock_fd)  # releases the flock

    def info(self) -> dict:
        """Location, entry count, total bytes, remembered failures, limits and counters."""
        entries = self._scan()
        kernels = sum(1 for e in entries if e[0].endswith(_KERNEL_EXT))
        failures = sum(1 for e in entries if e[0].endswith(_FAILURE_EXT))
        total = sum(size for _, _, size in entries)
        return {
            "location": str(self.root) if self.root is not None else None,
            "enabled": self.enabled,
            "entries": kernels,
            "bytes": total,
            "failures": failures,
            "index_records": len(entries) - kernels - failures,
            "max_bytes": self.max_bytes,
            "format_version": FORMAT_VERSION,
            "versions": stack_versions(),
            "session": self.stats(),
            "cumulative": self.read_persisted_stats(),
        }

    def clear(self) -> int:
        """Delete every entry, failure, temp file and the stats. Only files this cache
        writes are touched (never a whole directory tree). Returns entries deleted."""
        if not self.enabled:
            return 0
        removed = 0
        with self._size_locked() as lock_fd:
            try:
                shards = list(os.scandir(self.root))
            except OSError:
                shards = []
            for shard in shards:
                if len(shard.name) != 2 or not set(shard.name) <= _HEX or not shard.is_dir():
                    continue
                try:
                    files = list(os.scandir(shard.path))
                except OSError:
                    continue
                for e in files:
                    n = e.name
                    if n.endswith(_ENTRY_EXTS) or n.startswith(_TMP_PREFIX):
                        try:
                            os.unlink(e.path)
                            if not n.startswith(_TMP_PREFIX):
                                removed += 1
                        except OSError:
                            pass
                try:
                    os.rmdir(shard.path)  # only if now empty
                except OSError:
                    pass
            self._made_dirs.clear()
            if lock_fd is not None:
                _store_size_record(lock_fd, 0)
            with self._lock:
                for k in _STAT_FIELDS:
                    setattr(self, k, 0)
                self._flushed = dict.fromkeys(_STAT_FIELDS, 0)
            try:
                if (self.root / _STATS_FILE).exists():
                    self._update_stats_file(None)
            except OSError as e:
                logger.debug("cannot reset stats: %s", e)
        return removed
