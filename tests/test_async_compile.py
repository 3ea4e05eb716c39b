"""Non-blocking compilation: a miss runs natively at once, the kernel compiles in the background,
later calls use it. Results are the same either way."""

import torch

import torch_mlir_eager
from torch_mlir_eager import TorchMLIRTensor


def test_async_compile_falls_back_then_uses_the_kernel(stats):
    x = torch.randn(13, 3)  # shapes no other test compiles
    y = torch.randn(13, 3)
    want = torch.maximum(x, y)
    torch_mlir_eager.set_async_compile(True)
    try:
        a, b = TorchMLIRTensor(x), TorchMLIRTensor(y)
        first = torch.maximum(a, b)
        torch.testing.assert_close(first._host(), want)
        s = stats()
        assert s["fallback_calls"] == 1 and s["fallbacks"]["aten.maximum.default"]["step"] == "compiling"
        torch_mlir_eager.synchronize_compiles()
        torch_mlir_eager.reset_stats()
        second = torch.maximum(a, b)
        torch.testing.assert_close(second._host(), want)
        s = stats()
        assert s["compiled_calls"] == 1 and s["fallback_calls"] == 0, s
    finally:
        torch_mlir_eager.set_async_compile(False)


def test_async_compile_of_many_kernels_in_parallel(stats):
    xs = [torch.randn(3, 17 + i) for i in range(4)]
    torch_mlir_eager.set_async_compile(True)
    try:
        devs = [TorchMLIRTensor(x) for x in xs]
        firsts = [torch.expm1(d) for d in devs]  # four keys compile at once
        torch_mlir_eager.synchronize_compiles()
        torch_mlir_eager.reset_stats()
        seconds = [torch.expm1(d) for d in devs]
    finally:
        torch_mlir_eager.set_async_compile(False)
    for x, f, s in zip(xs, firsts, seconds):
        torch.testing.assert_close(f._host(), torch.expm1(x))
        torch.testing.assert_close(s._host(), torch.expm1(x))
    assert stats()["compiled_calls"] == 4
