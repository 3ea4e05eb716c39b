"""The compiler out of the user's process: crashes and hangs of the compiler stack end only a
worker; known kernels load in a new process without the compiler stack; scalars that vary
between calls are kernel arguments; caches are bounded. Results compared with native PyTorch."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import torch_mlir_eager
from torch_mlir_eager import TorchMLIRTensor

HERE = os.path.dirname(os.path.abspath(__file__))


def dev(x):
    return TorchMLIRTensor(x)


def run_script(code, cache_dir, timeout=900, **env):
    """Run `code` in a new Python process with the kernel cache in `cache_dir`; its stdout."""
    full_env = dict(os.environ, TORCH_MLIR_EAGER_CACHE_DIR=str(cache_dir), **env)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


# ---- inputs on which the compiler stack crashes -------------------------------------------------
CRASHERS = {
    # each of these ended the user's process with SIGSEGV or SIGFPE when lowered in it
    "max_pool2d_one_int_kernel": (
        lambda x: torch.nn.MaxPool2d(kernel_size=(6,), stride=(2, 2), padding=(1, 1))(x),
        lambda: [torch.randn(2, 4, 20, 20)],
    ),
    "max_pool3d_one_int_kernel_dilated": (
        lambda x: torch.nn.MaxPool3d(kernel_size=(3,), stride=1, dilation=2)(x),
        lambda: [torch.randn(1, 2, 9, 9, 9)],
    ),
    "mm_int8": (
        lambda a, b: torch.mm(a, b),
        lambda: [torch.randint(-5, 5, (4, 6), dtype=torch.int8), torch.randint(-5, 5, (6, 3), dtype=torch.int8)],
    ),
    "mm_int8_empty_contraction": (
        lambda a, b: torch.mm(a, b),
        lambda: [torch.zeros(4, 0, dtype=torch.int8), torch.zeros(0, 3, dtype=torch.int8)],
    ),
}


@pytest.mark.parametrize("name", sorted(CRASHERS))
def test_compiler_crashes_are_fallbacks(name, stats):
    fn, make = CRASHERS[name]
    inputs = make()
    try:
        want, raised = fn(*[x.clone() for x in inputs]), None
    except Exception as e:  # PyTorch rejects the input: so must the device
        raised = type(e)
    if raised is not None:
        with pytest.raises(raised):
            fn(*[dev(x) for x in inputs])
        return
    got = fn(*[dev(x) for x in inputs])
    h = got._host()
    assert h.dtype == want.dtype and h.shape == want.shape
    torch.testing.assert_close(h, want, atol=1e-5, rtol=1e-5)
    s = stats()
    # whatever the stack does with it, this process lives on and the answer is right
    for op, fb in s["fallbacks"].items():
        assert fb["step"] != "internal", (op, fb)


CRASH_REMEMBERED = """
import torch, torch_mlir_eager
from torch_mlir_eager import TorchMLIRTensor
a, b = torch.zeros(4, 0, dtype=torch.int8), torch.zeros(0, 3, dtype=torch.int8)
got = torch.mm(TorchMLIRTensor(a), TorchMLIRTensor(b))
assert torch.equal(got.cpu(), torch.mm(a, b))
s = torch_mlir_eager.stats()
fb = s["fallbacks"]["aten.mm.default"]
print(fb["step"], s["compile_failures"], "SIGFPE" in fb["reason"] or "died" in fb["reason"])
"""


def test_a_crash_is_remembered_on_disk_and_the_worker_restarted(tmp_path):
    first = run_script(CRASH_REMEMBERED + """
x = torch.randn(3, 3)
assert torch.allclose(torch.sin(TorchMLIRTensor(x)).cpu(), torch.sin(x))  # a restarted worker compiles it
assert torch_mlir_eager.stats()["kernels_compiled"] == 1
""", tmp_path)
    assert first.split() == ["crash", "1", "True"]
    second = run_script(CRASH_REMEMBERED, tmp_path)  # the verdict comes from the disk index
    assert second.split() == ["crash", "0", "True"]


def test_a_build_past_the_time_limit_is_a_fallback(tmp_path):
    out = run_script("""
        import torch, torch_mlir_eager
        from torch_mlir_eager import TorchMLIRTensor
        x = torch.randn(5, 3)
        got = torch.cos(TorchMLIRTensor(x))
        assert torch.allclose(got.cpu(), torch.cos(x))
        fb = torch_mlir_eager.stats()["fallbacks"]["aten.cos.default"]
        print(fb["step"])
    """, tmp_path, TORCH_MLIR_EAGER_COMPILE_TIMEOUT="0.01")
    assert out.split() == ["timeout"]


# ---- warm start -------------------------------------------------------------------------------
WARM = """
import sys, time, torch, torch_mlir_eager
from torch_mlir_eager import TorchMLIRTensor, compile_service
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                          torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 10)).eval()
x = torch.randn(2, 3, 16, 16)
want = net(x)
dnet = torch_mlir_eager.to_device(net)
got = dnet(TorchMLIRTensor(x))
torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4)
s = torch_mlir_eager.stats()
assert s["fallback_calls"] == 1, s["fallbacks"]  # the .cpu() above
heavy = [m for m in ("torch_mlir", "iree.compiler", "torch._dynamo") if m in sys.modules]
print(s["kernels_compiled"], s["disk_cache_hits"], compile_service._service is not None, ",".join(heavy) or "-")
"""


def test_a_warm_start_loads_kernels_without_the_compiler_stack(tmp_path):
    cold = run_script(WARM, tmp_path).split()
    assert int(cold[0]) > 0 and cold[2] == "True"
    warm = run_script(WARM, tmp_path).split()
    # every kernel from the disk index; no worker started; neither torch-mlir, nor the IREE
    # compiler, nor the machinery of fake tensors (which imports torch._dynamo) imported
    assert warm == ["0", cold[0], "False", "-"], (cold, warm)


# ---- scalars that vary between calls --------------------------------------------------------------
def _train(opt_factory, steps, scheduler=None):
    """Train a small MLP natively and on the device side by side; the kernels each device step
    compiled (or loaded from disk)."""
    torch_mlir_eager.clear_kernel_cache()  # step 0 loads or compiles its kernels
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    import copy

    dmodel = torch_mlir_eager.to_device(copy.deepcopy(model))
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    dx, dy = dev(x), dev(y)
    opts = [opt_factory(model.parameters()), opt_factory(dmodel.parameters())]
    scheds = [scheduler(o) for o in opts] if scheduler else [None, None]
    built_per_step = []
    for step in range(steps):
        for m, opt, sched, xx, yy in ((model, opts[0], scheds[0], x, y), (dmodel, opts[1], scheds[1], dx, dy)):
            if m is dmodel:
                torch_mlir_eager.reset_stats()
            loss = torch.nn.functional.cross_entropy(m(xx), yy)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
        s = torch_mlir_eager.stats()
        assert s["fallback_calls"] == sum(v["count"] for k, v in s["fallbacks"].items() if v["step"] == "transfer"), s["fallbacks"]
        built_per_step.append(s["kernels_compiled"] + s["disk_cache_hits"])
    for p, q in zip(model.parameters(), dmodel.parameters()):
        torch.testing.assert_close(q.detach()._host(), p.detach(), atol=1e-5, rtol=1e-4)
    return built_per_step


OPTIMIZERS = {
    # SGD's first step copies the gradient into the momentum buffer; its second step is the
    # first to update it (mul_, add_): after that, nothing new
    "sgd_momentum_cosine": (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
                            lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10), 2),
    "adam": (lambda ps: torch.optim.Adam(ps, lr=0.01), None, 1),
    "adamw_step_lr": (lambda ps: torch.optim.AdamW(ps, lr=0.01),
                      lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5), 1),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_training_with_changing_scalars_compiles_nothing_after_its_first_step(name):
    """Learning rates, momentum and Adam's bias corrections change every step: they are
    kernel arguments, so once every op of a step has run once, steps compile nothing."""
    opt, sched, structural_steps = OPTIMIZERS[name]
    built = _train(opt, 10, sched)
    assert built[0] > 0
    assert sum(built[structural_steps:]) == 0, built


SCALAR_OPS = {
    "add_alpha": lambda a, v: torch.add(a, a, alpha=v),
    "mul_scalar": lambda a, v: a * v,
    "rsub": lambda a, v: v - a,
    "clamp": lambda a, v: a.clamp(-v, v),
    "leaky_relu": lambda a, v: torch.nn.functional.leaky_relu(a, v),
    "addcdiv": lambda a, v: torch.addcdiv(a, a, a.abs() + 1, value=v),
    "lerp": lambda a, v: torch.lerp(a, a * 2, v),
    "where_scalar": lambda a, v: torch.where(a > 0, a, v),
    "fill_": lambda a, v: a.clone().fill_(v),
    "int_add": lambda a, v: (a * 10).long() + int(v * 10),
    # ops whose scalars stay in the key: each value its own kernel, still right
    "batch_norm_eps": lambda a, v: torch.nn.functional.batch_norm(a, None, None, training=True, eps=abs(v) + 1e-5),
    "pow": lambda a, v: a.abs() ** v,
    "norm": lambda a, v: torch.linalg.vector_norm(a, ord=[2.0, float("inf"), 1.0, 0.0, 3.0][int(abs(v) * 2) % 5]),
}


@pytest.mark.parametrize("name", sorted(SCALAR_OPS))
def test_kernels_reused_across_scalar_values_give_native_results(name, stats):
    fn = SCALAR_OPS[name]
    a = torch.randn(6, 5)
    for v in (0.5, 1.75, -2.25, 0.0, 3.0):
        want = fn(a.clone(), v)
        got = fn(dev(a), v)
        torch.testing.assert_close(got._host(), want, atol=1e-5, rtol=1e-5)
    s = stats()
    assert s["fallback_calls"] == 0, s["fallbacks"]


def test_a_scalar_becomes_a_kernel_argument(stats):
    a = dev(torch.randn(7, 3))
    (a * 0.25).cpu()
    torch_mlir_eager.reset_stats()
    for v in (0.5, 1.5, 2.5, -7.0):
        (a * v)
    s = stats()
    assert s["kernels_compiled"] == 0 and s["cache_misses"] == 0 and s["compiled_calls"] == 4, s


# ---- bounded caches -------------------------------------------------------------------------------
def test_the_view_memo_is_bounded(monkeypatch, stats):
    from torch_mlir_eager import views

    monkeypatch.setattr(views, "MEMO_SIZE", 50)
    x = dev(torch.randn(400))
    for i in range(300):
        torch.testing.assert_close(x[i: i + 3]._host(), x._host()[i: i + 3])
    assert views.memo_size() <= 50
    assert stats()["evictions"]["view_memo"] >= 250


def test_the_kernel_cache_is_bounded(monkeypatch, stats):
    from torch_mlir_eager.kernel_cache import CACHE

    monkeypatch.setattr(torch_mlir_eager.config.config, "flat_kernels", False)  # a kernel per shape

    monkeypatch.setattr(CACHE, "max_entries", 20)
    for n in range(1, 40):
        x = torch.randn(n)
        torch.testing.assert_close(torch.exp(dev(x))._host(), torch.exp(x))
    assert len(CACHE) <= 20
    assert stats()["evictions"]["kernels"] >= 19
    x = torch.randn(1)  # evicted long ago: loaded again from the disk index, not compiled
    torch_mlir_eager.reset_stats()
    torch.testing.assert_close(torch.exp(dev(x))._host(), torch.exp(x))
    s = stats()
    assert s["kernels_compiled"] == 0 and s["disk_cache_hits"] == 1, s


# ---- precompile -----------------------------------------------------------------------------------
def test_precompile_builds_every_kernel_a_call_needs(stats):
    import copy

    torch_mlir_eager.clear_kernel_cache()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
                              torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(6 * 5 * 5, 4)).eval()
    x = torch.randn(2, 3, 10, 10).to(memory_format=torch.channels_last)
    want = net(x)
    dnet = torch_mlir_eager.to_device(copy.deepcopy(net))
    before = [p._host().clone() for p in dnet.parameters()]
    summary = torch_mlir_eager.precompile(dnet, x, progress=False)
    assert summary["kernels"] >= 5 and summary["failed"] == 0 and summary["stopped_at"] is None, summary
    for p, b in zip(dnet.parameters(), before):  # the dry run wrote nothing
        assert torch.equal(p._host(), b)
    torch_mlir_eager.reset_stats()
    got = dnet(dev(x))
    s = stats()
    assert s["cache_misses"] == 0 and s["kernels_compiled"] == 0 and s["fallback_calls"] == 0, s
    torch.testing.assert_close(got._host(), want, atol=1e-4, rtol=1e-4)


def test_precompile_stops_at_a_value_read_and_builds_what_it_found():
    def fn(a):
        b = (a * 3).exp()
        if b.sum().item() > 0:  # needs a value: the dry run stops here
            return b.log()
        return b

    summary = torch_mlir_eager.precompile(fn, torch.randn(4, 9), progress=False)
    assert summary["stopped_at"] and "_local_scalar_dense" in summary["stopped_at"], summary
    assert summary["kernels"] >= 3  # mul, exp, sum
    x = torch.randn(4, 9)
    torch.testing.assert_close(fn(dev(x))._host(), fn(x), atol=1e-5, rtol=1e-5)


def test_the_worker_is_this_packages_whatever_the_working_directory(tmp_path):
    """A `torch_mlir_eager` folder in the working directory (another checkout) must not give
    the compile worker: `python -m` would put it first on sys.path."""
    fake = tmp_path / "cwd" / "torch_mlir_eager"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "compile_worker.py").write_text("import sys; sys.exit(7)\n")
    code = textwrap.dedent("""
        import sys
        sys.path.insert(0, %r)
        import torch, torch_mlir_eager
        from torch_mlir_eager import TorchMLIRTensor
        x = torch.randn(5, 3)
        assert torch.allclose(torch.cos(TorchMLIRTensor(x)).cpu(), torch.cos(x))
        s = torch_mlir_eager.stats()
        print(s["kernels_compiled"], s["fallback_calls"])
    """ % os.path.dirname(os.path.dirname(os.path.abspath(torch_mlir_eager.__file__))))
    out = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path / "cwd"), capture_output=True, text=True,
                         timeout=600, env=dict(os.environ, TORCH_MLIR_EAGER_CACHE_DIR=str(tmp_path / "cache")))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["1", "1"]  # cos compiled; the copy to the host
