"""ResNet18 compiled whole, ahead of time, by the same stack (torch-mlir -> IREE llvm-cpu).

This is the reference for kernel quality: the eager backend compiles the same ops one at a
time, so the sum of its kernel times should come close to one whole-graph invocation.
"""

from __future__ import annotations

import time

import numpy as np
import torch

IREE_FLAGS = ["--iree-llvmcpu-target-cpu=host"]


def compile_whole(model, x, extra_args=None):
    """Returns (vmfb bytes, import seconds, compile seconds)."""
    import iree.compiler as ic
    import torch_mlir.fx as tfx

    t0 = time.perf_counter()
    module = tfx.export_and_import(model, x, output_type="linalg-on-tensors")
    text = str(module)
    t1 = time.perf_counter()
    vmfb = ic.compile_str(
        text, target_backends=["llvm-cpu"], extra_args=IREE_FLAGS + list(extra_args or [])
    )
    t2 = time.perf_counter()
    return vmfb, t1 - t0, t2 - t1


class WholeModel:
    """A compiled whole-model module loaded on one IREE driver."""

    def __init__(self, vmfb, driver):
        import iree.runtime as rt

        self.config = rt.Config(driver)
        self.ctx = rt.SystemContext(config=self.config)
        self.ctx.add_vm_module(rt.VmModule.copy_buffer(self.ctx.instance, vmfb))
        self.main = self.ctx.modules.module["main"]
        self.device = self.config.device

    def to_device(self, x: torch.Tensor):
        import iree.runtime as rt

        return rt.asdevicearray(self.device, np.ascontiguousarray(x.numpy()))

    def __call__(self, x_dev):
        """One invocation on a device-resident input; the result stays on the device."""
        return self.main(x_dev)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.main(self.to_device(x)).to_host()))
