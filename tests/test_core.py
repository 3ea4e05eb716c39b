"""The core path: every behaviour compared against native PyTorch on the same inputs, with the
statistics read to show which calls ran compiled."""

import logging
import threading

import pytest
import torch

import torch_mlir_eager
from torch_mlir_eager import TorchMLIRTensor

aten = torch.ops.aten


def dev(x):
    return TorchMLIRTensor(x)


def assert_same(got, want, atol=1e-5, rtol=1e-5):
    if isinstance(want, (tuple, list)):
        assert isinstance(got, (tuple, list)) and len(got) == len(want)
        for g, w in zip(got, want):
            assert_same(g, w, atol, rtol)
        return
    assert isinstance(got, TorchMLIRTensor), type(got)
    host = got._host()  # not .cpu(): that is an intercepted call (a transfer) of its own
    assert host.dtype == want.dtype and host.shape == want.shape
    torch.testing.assert_close(host, want, atol=atol, rtol=rtol, equal_nan=True)


def run_both(fn, *inputs):
    want = fn(*[x.clone() for x in inputs])
    got = fn(*[dev(x) for x in inputs])
    return got, want


# ---- the tensor --------------------------------------------------------------------------------
def test_wrap_roundtrip_and_metadata():
    x = torch.randn(3, 4)
    t = dev(x)
    assert t.device.type == "iree"
    assert t.shape == x.shape and t.dtype == x.dtype and t.stride() == x.stride()
    assert t.is_contiguous()
    assert torch.equal(t.cpu(), x) and type(t.cpu()) is torch.Tensor
    assert torch.equal(t.to("cpu"), x)
    assert "iree" in repr(t) and "tensor(" in repr(t)
    assert t[1, 2].item() == x[1, 2].item()
    tt = t.t()
    assert tt.stride() == x.t().stride() and tt.is_contiguous() == x.t().is_contiguous()


def test_device_names_a_driver():
    t = TorchMLIRTensor(torch.ones(2), device="local-sync")
    assert t.iree_device.driver == "local-sync"
    assert torch.equal((t + t).cpu(), torch.full((2,), 2.0))
    with pytest.raises(RuntimeError, match="no-such-driver"):
        TorchMLIRTensor(torch.ones(2), device="no-such-driver")


def test_bad_input_is_a_clear_error():
    with pytest.raises(TypeError, match="layout"):
        TorchMLIRTensor(torch.ones(2).to_sparse())


def test_factories_and_to_on_the_iree_device(stats):
    z = torch.zeros(2, 3, device="iree")
    assert isinstance(z, TorchMLIRTensor) and torch.equal(z.cpu(), torch.zeros(2, 3))
    x = torch.randn(4)
    y = x.to("iree")
    assert isinstance(y, TorchMLIRTensor) and torch.equal(y.cpu(), x)


# ---- compiled ops ------------------------------------------------------------------------------
OPS = {
    "add": (lambda a, b: a + b, (3, 4), (3, 4)),
    "sub_alpha": (lambda a, b: torch.sub(a, b, alpha=2), (3, 4), (3, 4)),
    "mul_broadcast": (lambda a, b: a * b, (3, 4), (4,)),
    "div": (lambda a, b: a / (b.abs() + 1), (3, 4), (3, 4)),
    "matmul": (lambda a, b: a @ b, (3, 4), (4, 5)),
    "bmm": (lambda a, b: torch.bmm(a, b), (2, 3, 4), (2, 4, 5)),
    "addmm": (lambda c, a: torch.addmm(c, a, a.t()), (3, 3), (3, 4)),
    "exp_tanh": (lambda a: torch.tanh(a).exp(), (5, 6)),
    "softmax": (lambda a: torch.softmax(a, dim=-1), (4, 7)),
    "sum_dim": (lambda a: a.sum(dim=1, keepdim=True), (4, 7)),
    "mean": (lambda a: a.mean(), (4, 7)),
    "where": (lambda a, b: torch.where(a > b, a, b), (3, 4), (3, 4)),
    "conv2d": (lambda a, w: torch.nn.functional.conv2d(a, w, padding=1, stride=2), (1, 3, 9, 9), (4, 3, 3, 3)),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_runs_compiled(name, stats):
    fn, *shapes = OPS[name]
    got, want = run_both(fn, *[torch.randn(s) for s in shapes])
    assert_same(got, want, atol=1e-4, rtol=1e-4)
    s = stats()
    assert s["compiled_calls"] >= 1 and s["fallback_calls"] == 0, s


DTYPE_CASES = [
    (torch.float32, lambda a, b: a * b + a),
    (torch.float64, lambda a, b: a @ b.t()),
    (torch.float16, lambda a, b: a + b),
    (torch.bfloat16, lambda a, b: a * b),
    (torch.int32, lambda a, b: a * b - a),
    (torch.int64, lambda a, b: (a + b).sum(dim=0)),
    (torch.bool, lambda a, b: (a & b) | ~a),
]


def _make(dtype, shape):
    if dtype == torch.bool:
        return torch.rand(shape) > 0.5
    if dtype.is_floating_point:
        return torch.randn(shape).to(dtype)
    return torch.randint(-50, 50, shape, dtype=dtype)


@pytest.mark.parametrize("dtype,fn", DTYPE_CASES, ids=[str(d) for d, _ in DTYPE_CASES])
def test_dtypes(dtype, fn, stats):
    got, want = run_both(fn, _make(dtype, (4, 5)), _make(dtype, (4, 5)))
    tol = 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-5
    assert_same(got, want, atol=tol, rtol=tol)
    assert stats()["fallback_calls"] == 0, stats()["fallbacks"]


def test_scalars_zero_dim_and_type_promotion(stats):
    i = torch.arange(6).reshape(2, 3)
    f = torch.randn(2, 3)
    cases = [
        (lambda a: a + 1.5, i),  # int tensor + Python float -> default float dtype
        (lambda a: a * 2, i),
        (lambda a: a * torch.tensor(2.5, dtype=torch.float64), i),  # 0-d CPU tensor
        (lambda a: a.half() + a, f),  # f16 + f32 -> f32
        (lambda a: a.sum() + a, f),  # 0-d device tensor
        (lambda a: a > 0.5, f),
    ]
    for fn, x in cases:
        got, want = run_both(fn, x)
        assert_same(got, want)
    assert stats()["fallback_calls"] == 0, stats()["fallbacks"]


def test_mixing_cpu_tensor_follows_device_rules():
    a = dev(torch.ones(3))
    assert torch.equal((a * torch.tensor(3.0)).cpu(), torch.full((3,), 3.0))  # 0-d CPU: allowed
    with pytest.raises(RuntimeError, match="same device"):
        a + torch.ones(3)


def test_non_contiguous_inputs(stats):
    x = torch.randn(6, 8)
    fns = [
        lambda a: a.t() * 2,
        lambda a: a[::2, 1::3] + 1,
        lambda a: a.t() @ a,
        lambda a: a[:, :1].expand(6, 8).exp(),
        lambda a: a.permute(1, 0).contiguous(),
    ]
    for fn in fns:
        got, want = run_both(fn, x)
        assert_same(got, want, atol=1e-4, rtol=1e-4)
        assert got.stride() == want.stride()
    assert stats()["fallback_calls"] == 0, stats()["fallbacks"]


def test_zero_size_tensors(stats):
    e = torch.randn(0, 3)
    x = torch.randn(2, 3)
    assert_same(*run_both(lambda a: a + 1, e))
    assert_same(*run_both(lambda a, b: torch.cat([a, b]), e, x))
    assert_same(*run_both(lambda a: a.sum(dim=0), e))
    assert stats()["fallback_calls"] == 0, stats()["fallbacks"]


# ---- multi-output, lists, optional tensors ------------------------------------------------------
def test_multi_output_ops(stats):
    x = torch.randn(2, 3, 8, 8)
    assert_same(*run_both(lambda a: torch.nn.functional.max_pool2d(a, 2, return_indices=True), x))
    assert_same(*run_both(lambda a: a.max(dim=1), torch.randn(4, 5)))
    assert_same(*run_both(lambda a: torch.sort(a, dim=1), torch.randn(4, 5)))
    w, b, rm, rv = torch.randn(3), torch.randn(3), torch.randn(3), torch.rand(3) + 0.5
    assert_same(*run_both(lambda a, w, b, m, v: aten.native_batch_norm(a, w, b, m, v, False, 0.1, 1e-5), x, w, b, rm, rv), atol=1e-4, rtol=1e-4)
    s = stats()
    assert s["fallback_calls"] == 0 and s["compiled_calls"] == 4, s


def test_batch_norm_training_updates_running_stats_in_place(stats):
    x, w, b, rm, rv = torch.randn(4, 3, 5, 5), torch.randn(3), torch.randn(3), torch.randn(3), torch.rand(3) + 0.5
    want_rm, want_rv = rm.clone(), rv.clone()
    want = torch.nn.functional.batch_norm(x, want_rm, want_rv, w, b, training=True)
    d_rm, d_rv = dev(rm), dev(rv)
    got = torch.nn.functional.batch_norm(dev(x), d_rm, d_rv, dev(w), dev(b), training=True)
    assert_same(got, want, atol=1e-4, rtol=1e-4)
    assert_same(d_rm, want_rm)
    assert_same(d_rv, want_rv)
    assert stats()["fallback_calls"] == 0, stats()["fallbacks"]


def test_tensor_lists_and_optional_tensors(stats):
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    assert_same(*run_both(lambda x, y: torch.cat([x, y], dim=1), a, b))
    assert_same(*run_both(lambda x, y: torch.stack([x, y]), a, b))
    w = torch.randn(4, 3, 3, 3)
    assert_same(*run_both(lambda x, w: torch.nn.functional.conv2d(x, w, None), torch.randn(1, 3, 6, 6), w), atol=1e-4, rtol=1e-4)
    assert_same(*run_both(lambda x: torch.nn.functional.layer_norm(x, (3,)), a), atol=1e-5, rtol=1e-5)
    assert stats()["fallback_calls"] == 0, stats()["fallbacks"]


# ---- in-place, out=, views ---------------------------------------------------------------------
INPLACE = {
    "add_": lambda a, b: a.add_(b),
    "mul_": lambda a, b: a.mul_(b),
    "relu_": lambda a, b: a.relu_(),
    "copy_": lambda a, b: a.copy_(b),
    "zero_": lambda a, b: a.zero_(),
    "fill_": lambda a, b: a.fill_(2.5),
}


@pytest.mark.parametrize("name", sorted(INPLACE))
def test_in_place_keeps_identity_and_is_seen_by_aliases(name, stats):
    fn = INPLACE[name]
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    want = x.clone()
    fn(want, y)
    a = dev(x)
    alias = a.view(12)
    result = fn(a, dev(y))
    assert result is a
    assert_same(a, want)
    assert_same(alias, want.view(12))
    s = stats()
    assert s["fallback_calls"] == 0, s["fallbacks"]
    assert s["compiled_calls"] + s["metadata_calls"] == 2


def test_write_through_view_shows_in_base_and_back(stats):
    x = torch.randn(4, 5)
    want = x.clone()
    a = dev(x)
    row, col = a[1], a[:, 2]
    row.mul_(10)
    want[1].mul_(10)
    assert_same(a, want)
    a.add_(1)
    want.add_(1)
    assert_same(col, want[:, 2])  # write into the base, seen in a view taken before it
    col.zero_()
    want[:, 2].zero_()
    assert_same(a, want)
    assert_same(row, want[1])
    a.t()[0].fill_(-1.0)
    want.t()[0].fill_(-1.0)
    assert_same(a, want)
    assert stats()["fallback_calls"] == 0, stats()["fallbacks"]


def test_out_variant(stats):
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    out = dev(torch.empty(3, 4))
    r = torch.add(x.clone(), y, alpha=3, out=torch.empty(3, 4))
    got = torch.add(dev(x), dev(y), alpha=3, out=out)
    assert got is out
    assert_same(out, r)
    vals, idx = dev(torch.empty(3)), dev(torch.empty(3, dtype=torch.long))
    torch.max(dev(x), dim=1, out=(vals, idx))
    want = torch.max(x, dim=1)
    assert_same(vals, want.values)
    assert_same(idx, want.indices)
    assert stats()["fallback_calls"] == 0, stats()["fallbacks"]


def test_in_place_result_dtype_is_checked_like_pytorch():
    a = dev(torch.arange(3))
    with pytest.raises(RuntimeError, match="can't be cast"):
        a.add_(dev(torch.randn(3)))


VIEWS = {
    "view": lambda a: a.view(4, 6),
    "reshape": lambda a: a.reshape(2, 12),
    "transpose": lambda a: a.transpose(0, 2),
    "t": lambda a: a[0].t(),
    "permute": lambda a: a.permute(2, 0, 1),
    "expand": lambda a: a[:, :1, :].expand(2, 3, 4),
    "slice": lambda a: a[:, 1:3],
    "select": lambda a: a[1],
    "unsqueeze": lambda a: a.unsqueeze(1),
    "squeeze": lambda a: a[:, :1].squeeze(1),
    "as_strided": lambda a: a.as_strided((3, 2), (2, 5), 1),
    "detach": lambda a: a.detach(),
    "alias": lambda a: aten.alias(a),
    "split": lambda a: a.split(1, dim=1),
}


@pytest.mark.parametrize("name", sorted(VIEWS))
def test_views_are_metadata_only(name, stats):
    x = torch.randn(2, 3, 4)
    want = VIEWS[name](x)
    a = dev(x)
    torch_mlir_eager.reset_stats()
    got = VIEWS[name](a)
    s = stats()
    assert s["compiled_calls"] == 0 and s["fallback_calls"] == 0 and s["metadata_calls"] >= 1, s
    for g, w in zip(got if isinstance(got, tuple) else [got], want if isinstance(want, tuple) else [want]):
        assert g.shape == w.shape and g.stride() == w.stride() and g.storage_offset() == w.storage_offset()
        assert g._storage_ref is a._storage_ref
        assert_same(g, w)


# ---- fallback ----------------------------------------------------------------------------------
def test_forced_compile_failure_falls_back_once(monkeypatch, inprocess_compiler, stats, caplog):
    from torch_mlir_eager import iree_compile

    real = iree_compile.compile_to_vmfb

    def failing(text, flags, **kw):
        if "math.atan" in text or "atan" in text:
            raise iree_compile.IreeCompileError("error: forced failure for the test\nmore detail")
        return real(text, flags, **kw)

    monkeypatch.setattr(iree_compile, "compile_to_vmfb", failing)
    monkeypatch.setattr(torch_mlir_eager.config.config, "flat_kernels", False)  # one key: the shaped one
    x = torch.randn(7, 13)  # a shape no other test compiles
    caplog.set_level(logging.WARNING, logger="torch_mlir_eager")
    for _ in range(3):
        got = torch.atan(dev(x))
        assert_same(got, torch.atan(x))
    s = stats()
    assert s["fallback_calls"] == 3 and s["compiled_calls"] == 0
    fb = s["fallbacks"]["aten.atan.default"]
    assert fb["count"] == 3 and fb["step"] == "compile" and "forced failure" in fb["reason"]
    assert s["compile_failures"] == 1 and s["cache_misses"] == 1 and s["cache_hits"] == 2
    logged = [r for r in caplog.records if "aten.atan.default" in r.getMessage()]
    assert len(logged) == 1 and "compile" in logged[0].getMessage()


def test_ops_without_compiled_form_fall_back_and_are_counted(stats):
    a = dev(torch.randn(3, 4))
    assert isinstance(a.sum().item(), float)
    r = torch.rand_like(a)
    assert isinstance(r, TorchMLIRTensor) and r.shape == a.shape
    nz = (a > 0).nonzero()
    assert_same(nz, (a.cpu() > 0).nonzero())
    s = stats()
    fb = s["fallbacks"]
    assert {"aten._local_scalar_dense.default", "aten.rand_like.default", "aten.nonzero.default"} <= set(fb)
    assert fb["aten._local_scalar_dense.default"]["step"] == "transfer"
    assert fb["aten.rand_like.default"]["step"] == "random"
    # .item() reads 1 storage, nonzero's fallback 1 (rand_like reads none), .cpu() 1, and
    # assert_same its result 1
    assert s["host_transfers"] == 4, s


def test_stats_partition_every_intercepted_call(monkeypatch):
    from torch_mlir_eager import dispatch

    seen = []
    real = dispatch.dispatch
    monkeypatch.setattr(dispatch, "dispatch", lambda f, a, k: (seen.append(f), real(f, a, k))[1])
    torch_mlir_eager.reset_stats()
    a = dev(torch.randn(4, 4))
    b = (a.t() @ a).relu_()
    b[0].add_(1)
    b.sum().item()
    torch.rand_like(b)
    s = torch_mlir_eager.stats()
    assert s["compiled_calls"] + s["metadata_calls"] + s["fallback_calls"] == len(seen) > 0
    assert s["compiled_calls"] > 0 and s["metadata_calls"] > 0 and s["fallback_calls"] > 0
    assert sum(v["count"] for v in s["fallbacks"].values()) == s["fallback_calls"]


def test_kernel_cache_is_thread_safe(stats):
    x = torch.randn(11, 17)  # a shape no other test compiles
    inputs = [dev(x) for _ in range(4)]
    results, errors = [None] * 4, []

    def work(i):
        try:
            results[i] = torch.cosh(inputs[i]).cpu()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results:
        torch.testing.assert_close(r, torch.cosh(x))
    s = stats()
    assert s["compiled_calls"] == 4 and s["kernels_compiled"] + s["disk_cache_hits"] == 1, s


# ---- autograd ----------------------------------------------------------------------------------
def test_autograd_mlp_and_sgd_step(stats):
    import copy

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    on_dev = torch_mlir_eager.to_device(copy.deepcopy(mlp))
    x, y = torch.randn(5, 8), torch.randint(0, 4, (5,))
    opt_n = torch.optim.SGD(mlp.parameters(), lr=0.1, momentum=0.9)
    opt_d = torch.optim.SGD(on_dev.parameters(), lr=0.1, momentum=0.9)
    torch_mlir_eager.reset_stats()
    for _ in range(2):
        loss_n = torch.nn.functional.cross_entropy(mlp(x), y)
        opt_n.zero_grad()
        loss_n.backward()
        opt_n.step()
        loss_d = torch.nn.functional.cross_entropy(on_dev(dev(x)), dev(y))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
    s = stats()
    assert s["fallback_calls"] == 0, s["fallbacks"]
    torch.testing.assert_close(loss_d.detach().cpu(), loss_n.detach(), atol=1e-5, rtol=1e-5)
    for p, q in zip(mlp.parameters(), on_dev.parameters()):
        assert isinstance(q, TorchMLIRTensor) and isinstance(q, torch.nn.Parameter)
        torch.testing.assert_close(q.detach().cpu(), p.detach(), atol=1e-5, rtol=1e-5)


def test_requires_grad_on_wrapped_tensor():
    x = torch.randn(3, 4)
    xd = TorchMLIRTensor(x).requires_grad_()
    (xd * xd).sum().backward()
    torch.testing.assert_close(xd.grad.cpu(), 2 * x)


# ---- validation and diagnostics ----------------------------------------------------------------
def test_validation_mode_turns_a_miscompile_into_a_fallback(monkeypatch, inprocess_compiler, stats):
    from torch_mlir_eager import compiler

    real_body = compiler.make_body

    def wrong_body(recipe, plan, kind, scalars):
        body = real_body(recipe, plan, kind, scalars)
        if recipe.name != "aten.sinh.default":
            return body
        return lambda *t: [o + 1 for o in body(*t)]  # a miscompile

    monkeypatch.setattr(compiler, "make_body", wrong_body)
    torch_mlir_eager.set_validate(True)
    try:
        x = torch.randn(5, 9)
        for _ in range(2):
            assert_same(torch.sinh(dev(x)), torch.sinh(x))
    finally:
        torch_mlir_eager.set_validate(False)
    s = stats()
    assert s["validation_mismatches"] == 1
    assert s["fallbacks"]["aten.sinh.default"]["step"] == "validate"
    assert s["fallbacks"]["aten.sinh.default"]["count"] == 2


def test_dump_dir_writes_modules_and_a_reproducer(tmp_path, monkeypatch, inprocess_compiler):
    import subprocess
    import sys

    from torch_mlir_eager.kernel_cache import CACHE

    CACHE.clear()  # erf is built here, even when an earlier test built it (inprocess_compiler: a new disk cache)
    monkeypatch.setenv("TORCH_MLIR_EAGER_DUMP_DIR", str(tmp_path))
    x = torch.randn(3, 5)
    torch.testing.assert_close(torch.erf(dev(x)).cpu(), torch.erf(x))
    (folder,) = [p for p in tmp_path.iterdir() if p.name.startswith("aten.erf")]
    names = {p.name for p in folder.iterdir()}
    assert {"torch.mlir", "linalg.mlir", "compile.log", "repro.py"} <= names
    assert "torch.aten.erf" in (folder / "torch.mlir").read_text()
    out = subprocess.run([sys.executable, "repro.py"], cwd=folder, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "compiled 1" in out.stdout and "max abs error" in out.stdout


# ---- device buffers are values ---------------------------------------------------------------
def test_kernels_never_write_into_their_inputs(stats):
    """IREE may update a function argument that an op uses as its destination in place
    (iree-org/iree#16168): inputs, and tensors sharing their buffers, must not change."""
    x, v = torch.randn(6, 4), torch.randn(2, 4)
    idx = torch.tensor([1, 4])
    a = dev(x)
    keep = a.clone()  # shares a's device buffer
    r1 = torch.index_put(a, (dev(idx),), dev(v))
    r2 = torch.sort(a, dim=1)
    r3 = torch.scatter(a, 0, dev(torch.tensor([[0, 1, 2, 3]])), dev(v[:1]))
    r4 = torch.slice_scatter(a, dev(v), dim=0, start=2, end=4)
    assert_same(r1, torch.index_put(x, (idx,), v))
    assert_same(r2, torch.sort(x, dim=1))
    assert_same(r3, torch.scatter(x, 0, torch.tensor([[0, 1, 2, 3]]), v[:1]))
    assert_same(r4, torch.slice_scatter(x, v, dim=0, start=2, end=4))
    a[1].mul_(10)  # a scatter into a's storage: the clone keeps its values
    assert_same(keep, x)
    want = x.clone()
    want[1].mul_(10)
    assert_same(a, want)
    assert stats()["fallback_calls"] == 0, stats()["fallbacks"]


def test_compiler_crash_is_a_fallback_not_a_crash(stats):
    # IREE 3.13's compiler dies (SIGFPE) on a matmul with a zero-length contraction; a compile
    # worker dies instead of this process, and the call falls back, correct.
    got = torch.mm(dev(torch.randn(5, 0)), dev(torch.randn(0, 4)))
    assert_same(got, torch.zeros(5, 4))
    s = stats()
    fb = s["fallbacks"]["aten.mm.default"]
    assert s["fallback_calls"] == 1 and fb["step"] == "crash" and "SIGFPE" in fb["reason"], s


def test_in_place_view_ops_and_resizing_outputs(stats):
    x, w = torch.randn(5), torch.randn(5, 3)
    assert_same(torch.matmul(dev(x), dev(w)), x @ w)  # matmul squeezes its result in place
    a = dev(torch.randn(2, 1, 3))
    want = a._host().clone()
    a.squeeze_(1)
    want.squeeze_(1)
    assert a.shape == want.shape and a.stride() == want.stride()
    a.t_()
    want.t_()
    assert_same(a, want)
    out = dev(torch.empty(0))
    r = torch.add(dev(x), 1, out=out)  # out= of the wrong size is resized, as PyTorch does
    assert r is out
    assert_same(out, x + 1)
    b = dev(torch.arange(6.0))
    b.resize_(2, 2)
    assert_same(b, torch.arange(4.0).view(2, 2))
    assert stats()["fallback_calls"] == 0, stats()["fallbacks"]


def test_tensors_made_below_dispatch_and_device_rng():
    t = torch.tensor([1.0, 2.0], device="iree")  # reaches the device through _copy_from
    assert isinstance(t, TorchMLIRTensor) and torch.equal(t._host(), torch.tensor([1.0, 2.0]))
    with torch.random.fork_rng(device_type="iree"):  # the device module has RNG state
        r = torch.rand_like(t)
    assert r.shape == t.shape

