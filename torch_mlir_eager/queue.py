"""The device queue: kernels run asynchronously, in the order they were issued.

Every kernel is compiled with IREE's `async-external` execution model: its `main` takes a wait
fence and a signal fence and returns as soon as its work is queued. The queue chains every
kernel of a device on one timeline semaphore (kernel n waits for value n - 1 and signals n), so
the host issues the next op while the thread pool still runs the last one, and the pool is
never left idle between two ops of a model (on the 2-vCPU guest this project is measured on, a
woken idle vCPU costs 1-5 ms; a ResNet18 forward stalled about 6 times).

The order is total, so a kernel always sees the results of every kernel issued before it, and
device buffers are values (a write makes a new buffer, DeviceStorage.replace): there is no
write-after-read hazard to track. What the host must do is wait (`drain`) before it touches a
buffer's memory itself: reading it (Device.download, read_int64), copying it on the host
(Device.copy), comparing addresses (Device.overlap), and loading a module (its initializer
allocates on the queue and records command buffers at once). Those are the only places the
host reads device memory; everything else passes buffers from kernel to kernel.

On the hybrid device a small kernel runs inline on local-sync when the queue is empty, and is
queued on local-task behind the others when it is not (`submit`'s `choose`)."""

from __future__ import annotations

import os
import threading

import iree.runtime as rt

ENV_SYNC = "TORCH_MLIR_EAGER_SYNC"  # "1": every kernel is waited for as it is issued (debugging, A/B)

# Kernels in flight after which `submit` waits for the older half: bounds the memory a host
# running far ahead of the device holds in queued work (fences, command buffers, results).
MAX_IN_FLIGHT = 128


class DeviceQueueError(RuntimeError):
    """A queued kernel failed on the device; the values it and the kernels queued after it were
    to compute are lost."""


class Queue:
    """The order of every kernel on one device (see the module's docstring)."""

    # wait for each kernel as it is issued: an error then surfaces at the op that caused it,
    # and benchmarks/device_queue.py compares the two in one process
    synchronous = os.environ.get(ENV_SYNC, "").strip() == "1"

    def __init__(self, hal):
        self._hal = hal
        # Taken around each submission: the fences a kernel gets and the order it is queued in
        # must agree when several threads issue ops. Uncontended, it costs about 0.1 µs.
        self._lock = threading.RLock()
        self._barrier = rt.HalCommandBuffer(hal, binding_capacity=0, begin=True)  # empty: a queue barrier
        self._barrier.end()
        self.calls = 0  # kernels issued
        self.behind = 0  # of them, issued while earlier ones still ran (the host ran ahead)
        self.waits = 0  # host waits that found kernels still running
        self._restart()

    def _restart(self):
        """A fresh timeline (at start, and after a failure left the old one failed)."""
        self._semaphore = self._hal.create_semaphore(0)
        # the value the last queued kernel signals, and its fence (the next one's wait): one
        # attribute, so that no interrupt can leave the two apart
        self._tail = (0, rt.HalFence.create_at(self._semaphore, 0))

    @property
    def _issued(self) -> int:
        return self._tail[0]

    def busy(self) -> bool:
        """Whether kernels are queued that have not finished."""
        issued = self._issued
        return issued != 0 and self._reached() < issued

    def drain(self) -> None:
        """Wait until every queued kernel has finished: before the host touches device memory."""
        if self.busy():
            with self._lock:
                self._wait(self._issued)

    def _reached(self) -> int:
        try:
            return self._semaphore.query()
        except Exception:  # the timeline failed: _wait says so (and starts a new one)
            with self._lock:
                self._wait(self._issued)
            return self._issued

    def quiesced(self, fn):
        """fn() with the queue empty and nothing queued meanwhile (loading a module)."""
        with self._lock:
            self._wait(self._issued)
            return fn()

    def submit(self, choose, function, args, results, fenced: bool = True) -> None:
        """Queue one call of `function`: `choose(busy)` gives the VM context to invoke it in (on
        the hybrid device, inline when the queue is empty); the call gets the wait and signal
        fences that put it after every kernel queued before it. A module compiled without
        fences (`fenced=False`: a user's `--iree-execution-model` flag) runs once the queue is
        empty, and is finished when the call returns."""
        if not fenced:
            with self._lock:
                self._wait(self._issued)
                choose(False).invoke(function, args, results)
            return

        def issue(busy, wait, signal, value):
            context = choose(busy)
            if not busy:  # everything before it is done: the kernel may signal the timeline itself
                args.push_ref(wait)
                args.push_ref(signal)
                context.invoke(function, args, results)
                return
            # IREE's kernel waits for its wait fence only through the inputs it reads: one whose
            # results read no input (fill_, zero_, a constant) signals at once. Given the
            # timeline's fence, it would move the timeline past kernels still running. So it
            # signals a fence of its own, and a barrier behind both advances the timeline.
            own = self._hal.create_semaphore(0)
            args.push_ref(wait)
            args.push_ref(rt.HalFence.create_at(own, 1))
            context.invoke(function, args, results)
            self._hal.queue_execute(self._barrier, [(self._semaphore, value - 1), (own, 1)],
                                    [(self._semaphore, value)])

        self._issue(issue)

    def copy(self, hal, source, target) -> None:
        """Queue a copy of the whole buffer `source` into `target` on runtime device `hal` (a
        kernel's input that IREE may write: Device.copy), after every kernel queued before."""
        self._issue(lambda busy, wait, signal, value: hal.queue_copy(
            source, target, [(self._semaphore, value - 1)], [(self._semaphore, value)]))

    def _issue(self, op) -> None:
        """`op(busy, wait fence, signal fence, value)` queues one operation that waits for every
        operation queued before it and signals `value` on the timeline when done."""
        with self._lock:
            issued, last = self._tail
            if issued >= MAX_IN_FLIGHT and (issued % (MAX_IN_FLIGHT // 2)) == 0:
                self._wait(issued - MAX_IN_FLIGHT // 2)
            busy = issued != 0 and self._reached() < issued
            signal = rt.HalFence.create_at(self._semaphore, issued + 1)
            try:
                op(busy, last, signal, issued + 1)
            except BaseException:
                # The call may or may not have queued work that signals `signal` later: wait for
                # what came before it and go on with a new timeline, which nothing old signals.
                self._abandon()
                raise
            self._tail = (issued + 1, signal)
            self.calls += 1
            self.behind += busy
            if self.synchronous:
                self._wait(issued + 1)

    def hold(self):
        """For tests: kernels issued from now on wait until the returned `release()` is called,
        so that they are certain to be issued while the queue is busy."""
        with self._lock:
            value = self._issued + 1
            self._tail = (value, rt.HalFence.create_at(self._semaphore, value))
            semaphore = self._semaphore

        def release():
            semaphore.wait(value - 1)  # the value may not pass a kernel still running
            semaphore.signal(value)

        return release

    def _wait(self, value: int) -> None:
        if value <= 0:
            return
        try:
            if self._semaphore.query() < value:
                self.waits += 1
                self._semaphore.wait(value)
        except Exception as e:
            self._restart()
            raise DeviceQueueError(
                f"torch_mlir_eager: a kernel failed on the device after it was queued ({e}); the "
                "results of the kernels queued with it are lost") from e

    def _abandon(self):
        try:
            self._wait(self._issued)
        except DeviceQueueError:
            pass  # the call's own error is the one to report; the timeline is new either way
        self._restart()
