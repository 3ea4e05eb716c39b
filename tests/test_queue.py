"""The device queue (queue.py): kernels run asynchronously, in order, and the host waits before
it touches device memory. Every test compares with native PyTorch. The queue is held
(`Queue.hold`) while a test issues its ops, so that the kernels are certain not to have run
when the op under test comes: a read must then wait for the release (the queue's `waits`
counter), and ops that should not wait must be issued before the release (their issue time, and
`waits` unchanged). A result that came out right because everything happened to run in turn
would not pass these checks."""

import os
import re
import subprocess
import sys
import textwrap
import threading
import time

import iree.runtime as rt
import pytest
import torch
import torch.nn.functional as F

import torch_mlir_eager
from torch_mlir_eager import TorchMLIRTensor
from torch_mlir_eager.device import get_device
from torch_mlir_eager.queue import DeviceQueueError, MAX_IN_FLIGHT, Queue

pytestmark = pytest.mark.skipif(Queue.synchronous, reason="$TORCH_MLIR_EAGER_SYNC=1")

# a convolution big enough to run on the thread pool for a few milliseconds: the ops after it
# are issued while it runs
BIG = dict(x=(1, 64, 56, 56), w=(128, 64, 3, 3))


def queue():
    return get_device().queue


def big_inputs():
    return torch.randn(*BIG["x"]), torch.randn(*BIG["w"]) / 24


def close(got, want, tol=1e-4):
    assert isinstance(got, TorchMLIRTensor)
    h = got._host()
    assert h.shape == want.shape and h.dtype == want.dtype
    torch.testing.assert_close(h, want, rtol=tol, atol=tol * max(1.0, want.abs().max().item()))


HOLD_S = 0.5


class Held:
    """What happened while fn() ran with the queue held for HOLD_S (queue.hold)."""

    def __init__(self, fn, hold=True):
        q = queue()
        q.drain()
        behind, waits = q.behind, q.waits
        timer = threading.Timer(HOLD_S, q.hold() if hold else (lambda: None))
        timer.start()
        start = time.perf_counter()
        try:
            self.out = fn()
        finally:
            self.issue_s = time.perf_counter() - start
            timer.join()
        self.behind, self.waits = q.behind - behind, q.waits - waits

    def ran_ahead(self):
        """fn issued everything without waiting for the queue."""
        return self.waits == 0 and self.issue_s < HOLD_S


def behind_during(fn, hold=True):
    """fn()'s result and how many kernels it issued while earlier ones had not run."""
    h = Held(fn, hold)
    return h.out, h.behind


def chain(x, w, n=3):
    """Convolutions, each followed by small ops that read its result (batch norm's arithmetic,
    relu, an add): on the hybrid device the small ones run inline when the queue is empty and are
    queued behind the convolution when it is not."""
    y = x
    for _ in range(n):
        z = F.conv2d(y, w[:, : y.shape[1]], padding=1)[:, :64]
        y = torch.relu(z * 0.5 + 0.1) + y
    return y


def test_a_chain_issued_ahead_of_the_device_gives_native_values(stats):
    x, w = big_inputs()
    for _ in range(2):  # builds the kernels, and their contexts on the thread pool (made once, waiting)
        Held(lambda: chain(TorchMLIRTensor(x), TorchMLIRTensor(w)))
    torch_mlir_eager.reset_stats()
    h = Held(lambda: chain(TorchMLIRTensor(x), TorchMLIRTensor(w)))
    close(h.out, chain(x, w))
    s = stats()
    assert s["fallback_calls"] == 0 and s["compiled_calls"] >= 12
    assert h.ran_ahead(), (h.waits, h.issue_s)
    assert h.behind >= 12, h.behind  # the small ops too: queued behind the convolutions


def _read(read, got, want):
    """Read `got` on the host the way `read` names, and check it against `want`."""
    if read == "cpu":
        torch.testing.assert_close(got.cpu(), want)
    elif read == "item":
        assert got.sum().item() == pytest.approx(want.sum().item(), rel=1e-4)
    elif read == "print":
        printed = [float(v) for v in re.findall(r"-?\d+\.\d+(?:e[-+]\d+)?", str(got[0, 3, 5, :3]))]
        assert printed == pytest.approx(want[0, 3, 5, :3].tolist(), rel=1e-3, abs=1e-3)
    elif read == "tolist":
        assert got[0, 5, 7, :4].tolist() == pytest.approx(want[0, 5, 7, :4].tolist(), rel=1e-4, abs=1e-5)
    elif read == "numpy":
        torch.testing.assert_close(torch.from_numpy(got.cpu().numpy()), want)
    elif read == "bool":
        assert bool((got > 1e9).any()) is False and bool((got >= 0).all()) is True
    elif read == "equal":
        assert torch.equal(got, got.clone()) and not torch.equal(got, got + 1)
    elif read == "fallback":  # an op without a kernel: PyTorch on host copies
        v, i = torch.kthvalue(got.flatten()[:100], 3)
        wv, wi = torch.kthvalue(want.flatten()[:100], 3)
        assert v.item() == pytest.approx(wv.item(), rel=1e-4, abs=1e-6)
    elif read == "index check":  # the bounds check reads the indices' range (Device.read_int64)
        table_host = torch.randn(10, 4)
        table = TorchMLIRTensor(table_host)
        i = (got[0, 0, 0, :8] * 0 + 3).long()  # 3s, from a queued result
        torch.testing.assert_close(table[i].cpu(), table_host[torch.full((8,), 3)])
        bad = (got[0, 0, 0, :8] * 0 + 10).long()  # out of range
        with pytest.raises(IndexError):
            table[bad]
    else:
        raise AssertionError(read)


@pytest.mark.parametrize("read", ["cpu", "item", "print", "tolist", "numpy", "bool", "equal", "fallback",
                                  "index check"])
def test_every_host_read_waits_for_the_queue(read, stats):
    x, w = big_inputs()
    dx, dw = TorchMLIRTensor(x), TorchMLIRTensor(w)
    want = F.conv2d(x, w, padding=1).relu()
    for _ in range(2):  # builds every kernel and context; then the read is the only wait
        Held(lambda: _read(read, F.conv2d(dx, dw, padding=1).relu(), want))
    h = Held(lambda: _read(read, F.conv2d(dx, dw, padding=1).relu(), want))
    assert h.waits >= 1 and h.issue_s >= HOLD_S * 0.9, (h.waits, h.issue_s)  # the read waited
    assert stats()["compiled_calls"] > 0


def issue(dx, dw, write):
    y = F.conv2d(dx, dw, padding=1)
    z = y * 2
    if write == "add_":
        dx.add_(100.0)
        dw.mul_(-1.0)
    elif write == "copy_ from host":
        dx.copy_(torch.zeros(dx.shape))
        dw.copy_(torch.zeros(dw.shape))
    elif write == "view fill_":
        dx[0, :32].fill_(7.0)
        dw.view(-1)[:100].zero_()
    else:
        dx.data = TorchMLIRTensor(torch.zeros(dx.shape))
    return y, z


@pytest.mark.parametrize("write", ["add_", "copy_ from host", "view fill_", ".data ="])
def test_writes_after_queued_reads_do_not_reach_them(write, stats):
    """A queued kernel reads the value its input had when the op was issued, whatever is
    written to the input afterwards (in place on the device, from the host, through a view).
    A write through a view waits for the queue (its kernel's input is copied on the host:
    test_inputs_iree_may_write_are_copied_after_the_queue); the others are issued ahead."""
    x, w = big_inputs()
    want = F.conv2d(x, w, padding=1)
    for _ in range(3):  # the last time, every kernel and context exists
        dx, dw = TorchMLIRTensor(x.clone()), TorchMLIRTensor(w.clone())
        h = Held(lambda: issue(dx, dw, write))
        y, z = h.out
        close(y, want)
        close(z, want * 2)
    if write == "view fill_":
        assert h.waits >= 1
    else:
        assert h.ran_ahead(), (h.waits, h.issue_s)
    assert h.behind >= 2


def test_inputs_iree_may_write_are_copied_after_the_queue(stats, monkeypatch):
    """A kernel whose input IREE may compute in (a write through a view, cumsum) gets a copy of
    it, made on the host once the kernel computing it has run (IREE's queue copy cannot read a
    result still queued): the copy waits for the queue."""
    from torch_mlir_eager.device import Device

    copies = []
    real_copy = Device.copy
    monkeypatch.setattr(Device, "copy", lambda self, bv: copies.append(bv) or real_copy(self, bv))
    x, w = big_inputs()
    dx, dw = TorchMLIRTensor(x), TorchMLIRTensor(w)

    def ops(a, b):
        y = F.conv2d(a, b, padding=1)
        y[:, :3] += 1
        return y, torch.cumsum(y, 1)

    want_y, want_c = ops(x, w)
    for _ in range(3):
        h = Held(lambda: ops(dx, dw))
        close(h.out[0], want_y)
        close(h.out[1], want_c, 1e-3)
    copies.clear()
    h = Held(lambda: ops(dx, dw))
    assert copies, "no input was copied: the test does not reach Device.copy"
    assert h.waits >= 1 and h.issue_s >= HOLD_S * 0.9, (h.waits, h.issue_s)
    close(h.out[0], want_y)
    close(h.out[1], want_c, 1e-3)


def test_a_new_kernels_first_call_on_queued_inputs(stats, monkeypatch, inprocess_compiler):
    """A kernel's first call (on copies of its inputs; its results' memory then compared with
    theirs, Device.overlap, while the kernel runs on the thread pool), with its input still
    queued. A private disk cache (the fixture): no earlier process's verdict skips the call."""
    from torch_mlir_eager.device import Device

    overlaps = []
    real = Device.overlap
    monkeypatch.setattr(Device, "overlap", lambda self, a, b: overlaps.append(1) or real(self, a, b))
    x, w = big_inputs()
    w2 = torch.randn(72, 128, 3, 3) / 34  # a shape no other test builds
    dx, dw, dw2 = TorchMLIRTensor(x), TorchMLIRTensor(w), TorchMLIRTensor(w2)
    h = Held(lambda: F.conv2d(F.conv2d(dx, dw, padding=1), dw2, padding=1))
    assert overlaps, "no first call was probed"
    close(h.out, F.conv2d(F.conv2d(x, w, padding=1), w2, padding=1), 1e-3)


def test_a_new_kernel_loads_while_the_queue_is_busy(stats):
    """Loading a module (its initializer allocates on the queue) while kernels are queued, and
    a shape-generic kernel (command buffers recorded per call) over a result still queued."""
    x, w = big_inputs()
    dx, dw = TorchMLIRTensor(x), TorchMLIRTensor(w)
    F.conv2d(dx, dw, padding=1).cpu()
    for op in (torch.sinh, torch.erfc, lambda t: t.addcmul_(t, t, value=0.5), lambda t: torch.atan2(t, t + 1)):
        op(F.conv2d(dx, dw, padding=1)).cpu()  # built (perhaps longer than the hold) and on disk
        torch_mlir_eager.clear_kernel_cache()  # so that op's kernel is loaded from disk below
        F.conv2d(dx, dw, padding=1).cpu()  # the convolution's reloaded before
        torch_mlir_eager.reset_stats()
        h = Held(lambda: op(F.conv2d(dx, dw, padding=1)))
        close(h.out, op(F.conv2d(x, w, padding=1)))
        assert stats()["cache_misses"] >= 1 and stats()["fallback_calls"] == 0
        assert h.waits >= 1  # the load waited for the queue


@pytest.mark.parametrize("held", [True, False])
def test_kernels_that_read_no_input_keep_their_place(held, stats):
    """IREE's kernel waits for its wait fence only through the inputs it reads: fill_, zero_ and
    the like signal at once. Issued behind a running convolution, they must not let the
    kernels after them run before it (a read of the convolution's result was garbage, or the
    timeline failed)."""
    x, w = big_inputs()
    dx, dw = TorchMLIRTensor(x), TorchMLIRTensor(w)
    other = TorchMLIRTensor(torch.randn(64, 64))

    def ops():
        y = F.conv2d(dx, dw, padding=1)
        other.zero_()
        o2 = other.fill_(2.5)
        z = torch.zeros_like(y[:, :3])
        return y.relu(), o2 + 1, z

    want = F.conv2d(x, w, padding=1).relu()
    for _ in range(3):
        h = Held(ops, hold=held)
        got, o2, z = h.out
        close(got, want)
        close(o2, torch.full((64, 64), 3.5))
        close(z, torch.zeros(1, 3, 56, 56))
    if held:
        assert h.ran_ahead() and h.behind >= 4, (h.waits, h.issue_s, h.behind)


def test_threads_issuing_at_once(stats):
    x, w = big_inputs()
    want = chain(x, w, 2)
    chain(TorchMLIRTensor(x), TorchMLIRTensor(w), 2).cpu()
    results, errors = {}, []

    def run(i):
        try:
            for _ in range(3):
                results[i] = chain(TorchMLIRTensor(x), TorchMLIRTensor(w), 2).cpu()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == 3
    for got in results.values():
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)


def test_the_host_running_far_ahead_is_bounded(stats):
    """Without a host read the host can issue faster than the device runs: at most
    MAX_IN_FLIGHT kernels are queued at once."""
    x = torch.randn(1, 64, 28, 28)
    w = torch.randn(64, 64, 3, 3) / 24
    dx, dw = TorchMLIRTensor(x), TorchMLIRTensor(w)
    q = queue()
    q.drain()
    worst = 0
    y, want = dx, x
    for _ in range(3 * MAX_IN_FLIGHT // 2):
        y = F.conv2d(y, dw, padding=1) * 0.5
        want = F.conv2d(want, w, padding=1) * 0.5
        worst = max(worst, q._issued - q._semaphore.query())
    close(y, want, 1e-3)
    assert worst <= MAX_IN_FLIGHT + 1, worst


def test_a_call_that_fails_as_it_is_issued_leaves_the_queue_usable(stats, monkeypatch):
    """An invoke that raises (here: a fake VM context) must not leave later kernels waiting
    for a fence nobody signals."""
    x, w = big_inputs()
    dx, dw = TorchMLIRTensor(x), TorchMLIRTensor(w)
    F.conv2d(dx, dw, padding=1).cpu()
    q = queue()

    class Broken:
        def invoke(self, *args):
            raise RuntimeError("invoke failed")

    y = F.conv2d(dx, dw, padding=1)  # queued
    with pytest.raises(RuntimeError, match="invoke failed"):
        q.submit(lambda busy: Broken(), None, rt.VmVariantList(2), None)
    close(y, F.conv2d(x, w, padding=1))
    close(F.conv2d(dx, dw, padding=1).relu(), F.conv2d(x, w, padding=1).relu())


def test_a_kernel_that_fails_on_the_device_is_reported_at_the_next_wait(stats):
    x, w = big_inputs()
    dx, dw = TorchMLIRTensor(x), TorchMLIRTensor(w)
    F.conv2d(dx, dw, padding=1).cpu()
    q = queue()
    F.conv2d(dx, dw, padding=1)
    q._semaphore.fail("injected device failure")  # as a kernel failing on the thread pool would
    with pytest.raises(DeviceQueueError, match="injected device failure"):
        q.drain()
    # a new timeline: the device goes on
    close(F.conv2d(dx, dw, padding=1).relu(), F.conv2d(x, w, padding=1).relu())


def test_kernel_timing_waits_for_each_kernel(stats):
    x, w = big_inputs()
    dx, dw = TorchMLIRTensor(x), TorchMLIRTensor(w)
    F.conv2d(dx, dw, padding=1).cpu()
    with torch_mlir_eager.kernel_timing() as records:
        F.conv2d(dx, dw, padding=1)
    (name, seconds), = records
    assert "convolution" in name or "conv2d" in name
    assert seconds > 2e-4  # the kernel's run, not only its issue (about 20 µs)


def test_training_steps_against_native(stats):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
                                torch.nn.Conv2d(32, 16, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(16 * 20 * 20, 10))
    import copy

    native = copy.deepcopy(model)
    torch_mlir_eager.to_device(model)
    opt, nopt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), torch.optim.SGD(native.parameters(), lr=0.05, momentum=0.9)
    x, t = torch.randn(4, 16, 20, 20), torch.randint(0, 10, (4,))
    dx, dt = TorchMLIRTensor(x), TorchMLIRTensor(t)
    behind = queue().behind
    for _ in range(3):
        opt.zero_grad(), nopt.zero_grad()
        F.cross_entropy(model(dx), dt).backward()
        F.cross_entropy(native(x), t).backward()
        opt.step(), nopt.step()
    for (name, p), q in zip(model.named_parameters(), native.parameters()):
        torch.testing.assert_close(p.cpu(), q.detach(), rtol=1e-3, atol=1e-4, msg=name)
    assert queue().behind > behind


def test_exit_with_kernels_still_queued(tmp_path):
    """A process that ends with kernels queued and never read exits cleanly."""
    script = textwrap.dedent("""
        import torch, torch.nn.functional as F
        from torch_mlir_eager import TorchMLIRTensor
        x, w = TorchMLIRTensor(torch.randn(1, 64, 56, 56)), TorchMLIRTensor(torch.randn(64, 64, 3, 3))
        y = x
        for _ in range(20):
            y = F.conv2d(y, w, padding=1).relu()
        print("issued")
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == "issued"
    assert "leak" not in p.stderr.lower(), p.stderr[-2000:]


def test_synchronous_mode_gives_the_same_values(stats, monkeypatch):
    x, w = big_inputs()
    monkeypatch.setattr(Queue, "synchronous", True)
    got, behind = behind_during(lambda: chain(TorchMLIRTensor(x), TorchMLIRTensor(w)), hold=False)
    close(got, chain(x, w))
    assert behind == 0


def test_a_users_execution_model_flag_runs_synchronously(tmp_path):
    """A module compiled without fences (the user's own `--iree-execution-model`) still runs
    compiled, with native values: it is called once the queue is empty."""
    script = textwrap.dedent("""
        import torch, torch.nn.functional as F, torch_mlir_eager
        from torch_mlir_eager import TorchMLIRTensor
        x, w = torch.randn(1, 16, 20, 20), torch.randn(32, 16, 3, 3)
        got = F.conv2d(TorchMLIRTensor(x), TorchMLIRTensor(w), padding=1).relu().sum(1)
        torch.testing.assert_close(got.cpu(), F.conv2d(x, w, padding=1).relu().sum(1), rtol=1e-4, atol=1e-4)
        s = torch_mlir_eager.stats()
        print(s["compiled_calls"], s["fallback_calls"])
    """)
    env = dict(os.environ, TORCH_MLIR_EAGER_CACHE_DIR=str(tmp_path),
               TORCH_MLIR_EAGER_COMPILE_FLAGS="--iree-execution-model=async-internal")
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.split() == ["3", "1"]  # conv, relu, sum compiled; the copy to the host
