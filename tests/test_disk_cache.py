"""Tests of the on-disk kernel cache (torch_mlir_eager.disk_cache) and its CLI."""

from __future__ import annotations

import hashlib
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


# --- the size bound shared between processes ----------------------------------------------


def scanned_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.glob("??/*") if p.suffix in (".vmfb", ".fail", ".idx"))


def recorded_bytes(root: Path) -> int:
    """The size record kept in <root>/size.lock (ValueError when there is none)."""
    return int((root / "size.lock").read_bytes())


@pytest.fixture(params=["flock", "no-fcntl"])
def lock_mode(request, monkeypatch):
    """Runs a test with fcntl (size record under flock) and without (a scan per write)."""
    if request.param == "no-fcntl":
        monkeypatch.setattr(disk_cache, "fcntl", None)
    return request.param


def test_bound_holds_across_caches_sharing_a_root(tmp_path, lock_mode):
    """Two caches on one root (as two processes would be) write in turn: after every put the
    total of both is within the bound, not each one's own writes."""
    bound = 20_000
    a = DiskCache(tmp_path, bound, persist_stats=False)
    b = DiskCache(tmp_path, bound, persist_stats=False)
    for i in range(40):
        (a if i % 2 else b).put(key_of(f"shared-bound{i}"), os.urandom(1500))
        assert scanned_bytes(tmp_path) <= bound, i
    assert a.evictions + b.evictions > 0
    assert a.get(key_of("shared-bound39")) is not None  # the newest entry survives
    if lock_mode == "flock":
        assert recorded_bytes(tmp_path) == scanned_bytes(tmp_path)


_WORKER = """
    import hashlib, json, random, time
    from pathlib import Path
    root, sync, me, rounds, ops, bound, mode = sys.argv[1:8]
    me, rounds, ops, bound = int(me), int(rounds), int(ops), int(bound)
    if mode == "no-fcntl":
        dc.fcntl = None
    c = dc.DiskCache(root, bound, persist_stats=False)

    def barrier(name):
        Path(sync, f"{name}-{me}").touch()
        deadline = time.monotonic() + 30
        while len(list(Path(sync).glob(f"{name}-*"))) < 4:
            if time.monotonic() > deadline:
                raise TimeoutError(f"barrier {name}")
            time.sleep(0.002)

    def total_bytes():
        return sum(p.stat().st_size for p in Path(root).glob("??/*")
                   if p.suffix in (".vmfb", ".fail", ".idx"))

    def key(name):
        return hashlib.sha256(name.encode()).hexdigest()

    def filler(seed, size):
        block = hashlib.sha256(seed.encode()).hexdigest()
        return (block * (size // len(block) + 1))[:size]

    # Every payload names its key and writer and can be rebuilt from them: a reader checks it.
    def kernel(k, writer, size):
        return f"{k}:{writer}:{size}:{filler(k + str(writer), size)}".encode()

    def kernel_ok(k, data):
        k2, writer, size, _ = data.decode().split(":", 3)
        return k2 == k and data == kernel(k, int(writer), int(size))

    def failure_ok(k, rec):
        return rec["message"] == filler(k + rec["step"], len(rec["message"]))

    def index_ok(k, rec):
        return rec["pad"] == filler(k + str(rec["writer"]), len(rec["pad"]))

    n_ops = rounds * ops
    shared = [key(f"shared{i}") for i in range(12)]
    names = {w: [key(f"own{w}-{i}") for i in range(n_ops)] for w in range(4)}
    rng = random.Random(me)
    bad = 0
    max_total = 0
    barrier("start")
    for i in range(n_ops):
        k = rng.choice(shared) if rng.random() < 0.3 else names[me][i]
        kind = rng.choice(("kernel", "kernel", "failure", "index"))
        if kind == "kernel":
            c.put(k, kernel(k, me, rng.randrange(200, 6000)))
        elif kind == "failure":
            step = f"w{me}"
            c.put_failure(k, step, filler(k + step, rng.randrange(50, 2000)))
        else:
            c.put_index(k, {"writer": me, "pad": filler(k + str(me), rng.randrange(10, 600))})
        # Read what others wrote, possibly being evicted right now: a miss or a whole entry.
        other = rng.choice(shared + names[rng.randrange(4)][:i + 1])
        data, fail, rec = c.get(other), c.get_failure(other), c.get_index(other)
        bad += data is not None and not kernel_ok(other, data)
        bad += fail is not None and not failure_ok(other, fail)
        bad += rec is not None and not index_ok(other, rec)
        if i % ops == ops - 1:  # every process has written its round: measure, then go on
            barrier(f"{i}-written")
            max_total = max(max_total, total_bytes())
            barrier(f"{i}-measured")
    print(json.dumps({"bad": bad, "corrupt": c.corrupt, "evictions": c.evictions,
                      "max_total": max_total}))
"""


def _check_entry(cache: DiskCache, path: Path) -> bool:
    """Reads ``path`` through the cache's own read path and checks it as _WORKER does."""
    k = path.stem
    if path.suffix == ".vmfb":
        data = cache.get(k)
        if data is None:
            return False
        named_key, writer, size, payload = data.decode().split(":", 3)
        if named_key != k or int(size) != len(payload):
            return False
        seed = k + writer
    elif path.suffix == ".fail":
        rec = cache.get_failure(k)
        if rec is None:
            return False
        seed, payload = k + rec["step"], rec["message"]
    else:
        rec = cache.get_index(k)
        if rec is None:
            return False
        seed, payload = k + str(rec["writer"]), rec["pad"]
    block = hashlib.sha256(seed.encode()).hexdigest()
    return payload == (block * (len(payload) // len(block) + 1))[: len(payload)]


def test_processes_share_the_bound(tmp_path, lock_mode):
    """4 processes write kernels, failures and index records of varied sizes to one small
    cache (some keys shared) and read each other's entries while they are evicted. They
    write in rounds; between rounds, when no one writes, the total must be within the bound."""
    bound, rounds, ops = 40_000, 10, 15
    root, sync = tmp_path / "cache", tmp_path / "sync"
    sync.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD_PRELUDE + textwrap.dedent(_WORKER), str(root),
             str(sync), str(me), str(rounds), str(ops), str(bound), lock_mode],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for me in range(4)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0 and not err, err
        results.append(json.loads(out))
    assert all(r["bad"] == 0 and r["corrupt"] == 0 for r in results), results
    assert sum(r["evictions"] for r in results) > 0, results  # the bound was reached
    assert max(r["max_total"] for r in results) <= bound, results

    total = scanned_bytes(root)
    assert 0 < total <= bound
    if lock_mode == "flock":
        assert recorded_bytes(root) == total
    reader = DiskCache(root, bound, persist_stats=False)
    remaining = sorted(p for p in root.glob("??/*") if p.suffix in (".vmfb", ".fail", ".idx"))
    assert remaining and all(_check_entry(reader, p) for p in remaining)
    assert reader.corrupt == 0
    assert not list(root.glob("??/.tmp-*"))


@pytest.mark.parametrize("bound", [0, 1, 3000])
def test_tiny_bound(tmp_path, lock_mode, bound):
    """A bound of 0 stores nothing; an entry bigger than 90% of the bound is not stored (and
    evicts nothing); whatever fits is stored and read back. No put raises."""
    cache = DiskCache(tmp_path, bound, persist_stats=False)
    small, big = key_of("small"), key_of("big")
    cache.put(small, b"s" * 100)  # 148 bytes with its header
    cache.put(big, b"b" * 5000)
    cache.put_failure(key_of("fail"), "compile", "m" * 200)
    cache.put_index(key_of("idx"), {"kernel": small})
    assert cache.get(big) is None
    assert scanned_bytes(tmp_path) <= bound
    if bound == 0 or bound == 1:
        assert cache.get(small) is None and cache.writes == 0
    else:
        assert cache.get(small) == b"s" * 100
        assert cache.get_index(key_of("idx")) == {"kernel": small}
        assert cache.writes == 1 and cache.evictions == 0


def test_put_below_bound_does_not_scan(tmp_path, monkeypatch):
    """With fcntl the total comes from the size record: only the first put (no record yet)
    and evictions scan the directory."""
    cache = DiskCache(tmp_path, 10_000, persist_stats=False)
    scans = []
    real_scan = cache._scan
    monkeypatch.setattr(cache, "_scan", lambda: scans.append(1) or real_scan())
    for i in range(5):
        cache.put(key_of(f"noscan{i}"), b"x" * 1000)
    assert len(scans) == 1
    for i in range(5, 10):
        cache.put(key_of(f"noscan{i}"), b"x" * 1000)
    assert cache.evictions > 0 and len(scans) == 2  # the eviction's scan


def test_size_record_follows_every_change(tmp_path):
    cache = DiskCache(tmp_path, 1 << 20, persist_stats=False)
    k1, k2, k3 = key_of("r1"), key_of("r2"), key_of("r3")

    def check():
        assert recorded_bytes(tmp_path) == scanned_bytes(tmp_path)

    cache.put(k1, os.urandom(3000))
    check()
    cache.put(k1, os.urandom(1000))  # an overwrite counts the difference
    check()
    cache.put_failure(k2, "compile", "boom")
    cache.put_index(k3, {"kernel": k1})
    check()
    assert cache.discard(k1, cache.get(k1))
    check()
    cache.put(k1, b"x" * 500)
    damaged = bytearray(cache.kernel_path(k1).read_bytes())
    damaged[-1] ^= 0xFF  # corrupt, same size: the reader deletes it
    cache.kernel_path(k1).write_bytes(bytes(damaged))
    assert cache.get(k1) is None and cache.corrupt == 1
    check()
    (tmp_path / "size.lock").write_bytes(b"")  # a lost record is rebuilt by a scan
    cache.put(k1, b"y" * 700)
    check()
    assert cache.evict(0) == 3
    check()
    cache.put(k1, b"z")
    cache.clear()
    assert recorded_bytes(tmp_path) == 0


@pytest.mark.parametrize("new_size", [500, 5000])
def test_writer_killed_before_its_rename(tmp_path, monkeypatch, new_size):
    """A writer that dies between updating the size record and renaming its entry into
    place (shrinking or growing an entry) leaves the record too high, never too low."""
    cache = DiskCache(tmp_path, 1 << 20, persist_stats=False)
    k = key_of("killed")
    cache.put(k, os.urandom(3000))

    def killed(*args):
        raise KeyboardInterrupt  # not an OSError: nothing is rolled back, as for SIGKILL

    monkeypatch.setattr(disk_cache.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        cache.put(k, os.urandom(new_size))
    monkeypatch.undo()
    assert len(cache.get(k)) == 3000  # the old entry is still there
    assert recorded_bytes(tmp_path) >= scanned_bytes(tmp_path)


# --- reporting a bad kernel ----------------------------------------------------------------


def test_discard_bad_kernel(tmp_path):
    """A kernel that passes the checksum but fails to load is discarded by the caller: the
    next get misses, and the recompiled kernel is stored in its place."""
    cache = DiskCache(tmp_path, 1 << 20, persist_stats=False)
    k = key_of("unloadable")
    assert not cache.discard(k, b"never stored")
    cache.put(k, b"valid checksum, does not load")
    bad = cache.get(k)
    assert cache.discard(k, bad)
    assert not cache.kernel_path(k).exists() and cache.get(k) is None
    assert not cache.discard(k, bad)  # already gone
    cache.put(k, b"recompiled")
    assert cache.get(k) == b"recompiled"


def test_discard_keeps_a_replaced_entry(tmp_path):
    """Another process replaced the bad kernel meanwhile: its new one is not deleted."""
    reporter = DiskCache(tmp_path, 1 << 20, persist_stats=False)
    other = DiskCache(tmp_path, 1 << 20, persist_stats=False)
    k = key_of("replaced")
    reporter.put(k, b"kernel v1")
    bad = reporter.get(k)
    other.put(k, b"kernel v2")  # as long as v1: only the checksum tells them apart
    assert not reporter.discard(k, bad)
    assert reporter.get(k) == b"kernel v2"


# --- readers and eviction ------------------------------------------------------------------


def test_reader_of_an_evicted_entry(tmp_path, monkeypatch):
    """Eviction unlinks an entry a reader has open: the reader still gets it whole. Once
    unlinked, the next reader misses. Neither raises."""
    cache = DiskCache(tmp_path, 1 << 20, persist_stats=False)
    k = key_of("evicted-while-read")
    payload = os.urandom(200_000)
    cache.put(k, payload)
    real_open = open

    def open_then_evict(path, *args, **kwargs):
        f = real_open(path, *args, **kwargs)
        assert DiskCache(tmp_path, 1 << 20, persist_stats=False).evict(0) == 1
        return f

    monkeypatch.setattr(disk_cache, "open", open_then_evict, raising=False)
    assert cache.get(k) == payload
    monkeypatch.undo()
    assert not cache.kernel_path(k).exists()
    assert cache.get(k) is None and cache.corrupt == 0
