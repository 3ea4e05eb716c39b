"""Process isolation: entries run in child processes (`python -m torch_mlir_eager.coverage
--worker`), fed one at a time, so an entry that aborts or segfaults inside a native library, or
hangs, costs only itself: the parent records it as `error` and starts a fresh child.

Protocol: the parent writes the options (one JSON line), then one entry per line, on the child's
stdin; the child answers on its original stdout with JSON lines {"event": "ready"}, {"event":
"start", "id", "dtype"} and {"event": "done", "result"}. Anything else printed, by Python or
native code, goes to the child's stderr (the worker log).
"""

from __future__ import annotations

import collections
import json
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import warnings

from .backend import load_backend
from .compare import first_line
from .entry import DEFAULT_MAX_SAMPLES, DEFAULT_OP_BUDGET, error_result, run_entry, with_checks_crashed
from .progress import Progress
from .selection import load_op_db

DEFAULT_OP_TIMEOUT = 120.0
DEFAULT_OUT_DIR = "coverage_out"
ENV_TEST_CRASH = "TORCH_MLIR_EAGER_COVERAGE_TEST_CRASH"  # entry id: the worker aborts on it
ENV_TEST_HANG = "TORCH_MLIR_EAGER_COVERAGE_TEST_HANG"  # entry id: the worker hangs on it


def json_safe(obj):
    """Floats nan/inf as strings, tuples as lists, keys as strings."""
    if isinstance(obj, float):
        if math.isnan(obj):
            return "nan"
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _run(entry, opts):
    """An entry's result; an entry marked `checks_crashed` (its run with the checks crashed or hung a
    worker) runs the values column alone."""
    checks = tuple(opts.get("checks", ()))
    crashed = entry.get("checks_crashed")
    try:
        res = run_entry(entry, opts.get("max_samples", DEFAULT_MAX_SAMPLES), opts.get("op_budget", DEFAULT_OP_BUDGET),
                        () if crashed else checks)
    except Exception as e:  # noqa: BLE001
        return error_result(entry, f"coverage tool: {first_line(e)}", type(e).__name__)
    return with_checks_crashed(res, checks, crashed) if crashed else res


def worker_main():
    """The child: read entries on stdin, answer on the protocol pipe (the original stdout)."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    opts = json.loads(sys.stdin.readline())

    def send(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    load_op_db()
    load_backend()
    send({"event": "ready", "pid": os.getpid()})
    crash_on = os.environ.get(ENV_TEST_CRASH)
    hang_on = os.environ.get(ENV_TEST_HANG)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        entry = json.loads(line)
        send({"event": "start", "id": entry["id"], "dtype": entry["dtype"]})
        if crash_on and entry["id"] == crash_on:
            os.abort()
        if hang_on and entry["id"] == hang_on:
            time.sleep(1e6)
        res = _run(entry, opts)
        print(f"[coverage worker] {entry['id']} {entry['dtype']}: {res['class']} {res['detail'][:200]}",
              file=sys.stderr, flush=True)
        send({"event": "done", "result": json_safe(res)})


class _Worker:
    def __init__(self, slot, opts, env, log_path, events):
        self.slot = slot
        self.log = open(log_path, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "torch_mlir_eager.coverage", "--worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env,
            start_new_session=True, text=True, bufsize=1,
        )
        self.proc.stdin.write(json.dumps(opts) + "\n")
        self.proc.stdin.flush()
        self.ready = False
        self.entry = None  # entry being run
        self.idx = None
        self.started = time.time()  # when the entry (or the worker start-up) began
        self.ran = 0
        self.dead = False
        self.reader = threading.Thread(target=self._read, args=(events,), daemon=True)
        self.reader.start()

    def _read(self, events):
        for line in self.proc.stdout:
            line = line.strip()
            if line:
                try:
                    events.put((self, json.loads(line)))
                except ValueError:
                    pass
        events.put((self, None))

    def send(self, idx, entry):
        self.idx, self.entry = idx, entry
        self.proc.stdin.write(json.dumps(entry) + "\n")
        self.proc.stdin.flush()
        self.started = time.time()

    def kill(self):
        self.dead = True
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()

    def stop(self):
        self.dead = True
        try:
            self.proc.stdin.close()
        except Exception:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
        self.log.close()


def _signal_name(n):
    try:
        return signal.Signals(n).name
    except ValueError:
        return str(n)


def run_isolated(entries, opts, jobs=2, op_timeout=DEFAULT_OP_TIMEOUT, log_dir=DEFAULT_OUT_DIR,
                 env=None, progress=None, ops_per_worker=0, on_result=None, startup_timeout=300.0):
    """Run entries in `jobs` worker processes fed one entry at a time. Returns results in order.
    An entry that crashes or hangs its worker with checks on runs once more with the values
    column alone, so that its class is still measured."""
    env = dict(os.environ if env is None else env)
    entries = list(entries)
    os.makedirs(log_dir, exist_ok=True)
    pending = collections.deque(range(len(entries)))
    results = [None] * len(entries)
    events = queue.Queue()
    workers = {}
    startup_failures = 0
    progress = progress or Progress(len(entries), enabled=False)

    def record(idx, res):
        results[idx] = res
        if on_result:
            on_result(res)

    def failed(w, message, etype):
        """The entry of `w` crashed or hung its worker."""
        if opts.get("checks") and not w.entry.get("checks_crashed"):
            entries[w.idx] = dict(w.entry, checks_crashed=message)
            pending.appendleft(w.idx)
            progress.requeue(w.slot)
            return
        record(w.idx, error_result(w.entry, message, etype))
        progress.finish(w.slot, "error")

    def spawn(slot):
        workers[slot] = _Worker(slot, opts, env, os.path.join(log_dir, f"worker-{slot}.log"), events)

    def feed(w):
        if w.dead or not w.ready or w.entry is not None:
            return
        if not pending or (ops_per_worker and w.ran >= ops_per_worker):
            w.stop()
            workers.pop(w.slot, None)
            if pending:
                spawn(w.slot)
            return
        idx = pending.popleft()
        w.send(idx, entries[idx])
        progress.start(w.slot, entries[idx]["id"])

    for slot in range(max(1, min(jobs, len(entries)))):
        spawn(slot)

    try:
        while workers:
            try:
                w, msg = events.get(timeout=0.5)
            except queue.Empty:
                w, msg = None, None
            if w is not None and not w.dead and workers.get(w.slot) is w:
                if msg is None:  # the worker's stdout closed: it exited
                    try:
                        rc = w.proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        rc = None
                    w.kill()
                    workers.pop(w.slot, None)
                    if w.entry is not None:
                        why = (f"crashed: signal {-rc} ({_signal_name(-rc)})" if rc is not None and rc < 0
                               else f"crashed: worker exited with status {rc}")
                        failed(w, why, "Crash")
                        startup_failures = 0
                    elif not w.ready:
                        startup_failures += 1
                        if startup_failures >= 3:
                            raise RuntimeError(f"coverage: worker failed to start 3 times (exit status {rc}); "
                                               f"see {log_dir}/worker-{w.slot}.log")
                    if pending:
                        spawn(w.slot)
                elif msg.get("event") == "ready":
                    w.ready = True
                    startup_failures = 0
                    feed(w)
                elif msg.get("event") == "start":
                    w.started = time.time()
                elif msg.get("event") == "done":
                    res = msg["result"]
                    record(w.idx, res)
                    progress.finish(w.slot, res["class"])
                    w.entry = None
                    w.ran += 1
                    feed(w)
            now = time.time()
            for slot, w in list(workers.items()):
                if w.dead:
                    continue
                if w.entry is not None and now - w.started > op_timeout:
                    w.kill()
                    workers.pop(slot, None)
                    failed(w, f"timeout: no result after {op_timeout:g} s", "Timeout")
                    if pending:
                        spawn(slot)
                elif not w.ready and now - w.started > startup_timeout:
                    w.kill()
                    workers.pop(slot, None)
                    startup_failures += 1
                    if startup_failures >= 3:
                        raise RuntimeError("coverage: workers do not start (start-up timeout)")
                    spawn(slot)
            progress.update()
    finally:
        for w in list(workers.values()):
            w.kill()
    return results


def run_inprocess(entries, opts, progress=None, on_result=None):
    """Run entries in this process (no crash isolation)."""
    progress = progress or Progress(len(entries), enabled=False)
    results = []
    for e in entries:
        progress.start(0, e["id"])
        res = json_safe(_run(e, opts))
        results.append(res)
        progress.finish(0, res["class"])
        if on_result:
            on_result(res)
    return results
