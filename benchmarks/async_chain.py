"""IREE's asynchronous execution, evaluated: a chain of convolutions (ResNet18's 64-channel
56x56 3x3) on local-task, compiled with the default execution model (each invoke waits) and with
`--iree-execution-model=async-external` (each invoke takes a wait fence and a signal fence and
returns at once), with some host work between the ops standing for dispatch.

    python benchmarks/async_chain.py

This is an evaluation, not the backend's path: see the README for what it found.
"""
import statistics
import time

import torch
import iree.runtime as rt
from torch_mlir_eager import TorchMLIRTensor as T, iree_compile
from torch_mlir_eager.device import get_device
import torch_mlir_eager.compiler as compiler
from torch_mlir_eager import keys, ops

dev = get_device("local-task")
x = T(torch.randn(1, 64, 56, 56), device="local-task"); w = T(torch.randn(64, 64, 3, 3), device="local-task")
call = keys.abstract(torch.ops.aten.convolution.default, ops.classify(torch.ops.aten.convolution.default),
                     (x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1), {})
recipe = call.recipe()
import torch_mlir_eager.lowering as lowering
plan = compiler.plan_outputs(recipe, call.kind, ())
gm = compiler._trace_with(recipe, call.kind, plan, (), lowering.decomposition_attempts(recipe.func)[0])
linalg = lowering.import_and_lower(gm).linalg_ir
flags = [f for f in dev.compile_flags if f not in iree_compile.ASYNC_FLAGS]  # the backend's kernels are async
sync_vmfb = iree_compile.compile_to_vmfb(linalg, flags)
async_vmfb = iree_compile.compile_to_vmfb(linalg, flags + ["--iree-execution-model=async-external"])  # as the backend's
inst = dev.instance
def ctx(vmfb):
    m = rt.VmModule.copy_buffer(inst, vmfb)
    c = rt.VmContext(inst, modules=[rt.create_hal_module(inst, dev.hal), m])
    return c, m.lookup_function("main")
cs, fs = ctx(sync_vmfb); ca, fa = ctx(async_vmfb)
inp = [x._storage_ref.view(torch.float32, (1, 64, 56, 56)), w._storage_ref.view(torch.float32, (64, 64, 3, 3))]
sem = dev.hal.create_semaphore(0)
def run_sync(buf):
    a = rt.VmVariantList(2); a.push_ref(buf); a.push_ref(inp[1]); r = rt.VmVariantList(1)
    cs.invoke(fs, a, r); return r.get_as_object(0, rt.HalBufferView)
counter = [0]
def run_async(buf, wait):
    a = rt.VmVariantList(4); a.push_ref(buf); a.push_ref(inp[1])
    a.push_ref(wait)
    counter[0] += 1
    signal = rt.HalFence.create_at(sem, counter[0])
    a.push_ref(signal)
    r = rt.VmVariantList(1)
    ca.invoke(fa, a, r); return r.get_as_object(0, rt.HalBufferView), signal
def busy(us):  # the host's own work between ops (dispatch of the next op)
    t = time.perf_counter()
    while (time.perf_counter() - t) * 1e6 < us: pass
N = 20
for host_us in (0, 50, 500):
    st, at = [], []
    for rep in range(7):
        t = time.perf_counter(); b = inp[0]
        for _ in range(N): b = run_sync(b); busy(host_us)
        st.append(time.perf_counter() - t)
        t = time.perf_counter(); b = inp[0]; f = rt.HalFence(1)
        for _ in range(N): b, f = run_async(b, f); busy(host_us)
        f.wait(); at.append(time.perf_counter() - t)
    print(f"host work {host_us} us/op: chain of {N} convs sync {statistics.median(st)*1e3:.1f} ms, async {statistics.median(at)*1e3:.1f} ms")
st, at = [], []
for rep in range(30):
    t = time.perf_counter(); run_sync(inp[0]); st.append(time.perf_counter() - t)
    t = time.perf_counter(); b, f = run_async(inp[0], rt.HalFence(1)); f.wait(); at.append(time.perf_counter() - t)
print(f"one conv: sync {statistics.median(st)*1e3:.2f} ms, async+wait {statistics.median(at)*1e3:.2f} ms")
