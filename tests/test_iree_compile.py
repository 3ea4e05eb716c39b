"""Tests of torch_mlir_eager.iree_compile: both compile modes produce runnable kernels,
and compiler failures surface as IreeCompileError with the compiler's diagnostics."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from torch_mlir_eager import iree_compile
from torch_mlir_eager.iree_compile import ASYNC_FLAGS, IreeCompileError, compile_to_vmfb, target_flags

MODES = ["inprocess", "subprocess"]

# What torch-mlir emits for aten.add.Tensor(a, b, alpha=2) on f32[8] (hand-written so the
# test does not depend on the lowering).
ADD_MODULE = """
#map = affine_map<(d0) -> (d0)>
module {
  func.func @main(%arg0: tensor<8xf32>, %arg1: tensor<8xf32>) -> tensor<8xf32> {
    %c2 = arith.constant 2.0 : f32
    %0 = tensor.empty() : tensor<8xf32>
    %1 = linalg.generic {indexing_maps = [#map, #map, #map], iterator_types = ["parallel"]}
        ins(%arg0, %arg1 : tensor<8xf32>, tensor<8xf32>) outs(%0 : tensor<8xf32>) {
    ^bb0(%in: f32, %in_0: f32, %out: f32):
      %2 = arith.mulf %in_0, %c2 : f32
      %3 = arith.addf %in, %2 : f32
      linalg.yield %3 : f32
    } -> tensor<8xf32>
    return %1 : tensor<8xf32>
  }
}
"""

MATMUL_MODULE = """
module {
  func.func @main(%a: tensor<4x3xf32>, %b: tensor<3x5xf32>) -> tensor<4x5xf32> {
    %zero = arith.constant 0.0 : f32
    %0 = tensor.empty() : tensor<4x5xf32>
    %1 = linalg.fill ins(%zero : f32) outs(%0 : tensor<4x5xf32>) -> tensor<4x5xf32>
    %2 = linalg.matmul ins(%a, %b : tensor<4x3xf32>, tensor<3x5xf32>)
                       outs(%1 : tensor<4x5xf32>) -> tensor<4x5xf32>
    return %2 : tensor<4x5xf32>
  }
}
"""

BAD_SSA_MODULE = """
module {
  func.func @main(%a: tensor<4xf32>) -> tensor<4xf32> {
    %0 = arith.addf %a, %undefined : tensor<4xf32>
    return %0 : tensor<4xf32>
  }
}
"""

# Parses, but fails verification inside the compiler (result type mismatch).
BAD_VERIFY_MODULE = """
module {
  func.func @main(%a: tensor<4xf32>) -> tensor<5xf32> {
    return %a : tensor<4xf32>
  }
}
"""


def run_vmfb(vmfb: bytes, *args: np.ndarray):
    import iree.runtime as rt

    module = rt.load_vm_flatbuffer(vmfb, driver="local-sync")
    return module.main(*args).to_host()


@pytest.fixture(scope="module")
def cpu_flags():
    # run_vmfb calls the module through IREE's plain Python API, which passes no fences: the
    # backend's asynchronous calling convention (iree_compile.ASYNC_FLAGS) is left out
    return [f for f in target_flags("local-sync") if f not in ASYNC_FLAGS]


@pytest.mark.parametrize("mode", MODES)
def test_compile_and_run(mode, cpu_flags):
    vmfb = compile_to_vmfb(ADD_MODULE, cpu_flags, mode=mode)
    assert isinstance(vmfb, bytes) and len(vmfb) > 0
    a = np.linspace(-1, 1, 8, dtype=np.float32)
    b = np.arange(8, dtype=np.float32)
    np.testing.assert_allclose(run_vmfb(vmfb, a, b), a + 2 * b, rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_mode_from_env(mode, cpu_flags, monkeypatch):
    monkeypatch.setenv("TORCH_MLIR_EAGER_COMPILER", mode)
    assert iree_compile.compiler_mode() == mode
    vmfb = compile_to_vmfb(MATMUL_MODULE, cpu_flags)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 3), dtype=np.float32)
    b = rng.standard_normal((3, 5), dtype=np.float32)
    np.testing.assert_allclose(run_vmfb(vmfb, a, b), a @ b, rtol=1e-5, atol=1e-6)


def test_bad_mode_env(monkeypatch):
    monkeypatch.setenv("TORCH_MLIR_EAGER_COMPILER", "magic")
    with pytest.raises(ValueError, match="TORCH_MLIR_EAGER_COMPILER"):
        compile_to_vmfb(ADD_MODULE, ["--iree-hal-target-device=local"])


@pytest.mark.parametrize("mode", MODES)
def test_parse_error_message(mode, cpu_flags):
    with pytest.raises(IreeCompileError) as info:
        compile_to_vmfb(BAD_SSA_MODULE, cpu_flags, mode=mode)
    first_line = str(info.value).splitlines()[0]
    assert "error" in first_line and "use of undeclared SSA value" in first_line
    assert ":4:" in first_line  # the source location of the bad line
    assert info.value.mode == mode


@pytest.mark.parametrize("mode", MODES)
def test_verify_error_message(mode, cpu_flags):
    with pytest.raises(IreeCompileError) as info:
        compile_to_vmfb(BAD_VERIFY_MODULE, cpu_flags, mode=mode)
    first_line = str(info.value).splitlines()[0]
    assert "error" in first_line and "return" in first_line, str(info.value)


@pytest.mark.parametrize("mode", MODES)
def test_bad_flag(mode, cpu_flags):
    with pytest.raises(IreeCompileError) as info:
        compile_to_vmfb(ADD_MODULE, cpu_flags + ["--iree-no-such-flag=1"], mode=mode)
    assert "iree-no-such-flag" in str(info.value).splitlines()[0]


# Not valid input for IREE (an op of an unknown dialect): IREE 3.13 segfaults on it in
# FormDispatchRegions. In subprocess mode that must be an IreeCompileError, not a crash.
CRASHING_MODULE = """
module {
  func.func @main(%a: tensor<4xf32>) -> tensor<4xf32> {
    %0 = "foo.bar"(%a) : (tensor<4xf32>) -> tensor<4xf32>
    return %0 : tensor<4xf32>
  }
}
"""


def test_subprocess_survives_compiler_crash(cpu_flags):
    with pytest.raises(IreeCompileError) as info:
        compile_to_vmfb(CRASHING_MODULE, cpu_flags, mode="subprocess")
    err = info.value
    assert not err.transient
    if err.stage == "crash":  # IREE 3.13; a later IREE may reject it cleanly instead
        assert "crashed: SIGSEGV" in str(err).splitlines()[0]


def test_inprocess_threads_in_parallel(cpu_flags):
    """The core compiles from a thread pool: concurrent in-process compiles all work."""
    texts = [ADD_MODULE, MATMUL_MODULE, ADD_MODULE, BAD_SSA_MODULE]

    def work(text):
        try:
            return compile_to_vmfb(text, cpu_flags, mode="inprocess")
        except IreeCompileError as e:
            return e

    with ThreadPoolExecutor(2) as ex:
        results = list(ex.map(work, texts))
    a = np.ones(8, dtype=np.float32)
    for r in (results[0], results[2]):
        np.testing.assert_allclose(run_vmfb(r, a, a), 3 * a)
    assert run_vmfb(results[1], np.ones((4, 3), np.float32), np.ones((3, 5), np.float32))[0, 0] == 3
    assert isinstance(results[3], IreeCompileError)
    assert "undeclared SSA value" in str(results[3])


def test_target_flags(monkeypatch):
    for var in ("TORCH_MLIR_EAGER_COMPILE_FLAGS", "TORCH_MLIR_EAGER_CUDA_TARGET",
                "TORCH_MLIR_EAGER_HIP_TARGET", "TORCH_MLIR_EAGER_VULKAN_TARGET",
                "TORCH_MLIR_EAGER_CPU_TARGET"):
        monkeypatch.delenv(var, raising=False)
    cpu = target_flags("local-task")
    assert cpu == target_flags("local-sync")
    assert "--iree-hal-target-device=local" in cpu
    assert "--iree-hal-local-target-device-backends=llvm-cpu" in cpu
    assert "--iree-llvmcpu-target-cpu=host" in cpu
    assert "--iree-cuda-target=sm_80" in target_flags("cuda")
    assert "--iree-hal-target-device=cuda" in target_flags("cuda://0")
    assert "--iree-rocm-target=gfx942" in target_flags("hip")
    assert "--iree-hal-target-device=vulkan" in target_flags("vulkan")
    monkeypatch.setenv("TORCH_MLIR_EAGER_CUDA_TARGET", "sm_90")
    assert "--iree-cuda-target=sm_90" in target_flags("cuda")
    monkeypatch.setenv("TORCH_MLIR_EAGER_COMPILE_FLAGS", "--iree-opt-level=O3 '--x=a b'")
    assert target_flags("local-sync")[-2:] == ["--iree-opt-level=O3", "--x=a b"]
    with pytest.raises(ValueError):
        target_flags("tpu")


@pytest.mark.parametrize("driver", ["cuda", "hip", "vulkan"])
def test_gpu_target_flags_are_accepted(driver):
    """Cross-compiling for the GPU targets needs no GPU: the flag spellings are right."""
    vmfb = compile_to_vmfb(ADD_MODULE, target_flags(driver), mode="inprocess")
    assert len(vmfb) > 0


def test_convolutions_go_channels_last_at_batch_1_only():
    from torch_mlir_eager import iree_compile

    cpu = iree_compile.target_flags("local-task")
    channels_last = iree_compile.CPU_BATCH1_CONV_FLAGS[0]
    assert channels_last in iree_compile.op_flags(cpu, "aten.convolution.default", (1, 64, 56, 56))
    for shape in [(8, 64, 56, 56), None]:  # 1.9-19x slower at batch 8
        flags = iree_compile.op_flags(cpu, "aten.convolution.default", shape)
        assert channels_last not in flags and "--iree-global-opt-use-im2col-for-convs" in flags
    assert iree_compile.op_flags(cpu, "aten.mm.default", (1, 64)) == tuple(cpu)
