"""Tests of the on-disk kernel cache (torch_mlir_eager.disk_cache) and its CLI."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from torch_mlir_eager import disk_cache
from torch_mlir_eager.disk_cache import (
    DiskCache,
    default_cache_dir,
    entry_key,
    open_default_cache,
)

LOGGER = "torch_mlir_eager.disk_cache"
FLAGS = ["--iree-hal-target-device=local", "--iree-llvmcpu-target-cpu=host"]
MODULE_FILE = Path(disk_cache.__file__).resolve()

# Child processes load disk_cache.py by path (it has no package-relative imports), so
# they do not pay for importing the whole package (torch, the compiler) at start-up.
_CHILD_PRELUDE = textwrap.dedent(
    f"""
    import importlib.util, sys
    _spec = importlib.util.spec_from_file_location("disk_cache_child", {str(MODULE_FILE)!r})
    dc = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(dc)
    """
)


def run_child(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _CHILD_PRELUDE + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def key_of(name: str) -> str:
    return entry_key(f"module @{name} {{}}", FLAGS)


def entry_files(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("??/*") if p.suffix in (".vmfb", ".fail"))


# --------------------------------------------------------------------------------------


def test_roundtrip(tmp_path):
    cache = DiskCache(tmp_path, 1 << 20, persist_stats=False)
    k = key_of("a")
    assert cache.get(k) is None
    payload = os.urandom(5000)
    cache.put(k, payload)
    assert cache.get(k) == payload
    path = cache.kernel_path(k)
    assert path.parent.name == k[:2] and path.name == k + ".vmfb" and path.exists()
    assert cache.hits == 1 and cache.misses == 1 and cache.writes == 1
    # Overwrite keeps a single, valid entry.
    cache.put(k, b"xyz")
    assert cache.get(k) == b"xyz"
    info = cache.info()
    assert info["location"] == str(tmp_path)
    assert info["entries"] == 1 and info["failures"] == 0
    assert info["bytes"] == path.stat().st_size
    # No temp files left behind.
    assert not list(tmp_path.glob("??/.tmp-*"))


def test_entry_key_properties(monkeypatch):
    k = entry_key("module {}", FLAGS)
    assert len(k) == 64 and all(c in "0123456789abcdef" for c in k)
    assert entry_key("module {}", FLAGS) == k
    assert entry_key("module { }", FLAGS) != k
    assert entry_key("module {}", FLAGS + ["--iree-opt-level=O3"]) != k
    assert entry_key("module {}", list(reversed(FLAGS))) != k  # flag order matters to iree
    monkeypatch.setattr(disk_cache, "FORMAT_VERSION", disk_cache.FORMAT_VERSION + 1)
    assert entry_key("module {}", FLAGS) != k


def test_rejects_bad_keys(tmp_path):
    cache = DiskCache(tmp_path, 1 << 20, persist_stats=False)
    for bad in ("../../etc/passwd", "ABCDEF", "", "zz" * 32):
        with pytest.raises(ValueError):
            cache.put(bad, b"x")


def test_version_keyed_invalidation(tmp_path, monkeypatch):
    cache = DiskCache(tmp_path, 1 << 20, persist_stats=False)
    text = "module @m {}"
    k_old = entry_key(text, FLAGS)
    cache.put(k_old, b"old kernel")
    assert cache.get(entry_key(text, FLAGS)) == b"old kernel"

    real = disk_cache.stack_versions()
    bumped = dict(real, **{"iree-base-compiler": real["iree-base-compiler"] + ".post1"})
    monkeypatch.setattr(disk_cache, "stack_versions", lambda: dict(bumped))
    k_new = entry_key(text, FLAGS)
    assert k_new != k_old
    assert cache.get(k_new) is None  # a new compiler never gets the old kernel
    for name in ("torch", "torch-mlir", "iree-base-runtime"):
        other = dict(real, **{name: "0.0.0"})
        monkeypatch.setattr(disk_cache, "stack_versions", lambda o=other: dict(o))
        assert entry_key(text, FLAGS) not in (k_old, k_new)


def test_host_cpu_only_in_host_keys(monkeypatch):
    calls = []
    real = disk_cache._host_cpu_fingerprint

    def fake():
        calls.append(1)
        return real()

    monkeypatch.setattr(disk_cache, "_host_cpu_fingerprint", fake)
    entry_key("m", ["--iree-hal-target-device=cuda", "--iree-cuda-target=sm_80"])
    assert not calls
    entry_key("m", ["--iree-llvmcpu-target-cpu=host"])
    assert calls


def test_reuse_across_processes(tmp_path):
    k = key_of("cross")
    writer = run_child(
        """
        import hashlib
        c = dc.DiskCache(sys.argv[1], 1 << 20)
        data = bytes(range(256)) * 40
        c.put(sys.argv[2], data)
        print(hashlib.sha256(data).hexdigest())
        """,
        str(tmp_path),
        k,
    )
    assert writer.returncode == 0, writer.stderr
    reader = run_child(
        """
        import hashlib
        c = dc.DiskCache(sys.argv[1], 1 << 20)
        data = c.get(sys.argv[2])
        print(hashlib.sha256(data).hexdigest() if data is not None else "MISS")
        """,
        str(tmp_path),
        k,
    )
    assert reader.returncode == 0, reader.stderr
    assert reader.stdout.strip() == writer.stdout.strip()
    # Both children flushed their counters at exit.
    stats = DiskCache(tmp_path, 1 << 20, persist_stats=False).read_persisted_stats()
    assert stats["writes"] == 1 and stats["hits"] == 1


def _corrupt_cases():
    def truncate(p: Path):
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])

    def truncate_header(p: Path):
        p.write_bytes(p.read_bytes()[:10])

    def flip_payload_byte(p: Path):
        data = bytearray(p.read_bytes())
        data[-7] ^= 0x40
        p.write_bytes(bytes(data))

    def flip_magic(p: Path):
        data = bytearray(p.read_bytes())
        data[0] ^= 0xFF
        p.write_bytes(bytes(data))

    def wrong_format_version(p: Path):
        data = bytearray(p.read_bytes())
        data[4] ^= 0x01
        p.write_bytes(bytes(data))

    def append_garbage(p: Path):
        p.write_bytes(p.read_bytes() + b"junk")

    def empty(p: Path):
        p.write_bytes(b"")

    return [truncate, truncate_header, flip_payload_byte, flip_magic, wrong_format_version,
            append_garbage, empty]


@pytest.mark.parametrize("damage", _corrupt_cases(), ids=lambda f: f.__name__)
def test_corrupted_entry_recovery(tmp_path, caplog, damage):
    cache = DiskCache(tmp_path, 1 << 20, persist_stats=False)
    k = key_of("corrupt")
    cache.put(k, os.urandom(3000))
    path = cache.kernel_path(k)
    damage(path)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert cache.get(k) is None
    assert not path.exists(), "a corrupt entry must be deleted"
    records = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]
    assert records and "corrupt" in records[0].getMessage()
    assert cache.corrupt == 1 and cache.misses == 1 and cache.hits == 0
    # The slot is usable again.
    cache.put(k, b"fresh")
    assert cache.get(k) == b"fresh"


def test_corrupted_failure_record(tmp_path, caplog):
    cache = DiskCache(tmp_path, 1 << 20, persist_stats=False)
    k = key_of("failcorrupt")
    cache.put_failure(k, "compile", "boom")
    path = next(tmp_path.glob("??/*.fail"))
    path.write_bytes(path.read_bytes()[:-3])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert cache.get_failure(k) is None
    assert not path.exists()
    assert any(r.name == LOGGER for r in caplog.records)


def test_concurrent_writers_and_reader(tmp_path):
    """Two processes put the same key over and over (different valid payloads) while
    this process reads it: every read sees a whole entry, never a partial one."""
    k = key_of("race")
    n = 150
    payload_code = "bytes([{tag}]) * (20000 + {tag} * 7919)"
    code = f"""
        tag = int(sys.argv[3])
        c = dc.DiskCache(sys.argv[1], 1 << 30, persist_stats=False)
        data = {payload_code.format(tag="tag")}
        for _ in range(int(sys.argv[4])):
            c.put(sys.argv[2], data)
        print("done", c.writes)
    """
    expected = {bytes([t]) * (20000 + t * 7919) for t in (1, 2)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD_PRELUDE + textwrap.dedent(code),
             str(tmp_path), k, str(tag), str(n)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for tag in (1, 2)
    ]
    reader = DiskCache(tmp_path, 1 << 30, persist_stats=False)
    seen = set()
    deadline = time.monotonic() + 60
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            data = reader.get(k)
            if data is not None:
                assert data in expected, f"partial/invalid entry of {len(data)} bytes"
                seen.add(data[0])
    finally:
        outs = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.strip() == f"done {n}"
    assert reader.corrupt == 0
    final = reader.get(k)
    assert final in expected
    assert seen, "the reader never saw an entry"
    assert not list(tmp_path.glob("??/.tmp-*"))  # every temp file was renamed or removed


def test_concurrent_threads(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    cache = DiskCache(tmp_path, 1 << 30, persist_stats=False)
    keys = [key_of(f"t{i}") for i in range(40)]

    def work(i):
        k = keys[i % len(keys)]
        data = k.encode() * 50
        cache.put(k, data)
        got = cache.get(k)
        assert got == data
        return True

    with ThreadPoolExecutor(4) as ex:
        assert all(ex.map(work, range(200)))
    assert cache.writes == 200 and cache.hits == 200 and cache.corrupt == 0
    assert cache.info()["entries"] == len(keys)


def test_put_after_clear_elsewhere(tmp_path):
    a = DiskCache(tmp_path, 1 << 20, persist_stats=False)
    b = DiskCache(tmp_path, 1 << 20, persist_stats=False)
    k = key_of("again")
    a.put(k, b"1")
    assert b.clear() == 1
    a.put(k, b"2")  # a's shard directory is gone: recreated, not an error
    assert b.get(k) == b"2"


def test_eviction_lru(tmp_path):
    size = 1000
    entry_size = size + disk_cache._HEADER.size
    cache = DiskCache(tmp_path, int(entry_size * 3.5), persist_stats=False)
    ka, kb, kc, kd = (key_of(n) for n in "abcd")
    for k in (ka, kb, kc):
        cache.put(k, os.urandom(size))
    assert cache.evictions == 0 and cache.info()["entries"] == 3
    now = time.time()
    # Make the age order explicit (a < b < c), independent of the clock's resolution.
    for k, age in ((ka, 300), (kb, 200), (kc, 100)):
        os.utime(cache.kernel_path(k), (now - age, now - age))
    # A hit on the oldest entry makes it the most recently used ...
    assert cache.get(ka) is not None
    assert cache.kernel_path(ka).stat().st_mtime >= now - 1
    # ... so going over the limit evicts b, the least recently used, not a.
    cache.put(kd, os.urandom(size))
    assert cache.evictions == 1
    assert cache.get(kb) is None
    for k in (ka, kc, kd):
        assert cache.get(k) is not None, k
    assert cache.info()["bytes"] <= cache.max_bytes


def test_eviction_goes_below_limit(tmp_path):
    cache = DiskCache(tmp_path, 10_000, persist_stats=False)
    for i in range(30):
        cache.put(key_of(f"e{i}"), os.urandom(900))
    info = cache.info()
    assert info["bytes"] <= 10_000
    assert cache.evictions == 30 - info["entries"]
    assert cache.get(key_of("e29")) is not None  # the newest survives


def test_remembered_failures(tmp_path):
    cache = DiskCache(tmp_path, 1 << 20, persist_stats=False)
    k = key_of("bad")
    assert cache.get_failure(k) is None
    cache.put_failure(k, "iree-compile", "error: 'foo' op is not supported\nmore detail")
    rec = cache.get_failure(k)
    assert rec["step"] == "iree-compile"
    assert rec["message"].startswith("error: 'foo' op")
    assert rec["versions"] == disk_cache.stack_versions()
    assert cache.get(k) is None  # a failure is not a kernel
    info = cache.info()
    assert info["failures"] == 1 and info["entries"] == 0
    # Failures are found by another process too.
    child = run_child(
        "print(dc.DiskCache(sys.argv[1], 1 << 20).get_failure(sys.argv[2])['step'])",
        str(tmp_path), k,
    )
    assert child.stdout.strip() == "iree-compile", child.stderr
    assert cache.failure_writes == 1 and cache.failure_hits == 1


def test_index_records(tmp_path):
    cache = DiskCache(tmp_path, 1 << 20, persist_stats=False)
    kernel, op = key_of("kernel"), key_of("op-signature")
    assert cache.get_index(op) is None
    cache.put(kernel, b"vmfb")
    cache.put_index(op, {"kernel": kernel, "copy_inputs": [1]})
    assert cache.get_index(op) == {"kernel": kernel, "copy_inputs": [1]}
    assert cache.get(cache.get_index(op)["kernel"]) == b"vmfb"
    assert cache.get(op) is None  # an index record is not a kernel
    info = cache.info()
    assert (info["entries"], info["failures"], info["index_records"]) == (1, 0, 1)
    assert (cache.index_hits, cache.index_misses) == (2, 1)
    with pytest.raises(ValueError):
        cache.put_index("not a key", {"kernel": kernel})
    assert cache.clear() == 2
    assert cache.get_index(op) is None


def test_default_dir_and_off(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_MLIR_EAGER_CACHE_DIR", "off")
    assert default_cache_dir() is None
    assert open_default_cache() is None
    disabled = DiskCache(None, persist_stats=False)
    assert not disabled.enabled
    disabled.put(key_of("x"), b"data")
    assert disabled.get(key_of("x")) is None

    monkeypatch.setenv("TORCH_MLIR_EAGER_CACHE_DIR", str(tmp_path / "explicit"))
    assert default_cache_dir() == tmp_path / "explicit"
    c = open_default_cache()
    assert c is not None and c.root == tmp_path / "explicit"

    monkeypatch.delenv("TORCH_MLIR_EAGER_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "torch_mlir_eager"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "torch_mlir_eager"


def test_max_bytes_env(monkeypatch):
    monkeypatch.delenv("TORCH_MLIR_EAGER_CACHE_MAX_BYTES", raising=False)
    assert disk_cache.default_max_bytes() == 1 << 30
    monkeypatch.setenv("TORCH_MLIR_EAGER_CACHE_MAX_BYTES", "12345")
    assert disk_cache.default_max_bytes() == 12345
    monkeypatch.setenv("TORCH_MLIR_EAGER_CACHE_MAX_BYTES", "256M")
    assert disk_cache.default_max_bytes() == 256 << 20
    monkeypatch.setenv("TORCH_MLIR_EAGER_CACHE_MAX_BYTES", "nonsense")
    assert disk_cache.default_max_bytes() == 1 << 30


def test_unwritable_root_does_not_raise(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = DiskCache(blocker / "cache", 1 << 20, persist_stats=False)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        cache.put(key_of("x"), b"data")  # logged, not raised
    assert cache.get(key_of("x")) is None
    assert cache.writes == 0
    assert any("cannot write" in r.getMessage() for r in caplog.records)


def test_stats_persist(tmp_path):
    a = DiskCache(tmp_path, 1 << 20, persist_stats=False)
    k = key_of("s")
    a.get(k)
    a.put(k, b"1")
    a.get(k)
    a.flush_stats()
    a.flush_stats()  # nothing new: no double counting
    b = DiskCache(tmp_path, 1 << 20, persist_stats=False)
    b.get(k)
    b.flush_stats()
    stats = b.read_persisted_stats()
    assert (stats["hits"], stats["misses"], stats["writes"]) == (2, 1, 1)
    data = json.loads((tmp_path / "stats.json").read_text())
    assert data["hits"] == 2


def test_cli_info_and_clear(tmp_path, capsys, monkeypatch):
    from torch_mlir_eager import cache as cli

    root = tmp_path / "c"
    c = DiskCache(root, 1 << 20, persist_stats=False)
    for i in range(3):
        c.put(key_of(f"cli{i}"), b"k" * 100)
    c.get(key_of("cli0"))
    c.get(key_of("nope"))
    c.put_failure(key_of("f"), "lower", "nope")
    c.flush_stats()

    monkeypatch.setenv("TORCH_MLIR_EAGER_CACHE_DIR", str(root))
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert str(root) in out
    assert "entries:           3" in out
    assert "failures:          1" in out
    assert "hits:              1" in out and "misses:            1" in out

    assert cli.main(["--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["location"] == str(root)
    assert info["entries"] == 3 and info["failures"] == 1
    assert info["bytes"] > 300
    assert info["cumulative"]["hits"] == 1

    assert cli.main(["--clear"]) == 0
    out = capsys.readouterr().out
    assert "cleared 4 entries" in out
    assert entry_files(root) == []
    assert DiskCache(root, 1 << 20, persist_stats=False).info()["entries"] == 0
    assert cli.main(["--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["entries"] == 0 and info["cumulative"]["hits"] == 0

    # A foreign file in the cache directory is never touched by --clear.
    (root / "README").write_text("keep me")
    assert cli.main(["--clear"]) == 0
    assert (root / "README").read_text() == "keep me"


def test_cli_module_entry_point(tmp_path):
    # One start of `python -m torch_mlir_eager.cache` (importing the package costs ~2 s);
    # the rest of the CLI is covered in-process above.
    root = tmp_path / "c"
    DiskCache(root, 1 << 20, persist_stats=False).put(key_of("m"), b"payload")
    env = dict(os.environ, TORCH_MLIR_EAGER_CACHE_DIR=str(root))
    out = subprocess.run(
        [sys.executable, "-m", "torch_mlir_eager.cache", "--clear", "--json"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["cleared"] == 1 and info["entries"] == 0
    assert info["location"] == str(root)
    assert entry_files(root) == []


def test_cli_off(monkeypatch, capsys):
    from torch_mlir_eager import cache as cli

    monkeypatch.setenv("TORCH_MLIR_EAGER_CACHE_DIR", "off")
    assert cli.main([]) == 0
    assert "disabled" in capsys.readouterr().out
    assert cli.main(["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["enabled"] is False
