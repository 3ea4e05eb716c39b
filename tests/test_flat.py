"""Shape-generic pointwise kernels (flat.py), compared with native PyTorch: one kernel per op
serves every shape, and every call it cannot serve exactly takes a kernel of its own shape."""

import pytest
import torch

import torch_mlir_eager
from torch_mlir_eager import TorchMLIRTensor, flat
from torch_mlir_eager.kernel import FlatKernel, Kernel
from torch_mlir_eager.kernel_cache import CACHE

SHAPES = [(7,), (3, 5), (2, 3, 4), (1, 8, 6, 6), ()]


def dev(x):
    return TorchMLIRTensor(x)


@pytest.fixture(autouse=True)
def _fresh_kernels():
    """Kernels are counted from an empty cache (the disk cache still gives them at once)."""
    CACHE.clear()


def flat_kernels(name):
    return [e for _, e in CACHE.entries() if isinstance(e, FlatKernel) and e.name == name]


def shaped_kernels(name):
    return [e for _, e in CACHE.entries() if isinstance(e, Kernel) and not e.flat and e.name == name]


def same(got, want):
    """Values (NaN, ±inf and the sign of zero included), shape, strides and dtype as native."""
    host = got.cpu()
    assert host.dtype == want.dtype and host.shape == want.shape and got.stride() == want.stride()
    torch.testing.assert_close(host, want, equal_nan=True, rtol=1e-6, atol=1e-6)
    if want.is_floating_point():
        assert torch.equal(torch.signbit(host), torch.signbit(want))


def awkward(shape, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 3
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-30, -2.5])
    flat_view = x.view(-1)
    flat_view[: min(x.numel(), specials.numel())] = specials[: x.numel()]
    return x


def test_one_kernel_per_op_serves_every_shape(stats):
    torch_mlir_eager.reset_stats()
    for i, shape in enumerate(SHAPES):
        x, y = awkward(shape, i), awkward(shape, 100 + i)
        a, b = dev(x), dev(y)
        same(torch.relu(a), torch.relu(x))
        same(torch.add(a, b, alpha=0.5), torch.add(x, y, alpha=0.5))
        same(a * b, x * y)
        same(a > b, x > y)  # a bool result
        same(torch.where(a > 0, a, b), torch.where(x > 0, x, y))
        a.add_(b)
        x.add_(y)
        same(a, x)
        a.relu_()
        x.relu_()
        same(a, x)
    s = stats()
    assert s["fallback_calls"] == len(SHAPES) * 7  # the .cpu() reads (one per same()), nothing else
    assert set(s["fallbacks"]) == {"aten._to_copy.default"}
    for name in ("aten.relu.default", "aten.add.Tensor", "aten.mul.Tensor", "aten.gt.Tensor", "aten.where.self",
                 "aten.add_.Tensor", "aten.relu_.default"):
        assert len(flat_kernels(name)) == 1, name
        assert shaped_kernels(name) == [], name


def test_in_place_results_are_seen_through_every_alias(stats):
    x = awkward((4, 6), 1)
    a = dev(x)
    alias, row = a.view(24), a[1]
    a.relu_()
    x.relu_()
    same(alias, x.view(24))
    same(row, x[1])
    assert stats()["compiled_calls"] == 1 and len(flat_kernels("aten.relu_.default")) == 1


def test_integer_and_mixed_dtypes_promote_as_native(stats):
    for shape in [(5,), (2, 3)]:
        i = torch.randint(-5, 5, shape)
        f = torch.randn(shape)
        same(dev(i) + dev(f), i + f)
        same(dev(i) * dev(i), i * i)
        same(torch.bitwise_and(dev(i), dev(i + 3)), torch.bitwise_and(i, i + 3))
    assert stats()["fallbacks"].keys() == {"aten._to_copy.default"}
    assert len(flat_kernels("aten.add.Tensor")) == 1 and len(flat_kernels("aten.mul.Tensor")) == 1


@pytest.mark.parametrize("layout", ["transposed", "channels_last", "strided", "offset_row", "first_row"])
def test_inputs_that_are_not_their_whole_row_major_storage_take_a_kernel_of_their_shape(layout, stats):
    base = torch.randn(2, 3, 4, 4)
    d = dev(base)
    pick = {
        "transposed": lambda t: t.transpose(2, 3),
        "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
        "strided": lambda t: t[:, :, ::2],
        "offset_row": lambda t: t[1],  # row-major strides, but at an offset into a larger storage
        "first_row": lambda t: t[0],  # row-major strides and offset 0, but not the whole storage
    }[layout]
    other = torch.randn(pick(base).shape)
    # the flat kernels of these ops exist already, from a call that could use them
    same(torch.sigmoid(dev(other)), torch.sigmoid(other))
    same(dev(other) - dev(other) * 2, other - other * 2)
    got = torch.sigmoid(pick(d))
    same(got, torch.sigmoid(pick(base)))
    same(pick(d) - dev(other), pick(base) - other)
    assert len(shaped_kernels("aten.sigmoid.default")) == 1
    assert stats()["fallbacks"].keys() == {"aten._to_copy.default"}


def test_a_cached_runner_does_not_serve_a_same_shaped_input_that_is_part_of_a_storage(stats):
    # the hit path keys by shape and strides, which cannot tell a whole storage from its first row
    whole, base = torch.randn(3, 4), torch.randn(2, 3, 4)
    for _ in range(3):  # the second and third calls go through the runner
        same(torch.neg(dev(whole)), torch.neg(whole))
    d = dev(base)
    same(torch.neg(d[0]), torch.neg(base[0]))
    same(torch.neg(d[1]), torch.neg(base[1]))
    d[0].neg_()
    base[0].neg_()
    same(d, base)
    assert stats()["fallbacks"].keys() == {"aten._to_copy.default"}


def test_gradients_through_flat_kernels_match_native(stats):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3), torch.nn.Sigmoid())
    ref = torch.nn.Sequential(*[m for m in net])
    import copy

    dnet = torch_mlir_eager.to_device(copy.deepcopy(net))
    for batch in (4, 9):
        x = torch.randn(batch, 6)
        out = dnet(dev(x)).sum()
        out.backward()
        want = ref(x).sum()
        want.backward()
        torch.testing.assert_close(out.cpu(), want, rtol=1e-5, atol=1e-5)
    for p, q in zip(dnet.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad.cpu(), q.grad, rtol=1e-5, atol=1e-5)
    assert len(flat_kernels("aten.threshold_backward.default")) == 1
    assert stats()["fallbacks"].keys() <= {"aten._to_copy.default"}


def test_the_length_check_refuses_a_module_that_depends_on_the_length():
    from torch_mlir_eager.lowering import _any_sizes
    from torch_mlir_eager.recipe import StepError

    def module(n, extra=""):
        return (f"func.func @main(%arg0: !torch.vtensor<[{n}],f32>) -> !torch.vtensor<[{n}],f32> {{\n"
                f"{extra}  return %arg0 : !torch.vtensor<[{n}],f32>\n}}")

    assert _any_sizes(module(11), (11,), module(13), (13,)) == module("?")
    with pytest.raises(StepError) as e:  # the length appears as a value, not only in types
        _any_sizes(module(11, "  %int = torch.constant.int 11\n"), (11,), module(13, "  %int = torch.constant.int 13\n"), (13,))
    assert e.value.step == "flat"
    with pytest.raises(StepError):  # the two traces differ otherwise
        _any_sizes(module(11), (11,), module(13, "  %x = torch.constant.int 2\n"), (13,))


def test_an_op_whose_flat_build_fails_takes_kernels_of_its_shapes(inprocess_compiler, monkeypatch, stats):
    from torch_mlir_eager import lowering
    from torch_mlir_eager.recipe import StepError

    def refuse(*args):
        raise StepError("flat", "refused for the test")

    monkeypatch.setattr(lowering, "_any_sizes", refuse)
    torch_mlir_eager.reset_stats()
    for shape in [(5,), (2, 3)]:
        x = awkward(shape, 3)
        same(torch.exp(dev(x)), torch.exp(x))
    s = stats()
    assert s["fallbacks"].keys() == {"aten._to_copy.default"}
    assert s["compiled_calls"] == 2 and s["compile_failures"] == 1  # the one flat attempt
    assert len(shaped_kernels("aten.exp.default")) == 2 and flat_kernels("aten.exp.default") == []


def test_flat_kernels_can_be_switched_off(monkeypatch, stats):
    monkeypatch.setattr(torch_mlir_eager.config.config, "flat_kernels", False)
    x = torch.randn(5)
    same(torch.tanh(dev(x)), torch.tanh(x))
    assert flat_kernels("aten.tanh.default") == [] and len(shaped_kernels("aten.tanh.default")) == 1


def test_the_hybrid_device_places_each_call_by_its_length():
    device = torch_mlir_eager.get_device("hybrid")
    small, large = 17, int(device.crossover) // 2 + 1  # a unary op reads and writes each element
    for n in (small, large):
        x = torch.randn(n)
        same(torch.cos(TorchMLIRTensor(x, device="hybrid")), torch.cos(x))
    (kernel,) = [k for k in flat_kernels("aten.cos.default") if k.device is device]
    assert kernel.for_length(small).hal is device.inline
    assert kernel.for_length(large).hal is device.hal
    # as a kernel of static shapes would be placed
    assert device.hal_for(2 * small) is device.inline and device.hal_for(2 * large) is device.hal


def test_precompile_builds_the_flat_kernel_a_call_uses(stats):
    def f(a, b):
        return torch.nn.functional.silu(a) * b

    x, y = torch.randn(3, 7), torch.randn(3, 7)
    summary = torch_mlir_eager.precompile(f, x, y, progress=False)
    assert summary["failed"] == 0
    assert len(flat_kernels("aten.silu.default")) == 1
    torch_mlir_eager.reset_stats()
    same(f(dev(x), dev(y)), f(x, y))
    u, v = torch.randn(2, 2), torch.randn(2, 2)
    same(f(dev(u), dev(v)), f(u, v))  # another shape: the flat kernels serve it too
    assert stats()["cache_misses"] == 0 and stats()["compiled_calls"] == 4


def test_an_op_that_compiles_in_neither_form_falls_back_once_per_call(inprocess_compiler, monkeypatch, stats):
    from torch_mlir_eager import iree_compile

    real = iree_compile.compile_to_vmfb

    def failing(text, flags, **kw):
        if "math.expm1" in text:
            raise iree_compile.IreeCompileError("error: forced failure for the test")
        return real(text, flags, **kw)

    monkeypatch.setattr(iree_compile, "compile_to_vmfb", failing)
    torch_mlir_eager.reset_stats()
    x = awkward((11, 2), 5)
    for _ in range(3):
        same(torch.expm1(dev(x)), torch.expm1(x))
    s = stats()
    assert s["fallbacks"]["aten.expm1.default"]["count"] == 3 and s["compiled_calls"] == 0
    assert s["fallback_calls"] == 6  # the three calls and the three reads
    assert s["compile_failures"] == 2  # the flat kernel, then the kernel of its shape


# ---- batch norm in eval mode --------------------------------------------------------------------
@pytest.mark.parametrize("affine", [True, False])
def test_eval_batch_norm_takes_one_kernel_for_every_shape(affine, stats):
    torch.manual_seed(0)
    shapes = {torch.nn.BatchNorm1d: [(4, 6), (3, 6, 5)], torch.nn.BatchNorm2d: [(2, 6, 5, 5), (1, 6, 3, 7)],
              torch.nn.BatchNorm3d: [(1, 6, 2, 3, 4)]}
    import copy

    for cls, sizes in shapes.items():
        bn = cls(6, affine=affine).eval()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        if affine:
            torch.nn.init.normal_(bn.weight)
            torch.nn.init.normal_(bn.bias)
        dbn = torch_mlir_eager.to_device(copy.deepcopy(bn))
        for i, size in enumerate(sizes):
            x = awkward(size, i)
            with torch.no_grad():
                same(dbn(dev(x)), bn(x))
        same(dbn.running_mean, bn.running_mean)  # eval mode: the running stats stay as they were
        same(dbn.running_var, bn.running_var)
    assert len(flat_kernels("aten.native_batch_norm.default")) == 1
    assert shaped_kernels("aten.native_batch_norm.default") == []
    assert stats()["fallbacks"].keys() == {"aten._to_copy.default"}


def test_training_batch_norm_keeps_kernels_of_its_shapes(stats):
    import copy

    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(4).train()
    dbn = torch_mlir_eager.to_device(copy.deepcopy(bn))
    for size in [(2, 4, 3, 3), (3, 4, 2, 2)]:
        x = torch.randn(size)
        same(dbn(dev(x)).detach(), bn(x).detach())
    same(dbn.running_mean, bn.running_mean)  # the running stats were updated as native's
    same(dbn.running_var, bn.running_var)
    assert flat_kernels("aten.native_batch_norm.default") == []
    assert stats()["fallbacks"].keys() == {"aten._to_copy.default"}


@pytest.mark.parametrize("pair", ["second_transposed", "broadcast_row", "broadcast_0d", "second_offset"])
def test_a_later_input_that_differs_takes_a_kernel_of_its_shape(pair, stats):
    a = torch.randn(4, 3)
    b = {
        "second_transposed": torch.randn(3, 4).t(),  # its whole storage, column-major
        "broadcast_row": torch.randn(1, 3),
        "broadcast_0d": torch.tensor(2.5),
        "second_offset": torch.randn(2, 4, 3)[1],
    }[pair]
    base = torch.randn(2, 4, 3) if pair == "second_offset" else None
    if base is not None:
        b = base[1]
        db = dev(base)[1]
    else:
        db = dev(b) if b.dim() else b  # a 0-d CPU tensor joins as it is
    if pair == "second_transposed":
        db = dev(b.t().contiguous()).t()
    same(dev(a) + db, a + b)
    same(torch.maximum(dev(a), db), torch.maximum(a, b))
    assert flat_kernels("aten.add.Tensor") == [] and len(shaped_kernels("aten.add.Tensor")) == 1
    assert stats()["fallbacks"].keys() == {"aten._to_copy.default"}


def test_a_flat_kernel_that_validation_catches_disables_the_op_for_every_shape(monkeypatch, inprocess_compiler, stats):
    from torch_mlir_eager import compiler

    real_body = compiler.make_body

    def wrong_body(recipe, plan, kind, scalars):
        body = real_body(recipe, plan, kind, scalars)
        return body if recipe.name != "aten.cosh.default" else (lambda *t: [o + 1 for o in body(*t)])

    monkeypatch.setattr(compiler, "make_body", wrong_body)
    torch_mlir_eager.set_validate(True)
    try:
        for shape in [(5,), (2, 3), (4, 4)]:
            x = torch.randn(shape)
            same(torch.cosh(dev(x)), torch.cosh(x))
    finally:
        torch_mlir_eager.set_validate(False)
    s = stats()
    assert s["validation_mismatches"] == 1  # the flat kernel; no kernel of any shape was built after it
    assert s["fallbacks"]["aten.cosh.default"] == {"count": 3, "step": "validate",
                                                   "reason": s["fallbacks"]["aten.cosh.default"]["reason"]}
    assert shaped_kernels("aten.cosh.default") == []
