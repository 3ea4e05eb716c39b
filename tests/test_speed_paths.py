"""Paths added for speed, each compared with native PyTorch: the hybrid CPU device, eager
decompositions of ops with no lowering (the fused transformer ops among them), and composite
ops that reach dispatch from inside it."""

import copy

import pytest
import torch

import torch_mlir_eager
from torch_mlir_eager import TorchMLIRTensor
from torch_mlir_eager.kernel import Kernel
from torch_mlir_eager.kernel_cache import CACHE


def dev(x, device=None):
    return TorchMLIRTensor(x, device=device)


# ---- the hybrid CPU device ----------------------------------------------------------------------
def _kernel_for(name):
    return next(e for k, e in reversed(CACHE.entries()) if isinstance(e, Kernel) and e.name == name)


def test_hybrid_places_small_kernels_inline_and_large_ones_on_the_thread_pool(stats):
    device = torch_mlir_eager.get_device("hybrid")
    small, large = torch.randn(17), torch.randn(1, 64, 56, 56)
    w = torch.randn(64, 64, 3, 3)
    torch.testing.assert_close(torch.sin(dev(small, "hybrid"))._host(), torch.sin(small))
    got = torch.nn.functional.conv2d(dev(large, "hybrid"), dev(w, "hybrid"), padding=1)
    torch.testing.assert_close(got._host(), torch.nn.functional.conv2d(large, w, padding=1), atol=1e-3, rtol=1e-4)
    assert _kernel_for("aten.sin.default").for_length(small.numel()).hal is device.inline  # shape-generic (flat.py)
    assert _kernel_for("aten.convolution.default").hal is device.hal
    # a buffer one of them wrote feeds the other: one storage model, no copies
    mixed = torch.nn.functional.conv2d(torch.sin(dev(large, "hybrid")), dev(w, "hybrid"), padding=1).relu()
    torch.testing.assert_close(mixed._host(), torch.nn.functional.conv2d(torch.sin(large), w, padding=1).relu(),
                               atol=1e-3, rtol=1e-4)
    assert stats()["fallback_calls"] == 0


@pytest.mark.parametrize("driver", ["hybrid", "local-sync", "local-task"])
def test_every_cpu_driver_gives_native_results(driver, stats):
    a, b = torch.randn(9, 12), torch.randn(12, 5)
    got = (dev(a, driver) @ dev(b, driver)).softmax(-1)
    torch.testing.assert_close(got._host(), (a @ b).softmax(-1), atol=1e-5, rtol=1e-5)
    assert got.iree_device.driver == driver and stats()["fallback_calls"] == 0


def test_the_default_device_is_hybrid(monkeypatch):
    monkeypatch.delenv("TORCH_MLIR_EAGER_DEVICE", raising=False)
    assert torch_mlir_eager.default_device() == "hybrid"
    assert TorchMLIRTensor(torch.ones(2)).iree_device.driver == "hybrid"


# ---- eager decompositions -------------------------------------------------------------------------
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("masked", [False, True])
def test_transformer_encoder_layer_fast_path_runs_compiled(norm_first, activation, masked, stats):
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, norm_first=norm_first,
                                             activation=activation).eval()
    x = torch.randn(2, 6, 16)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[1, 4:] = True
    dlayer = torch_mlir_eager.to_device(copy.deepcopy(layer))
    with torch.no_grad():
        want = layer(x, src_key_padding_mask=mask if masked else None)
        torch_mlir_eager.reset_stats()
        got = dlayer(dev(x), src_key_padding_mask=dev(mask) if masked else None)
    torch.testing.assert_close(got._host(), want, atol=1e-5, rtol=1e-5)
    s = stats()
    assert s["decomposed"] == {"aten._transformer_encoder_layer_fwd.default": 1}, s["decomposed"]
    assert s["fallback_calls"] == 0 and s["compiled_calls"] > 0, s["fallbacks"]


@pytest.mark.parametrize("need_weights,average", [(True, True), (True, False), (False, True)])
def test_multi_head_attention_fast_path_runs_compiled(need_weights, average, stats):
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    x = torch.randn(2, 5, 16)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 3:] = True
    dmha = torch_mlir_eager.to_device(copy.deepcopy(mha))
    with torch.no_grad():
        want = mha(x, x, x, key_padding_mask=mask, need_weights=need_weights, average_attn_weights=average)
        torch_mlir_eager.reset_stats()
        dx = dev(x)
        got = dmha(dx, dx, dx, key_padding_mask=dev(mask), need_weights=need_weights, average_attn_weights=average)
    torch.testing.assert_close(got[0]._host(), want[0], atol=1e-5, rtol=1e-5)
    if need_weights:
        torch.testing.assert_close(got[1]._host(), want[1], atol=1e-6, rtol=1e-5)
    s = stats()
    assert s["decomposed"] == {"aten._native_multi_head_attention.default": 1}, s["decomposed"]
    assert s["fallback_calls"] == 0, s["fallbacks"]


def test_an_op_without_a_lowering_runs_as_its_decomposition(monkeypatch, stats):
    """An op whose build fails runs its PyTorch decomposition through dispatch, each part
    compiled, rather than natively through host copies."""
    from torch_mlir_eager import compile_service
    from torch_mlir_eager.kernel_cache import Fallback

    real = compile_service.build_entry

    def no_lowering(recipe, scalars, device):
        if recipe.name == "aten.smooth_l1_loss.default":
            return Fallback("lower", "forced for the test")
        return real(recipe, scalars, device)

    monkeypatch.setattr(compile_service, "build_entry", no_lowering)
    a, b = torch.randn(4, 7), torch.randn(4, 7)
    got = torch.nn.functional.smooth_l1_loss(dev(a), dev(b), beta=0.5)
    torch.testing.assert_close(got._host(), torch.nn.functional.smooth_l1_loss(a, b, beta=0.5))
    s = stats()
    assert s["decomposed"] == {"aten.smooth_l1_loss.default": 1} and s["fallback_calls"] == 0, s


def test_composite_ops_that_copy_are_not_views(stats):
    """reshape and contiguous reach dispatch when called from inside it (a decomposition does):
    on a tensor they cannot view, they return a copy, not a view over the wrong elements."""
    x = torch.randn(2, 3, 4)
    d = dev(x).transpose(0, 2)
    got = torch.ops.aten.reshape(d, (4, 6))
    torch.testing.assert_close(got._host(), x.transpose(0, 2).reshape(4, 6))
    assert got._storage_ref is not d._storage_ref
    same_view = torch.ops.aten.reshape(dev(x), (6, 4))
    torch.testing.assert_close(same_view._host(), x.reshape(6, 4))
    c = torch.ops.aten.contiguous(d)
    torch.testing.assert_close(c._host(), x.transpose(0, 2).contiguous())
    assert stats()["fallback_calls"] == 0


# ---- the hit path: a runner per key (runners.py) ------------------------------------------------
def _runner_ops():
    from torch_mlir_eager import runners

    return [str(key[0]) for key in runners.RUNNERS]


def _runs(fn, *arrays, times=3, exact=True):
    """fn on device copies of `arrays`, `times` times (the later calls take the key's runner),
    each compared with native PyTorch."""
    want = fn(*arrays)
    tol = dict(rtol=0, atol=0) if exact else {}
    for _ in range(times):
        got = fn(*[dev(a) for a in arrays])
        assert type(got) is TorchMLIRTensor
        torch.testing.assert_close(got._host(), want, **tol)
    return want


def test_runners_serve_lists_of_tensors(stats):
    a, b, c = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 2)
    _runs(lambda x, y: torch.cat([x, y], 1), a, b)
    _runs(lambda x, y: torch.cat([y, x], 1), a, b)  # same key as above, tensors the other way round
    _runs(lambda x, y: torch.cat([x, x, y], -1), a, c)  # a tensor twice: its own key
    _runs(lambda x, y: torch.cat([x, y, y], -1), a, c)
    _runs(lambda x: torch.cat([x, x], 0), a)  # then two tensors of the same spec: another key
    _runs(lambda x, y: torch.cat([x, y], 0), a, b)
    _runs(lambda x: x - x, a)
    _runs(lambda x, y: x - y, a, b)
    _runs(lambda x, y: torch.stack([x, y], 0), a, b)
    _runs(lambda x, y: torch.cat([x[:, 1:3], x[:2, ::2][:, :2], y], 0), a, c)  # slices: gathers first
    # the same tensors, one of them changed in place between calls: the runner reads values now
    da, db = dev(a), dev(b)
    for _ in range(3):
        torch.testing.assert_close(torch.cat([da, db])._host(), torch.cat([a, b]), rtol=0, atol=0)
        da.add_(1)
        a.add_(1)
    s = stats()
    assert s["fallback_calls"] == 0 and s["compiled_calls"] > 0, s
    assert "aten.cat.default" in _runner_ops(), _runner_ops()


def test_runners_serve_keyword_arguments_and_keep_special_paths(stats):
    x = torch.randn(4, 6)
    _runs(lambda t: t.t().contiguous(), x)  # clone(memory_format=contiguous_format)
    _runs(lambda t: t.to(torch.float64), x)  # _to_copy(dtype=float64)
    _runs(lambda t: t.t().to(torch.float16), x)
    _runs(lambda t: torch.full_like(t, 2.5, dtype=torch.float64), x)
    _runs(lambda t: t.sum(dim=1, keepdim=True), x, exact=False)  # summation order
    _runs(lambda t: t.sum(dim=1, keepdim=False), x, exact=False)
    assert {"aten.clone.default", "aten._to_copy.default"} <= set(_runner_ops()), _runner_ops()
    # a runtime scalar by name is not part of any runner: each value gives its own result
    y = torch.randn(4, 6)
    for alpha in (2.5, 2.5, -1.0, -1.0, 0.0):
        got = torch.add(dev(x), dev(y), alpha=alpha)
        torch.testing.assert_close(got._host(), torch.add(x, y, alpha=alpha), rtol=0, atol=0)
    # a bool and a repeated tensor are told apart in the key (True == 1, False == 0)
    for _ in range(2):
        torch.testing.assert_close((dev(x) * False)._host(), x * False, rtol=0, atol=0)
    d = dev(x)
    for _ in range(2):
        torch.testing.assert_close((d * d)._host(), x * x, rtol=0, atol=0)
        torch.testing.assert_close((d * True)._host(), x * True, rtol=0, atol=0)
    s = stats()
    assert s["fallback_calls"] == 0, s
    # copies to the host keep their own path with runners in place: a plain CPU tensor, counted
    d = dev(x)
    for target in (dict(device="cpu"), dict(device="cpu", dtype=torch.float64)):
        before = stats()["host_transfers"]
        host = d.to(**target)
        assert type(host) is torch.Tensor and host.device.type == "cpu"
        assert stats()["host_transfers"] == before + 1
        torch.testing.assert_close(host, x.to(**target), rtol=0, atol=0)
    # and so do ops asked for a CPU result (they used to return device tensors)
    for _ in range(2):
        for fn in (lambda t: torch.ones_like(t, device="cpu"), lambda t: t.new_zeros(2, 3, device="cpu"),
                   lambda t: torch.full_like(t, 2.0, device="cpu", dtype=torch.float64)):
            got, want = fn(d), fn(x)
            assert type(got) is torch.Tensor and got.device.type == "cpu"
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    # clone of a tensor that covers its storage still shares the buffer (no kernel)
    d = dev(x)
    copy_ = d.clone()
    assert copy_._storage_ref.buffer is d._storage_ref.buffer
    d.add_(1)  # a write replaces d's buffer; the clone keeps the old values
    torch.testing.assert_close(copy_._host(), x, rtol=0, atol=0)


def test_remembered_gathers_follow_offsets_and_writes(stats):
    from torch_mlir_eager import buffers

    x = torch.randn(5, 8)
    d = dev(x)
    for k in range(3):
        for lo in (0, 1, 3):  # the same shape and strides at three offsets: one gather each
            torch.testing.assert_close((-d[:, lo:lo + 4])._host(), -x[:, lo:lo + 4], rtol=0, atol=0)
        d.add_(1)  # a new buffer for the storage: the gathers read it
        x.add_(1)
    assert len(buffers._GATHERS) >= 3
    torch_mlir_eager.clear_kernel_cache()
    assert not buffers._GATHERS
    torch.testing.assert_close((-d[:, 1:5])._host(), -x[:, 1:5], rtol=0, atol=0)
    assert stats()["fallback_calls"] == 0


def test_out_tensors_grow_from_empty(stats):
    for n in (1, 7, 64):
        got = torch.arange(n, device=dev(torch.zeros(1)).device)
        torch.testing.assert_close(got._host(), torch.arange(n), rtol=0, atol=0)
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    out = dev(torch.empty(0))
    torch.add(dev(a), dev(b), out=out)
    torch.testing.assert_close(out._host(), a + b, rtol=0, atol=0)
    # a storage that holds bytes keeps them when it grows
    t = dev(torch.arange(4.0))
    t.resize_(6)
    torch.testing.assert_close(t._host()[:4], torch.arange(4.0), rtol=0, atol=0)
    assert stats()["compiled_calls"] > 0
    torch_mlir_eager.reset_stats()  # an empty storage grows with no host round trip
    dev(torch.empty(0)).resize_(5)
    s = stats()
    assert (s["metadata_calls"], s["fallback_calls"], s["host_transfers"]) == (1, 0, 0), s


def test_runners_keep_ints_beyond_int64_out_of_runtime_keys(stats):
    # `d + 1` makes a runner whose scalar is a runtime argument; 2**63 is not an int64, so it
    # must not reach that runner (it raised in push_int)
    x, xi = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1, 2, 3])
    d, di = dev(x), dev(xi)
    for _ in range(2):
        torch.testing.assert_close((d + 1)._host(), x + 1, rtol=0, atol=0)
        torch.testing.assert_close((di * 2)._host(), xi * 2, rtol=0, atol=0)
    torch.testing.assert_close((d + 2**63)._host(), x + 2**63, rtol=0, atol=0)
    torch.testing.assert_close((di * 2**63)._host(), xi * 2**63, rtol=0, atol=0)
    torch.testing.assert_close((d + 1)._host(), x + 1, rtol=0, atol=0)


def test_results_asked_for_another_device_go_there(stats):
    x = torch.randn(2, 3)
    d = dev(x)
    for fn in (lambda t: torch.ones_like(t, device="meta"), lambda t: t.to("meta"),
               lambda t: t.new_zeros(4, device="meta"), lambda t: torch.empty_like(t, device="meta")):
        got, want = fn(d), fn(x)
        assert type(got) is torch.Tensor and got.device.type == "meta"
        assert (got.shape, got.dtype, got.stride()) == (want.shape, want.dtype, want.stride())
    for fn in (lambda t: t.to(t.device), lambda t: torch.ones_like(t, device=t.device)):
        assert type(fn(d)) is TorchMLIRTensor
    s = stats()
    assert s["fallback_calls"] == 4 and all(f["step"] == "transfer" for f in s["fallbacks"].values()), s


def test_resize_takes_the_memory_format(stats):
    for fmt in (torch.channels_last, torch.contiguous_format):
        t, n = dev(torch.empty(0)), torch.empty(0)
        t.resize_(2, 3, 4, 5, memory_format=fmt)
        n.resize_(2, 3, 4, 5, memory_format=fmt)
        assert t.stride() == n.stride()
    t = dev(torch.randn(2, 3, 4, 5))
    t.resize_(2, 3, 4, 5, memory_format=torch.channels_last)
    assert t.stride() == torch.empty(2, 3, 4, 5).resize_(2, 3, 4, 5, memory_format=torch.channels_last).stride()


def test_a_request_to_a_stopped_pool_goes_to_the_running_service():
    from torch_mlir_eager import compile_service

    old = compile_service.service()
    compile_service.restart()
    # a caller that raced the restart: answered by the running service (a recipe of None is a
    # failed build), not left waiting on a pool with no workers
    outcome = old.submit(None, ()).result(timeout=120)
    assert isinstance(outcome, compile_service.Failure), outcome
    x = torch.randn(5)
    torch.testing.assert_close(torch.cos(dev(x))._host(), torch.cos(x))
