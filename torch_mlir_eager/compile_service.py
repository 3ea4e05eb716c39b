"""The compile service: persistent worker processes that build kernels, and what the user's
process does with what they send back. The user's process only ever loads kernels.

    build_entry(recipe, scalars, device) -> Kernel | Fallback | STATIC_SCALARS
      disk index   a known key: its kernel is loaded (no planning, tracing or lowering), or
                   its remembered fallback returned
      workers      otherwise a worker builds it (compile_worker.py). A worker that crashes
                   or passes the per-kernel time limit is restarted; the key becomes a
                   fallback with step `crash` or `timeout`, remembered on disk
    build_blocking / build_in_background / synchronize   for dispatch: one build per key
                   across threads; non-blocking mode runs natively until the kernel is ready

$TORCH_MLIR_EAGER_COMPILE_WORKERS sets the number of workers (default: one per core); 0 builds
in this process (no isolation; for debugging the compiler). $TORCH_MLIR_EAGER_COMPILE_TIMEOUT
is the per-kernel limit in seconds (default 300).
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import queue
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from . import kernel_index
from .kernel import FlatKernel, Kernel
from .kernel_cache import CACHE, STATS, Fallback, Pending
from .recipe import Built, first_line, scalar_slots

log = logging.getLogger("torch_mlir_eager")

ENV_WORKERS = "TORCH_MLIR_EAGER_COMPILE_WORKERS"
ENV_TIMEOUT = "TORCH_MLIR_EAGER_COMPILE_TIMEOUT"
DEFAULT_TIMEOUT = 300.0
STARTUP_TIMEOUT = 600.0  # a worker imports torch, torch-mlir and the IREE compiler


class _StaticScalars:
    """The entry of a key whose op needs its scalars baked in: the kernel is under the key
    with the values (keys.OpCall.static_key)."""

    def __repr__(self):
        return "STATIC_SCALARS"


STATIC_SCALARS = _StaticScalars()


@dataclass(frozen=True)
class Failure:
    """A build that gave no kernel. `remember`: whether it says something about the op (and
    is kept on disk), rather than about this machine at this moment."""

    step: str
    message: str
    remember: bool = True


# ---- from a recipe to a cache entry -------------------------------------------------------------
def build_entry(recipe, scalars, device):
    """The cache entry for `recipe.key`: Kernel, Fallback or STATIC_SCALARS. Never raises for a
    build problem."""
    start = time.perf_counter()
    _notify("start", recipe.name)
    record = kernel_index.lookup(recipe.key, recipe.flags)
    if record is not None:
        entry = _from_record(record, recipe, device)
        if entry is not None:
            seconds = time.perf_counter() - start
            if isinstance(entry, Kernel):
                STATS.compiled(seconds, ok=True, from_disk=True)
                _notify("loaded", recipe.name, seconds)
            return entry
    outcome = service().submit(recipe, scalars).result()
    seconds = time.perf_counter() - start
    if isinstance(outcome, Failure):
        fallback = Fallback(outcome.step, first_line(outcome.message))
        if outcome.remember:
            kernel_index.remember_fallback(recipe.key, recipe.flags, fallback.step, fallback.reason)
        STATS.compiled(seconds, ok=False)
        _log_failure(recipe.name, fallback, outcome.message)
        _notify("failed", recipe.name, seconds)
        return fallback
    # the worker's own build time (not the time the request waited in the workers' queue)
    seconds = outcome.seconds
    kernel = _load(outcome, recipe, device, takes_scalars=outcome.runtime_scalars and bool(scalars))
    if isinstance(kernel, Fallback):
        STATS.compiled(seconds, ok=False)
        _notify("failed", recipe.name, seconds)
        return kernel
    STATS.compiled(seconds, ok=True, from_disk=outcome.from_disk)
    _notify("loaded" if outcome.from_disk else "done", recipe.name, seconds)
    if scalars and not outcome.runtime_scalars:
        # the op needs its scalars baked in: this kernel serves the key with these values
        kernel_index.remember_static_scalars(recipe.key, recipe.flags)
        static_key = static_key_of(recipe.key, scalars)
        _remember(kernel, static_key, recipe.flags, outcome)
        CACHE.set(static_key, kernel)
        return STATIC_SCALARS
    _remember(kernel, recipe.key, recipe.flags, outcome)
    return kernel


def _remember(kernel, key, flags, built):
    """Index a new kernel; its record is written again with the verdict of its first call."""
    built.entry = kernel_index.remember_kernel(key, flags, built) or built.entry
    _on_probed(kernel, key, flags, built)


def _on_probed(kernel, key, flags, built):
    if not kernel.probed:  # a flat kernel's first call may be its inline twin's
        def on_probed(copy_inputs):
            kernel_index.remember_kernel(key, flags, dataclasses.replace(built, copy_inputs=tuple(copy_inputs),
                                                                         probed=True))
        kernel.on_probed = on_probed
        if kernel.twin is not None:
            kernel.twin.on_probed = on_probed


def static_key_of(key, scalars):
    return (key, "static") + tuple((type(v), v.hex() if isinstance(v, float) else v) for v in scalars)


def _from_record(record, recipe, device):
    if "fallback" in record:
        step, reason = record["fallback"]
        return Fallback(step, reason)
    if "static_scalars" in record:
        return STATIC_SCALARS
    takes = bool(record.get("runtime_scalars")) and bool(scalar_slots(recipe.template))
    built = Built(record["vmfb"], record["plan"], tuple(record.get("copy_inputs", ())),
                  runtime_scalars=bool(record.get("runtime_scalars")), from_disk=True, entry=record["kernel"],
                  probed=bool(record.get("probed")))
    kernel = _load(built, recipe, device, takes_scalars=takes, from_disk=True)
    if isinstance(kernel, Fallback):  # a stored kernel that does not load: build it again
        log.warning("%s: the cached kernel does not load (%s); rebuilding it", recipe.name, kernel.reason)
        kernel_index.forget(record)
        return None
    _on_probed(kernel, recipe.key, recipe.flags, built)
    return kernel


def _load(built, recipe, device, takes_scalars, from_disk=False):
    if not built.vmfb:  # every result is zero-size: nothing to compute
        return Kernel.empty(device, recipe.name, built.plan)
    try:
        cls = FlatKernel if recipe.flat else Kernel
        return cls(device, built.vmfb, recipe.name, built.plan, from_disk=from_disk or built.from_disk,
                   copy_inputs=built.copy_inputs, takes_scalars=takes_scalars, probed=built.probed)
    except Exception as e:  # noqa: BLE001
        return Fallback("load", first_line(f"{type(e).__name__}: {e}"))


# ---- for dispatch: one build per key --------------------------------------------------------------
def build_blocking(recipe, scalars, device):
    """The cache entry for `recipe.key`, building it (once across threads) when missing."""
    entry, _ = CACHE.get_or_build(recipe.key, lambda: _guarded(recipe, scalars, device))
    return entry


def _guarded(recipe, scalars, device):
    try:
        return build_entry(recipe, scalars, device)
    except Exception as e:  # noqa: BLE001 - a bug here must not break the user's program
        fallback = Fallback("internal", first_line(f"{type(e).__name__}: {e}"))
        log.warning("%s: building its kernel failed unexpectedly (%s)", recipe.name, fallback.reason, exc_info=True)
        return fallback


_background = None
_background_lock = threading.Lock()  # orders a Pending before the entry that replaces it


def build_in_background(recipe, scalars, device):
    """Start building `recipe.key` unless it is known or building; its entry (Pending while it
    builds)."""
    global _background
    with _background_lock:
        entry = CACHE.get(recipe.key)
        if entry is not None:
            return entry
        if _background is None:
            _background = ThreadPoolExecutor(max_workers=max(2, worker_count() * 2), thread_name_prefix="tme-build")

        def job():
            result = _guarded(recipe, scalars, device)
            with _background_lock:  # after the Pending below is in place
                CACHE.set(recipe.key, result)
            return result

        pending = Pending(_background.submit(job))
        CACHE.set(recipe.key, pending)
        return pending


def synchronize():
    """Wait for every background build to finish."""
    for _, entry in CACHE.entries():
        if isinstance(entry, Pending):
            entry.future.result()


# ---- events and logging -----------------------------------------------------------------------------
_listener = None
_logged_ops: set = set()
_log_lock = threading.Lock()


def set_compile_listener(fn):
    """fn(event, op_name, seconds) with event "start", then "done" (compiled), "loaded" (from the
    disk cache) or "failed"; None removes the listener."""
    global _listener
    _listener = fn


def _notify(event, name, seconds=None):
    if _listener is not None:
        try:
            _listener(event, name, seconds)
        except Exception:  # a listener must never break an op
            log.exception("compile listener failed")


def _log_failure(name, fallback: Fallback, message: str):
    with _log_lock:
        if name in _logged_ops:
            return
        _logged_ops.add(name)
    log.warning("%s falls back to native PyTorch (%s): %s", name, fallback.step, fallback.reason)
    log.debug("%s: full error:\n%s", name, message)


# ---- the workers ---------------------------------------------------------------------------------
def worker_count() -> int:
    env = os.environ.get(ENV_WORKERS, "").strip()
    if env:
        return max(0, int(env))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 2


def kernel_timeout() -> float:
    env = os.environ.get(ENV_TIMEOUT, "").strip()
    return float(env) if env else DEFAULT_TIMEOUT


class _Worker:
    """One worker process, driven by one thread of the pool."""

    def __init__(self, slot: int, log_dir: str):
        self.slot = slot
        self.log_path = os.path.join(log_dir, f"worker-{slot}.log")
        self.proc = None
        self.restarts = 0

    def _start(self):
        from .compile_worker import read_frame

        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = package_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with open(self.log_path, "ab") as log_file:
            # this package's worker, not one a `torch_mlir_eager` folder in the working directory
            # would give (`python -m` puts the working directory first on sys.path)
            boot = (f"import sys; sys.path.insert(0, {package_parent!r}); import runpy; "
                    "runpy.run_module('torch_mlir_eager.compile_worker', run_name='__main__', alter_sys=True)")
            self.proc = subprocess.Popen(
                [sys.executable, "-c", boot],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, env=env, bufsize=0,
                start_new_session=True,  # the user's Ctrl-C is not the worker's
            )
        if not self._readable(STARTUP_TIMEOUT):
            self.kill()
            raise RuntimeError(f"compile worker did not start within {STARTUP_TIMEOUT:.0f} s")
        hello = read_frame(self.proc.stdout)
        if not (isinstance(hello, tuple) and hello[0] == "ready"):
            code = self.proc.wait()
            raise RuntimeError(f"compile worker failed to start (exit {code}): {self._log_tail()}")

    def _readable(self, timeout) -> bool:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return bool(ready)

    starting = False

    def start(self):
        """Start the worker ahead of its first request; a failure is reported by `build`."""
        self.starting = True
        try:
            self._start()
        except Exception:  # noqa: BLE001
            self.kill()
            self.proc = None
        finally:
            self.starting = False

    def build(self, recipe, scalars, timeout):
        """Built | Failure for one recipe on this worker (started or restarted as needed)."""
        from .compile_worker import read_frame, write_frame

        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                self.restarts += 1
            try:
                self._start()
            except Exception as e:  # noqa: BLE001
                self.proc = None
                return Failure("start", f"compile worker: {e}", remember=False)
        try:
            write_frame(self.proc.stdin, ("build", 0, recipe, scalars))
        except (BrokenPipeError, OSError):
            return self._died(recipe)
        if not self._readable(timeout):
            self.kill()
            return Failure("timeout", f"building {recipe.name} took more than {timeout:.0f} s; the compile worker was stopped")
        reply = read_frame(self.proc.stdout)
        if reply is None:
            return self._died(recipe)
        if reply[0] == "built":
            return reply[2]
        return Failure(reply[2], reply[3])

    def _died(self, recipe):
        code = self.proc.wait()
        tail = self._log_tail()
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            # a kill from outside (the OOM killer, a shutdown) says nothing about the op
            outside = -code in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
            return Failure("crash", f"the compile worker died with {name} while building {recipe.name}\n{tail}",
                           remember=not outside)
        return Failure("crash", f"the compile worker exited with code {code} while building {recipe.name}\n{tail}")

    def _log_tail(self, lines=30) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 8192))
                return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()  # end of requests: the worker exits
            self.proc.wait(timeout=2)
        except Exception:  # noqa: BLE001
            self.kill()


class WorkerPool:
    """`workers` persistent worker processes; requests queue up and go to the first free one.

    Every worker starts (and warms up: compile_worker.main) as soon as the pool is made, and
    takes requests only once it is ready, so a request never waits for a worker's start while
    another worker is ready."""

    def __init__(self, workers: int):
        self.closed = False
        self._queue: queue.Queue = queue.Queue()
        self._log_dir = tempfile.mkdtemp(prefix="tme-compile-workers-")
        self.workers = [_Worker(i, self._log_dir) for i in range(workers)]
        self._threads = [
            threading.Thread(target=self._serve, args=(w,), name=f"tme-compile-worker-{w.slot}", daemon=True)
            for w in self.workers
        ]
        for t in self._threads:
            t.start()

    def submit(self, recipe, scalars) -> Future:
        if self.closed:  # restarted meanwhile: the service in place builds it
            return service().submit(recipe, scalars)
        future: Future = Future()
        self._queue.put((recipe, scalars, future))
        return future

    def _serve(self, worker: _Worker):
        worker.start()
        while True:
            job = self._queue.get()
            if job is None:
                worker.stop()
                return
            recipe, scalars, future = job
            try:
                outcome = worker.build(recipe, scalars, kernel_timeout())
            except Exception as e:  # noqa: BLE001
                outcome = Failure("internal", f"{type(e).__name__}: {e}", remember=False)
            future.set_result(outcome)

    def shutdown(self):
        self.closed = True
        for w in self.workers:
            if w.starting:  # still importing or warming up: no use waiting for it
                w.kill()
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=5)
        for w in self.workers:
            w.kill()
        while True:  # requests that no worker will serve now: said so, not left waiting
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[2].set_result(Failure("start", "the compile service was stopped", remember=False))


class InProcess:
    """Builds in this process, one at a time, on a thread outside any __torch_dispatch__
    (tracing needs PyTorch's dispatch state as it is there). No isolation from crashes."""

    def __init__(self):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tme-build-inprocess")

    def submit(self, recipe, scalars) -> Future:
        return self._executor.submit(self._build, recipe, scalars)

    @staticmethod
    def _build(recipe, scalars):
        from . import compiler
        from .recipe import StepError

        try:
            return compiler.build(recipe, scalars)
        except StepError as e:
            return Failure(e.step, e.message)
        except Exception as e:  # noqa: BLE001
            import traceback

            return Failure("internal", f"{type(e).__name__}: {e}\n{traceback.format_exc()}")

    def shutdown(self):
        self._executor.shutdown(wait=False)


_service = None
_service_lock = threading.Lock()


def service():
    """The process's compile service (started on first use)."""
    global _service
    if _service is None:
        with _service_lock:
            if _service is None:
                n = worker_count()
                _service = WorkerPool(n) if n > 0 else InProcess()
    return _service


def restart(workers: int | None = None):
    """Stop the service; the next build starts one with `workers` workers (default: from the
    environment)."""
    global _service
    with _service_lock:
        if _service is not None:
            _service.shutdown()
        _service = None
        if workers is not None:
            os.environ[ENV_WORKERS] = str(workers)


@atexit.register
def _shutdown_at_exit():
    if _service is not None:
        _service.shutdown()
