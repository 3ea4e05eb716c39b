"""Moving whole nn.Modules between the host and an IREE device."""

from __future__ import annotations

import torch

from .tensor import TorchMLIRTensor


def to_device(module: torch.nn.Module, device: str | None = None) -> torch.nn.Module:
    """Move every parameter and buffer of `module` onto the IREE `device`, in place.

    Parameters stay `nn.Parameter`s (so optimizers and state_dict work) and tied parameters stay
    tied. Create optimizers after moving the module.
    """
    moved: dict = {}

    def convert(t, is_param):
        if t is None:
            return None
        new = moved.get(id(t))
        if new is None:
            data = t.detach()
            if isinstance(data, TorchMLIRTensor):
                data = data.cpu()
            dev = TorchMLIRTensor(data, device=device)
            new = torch.nn.Parameter(dev, requires_grad=t.requires_grad) if is_param else dev
            moved[id(t)] = new
        return new

    for m in module.modules():
        for name, p in list(m._parameters.items()):
            m._parameters[name] = convert(p, True)
        for name, b in list(m._buffers.items()):
            m._buffers[name] = convert(b, False)
    return module


def to_host(module: torch.nn.Module) -> torch.nn.Module:
    """Move every parameter and buffer of `module` back to plain CPU tensors, in place."""
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if isinstance(p, TorchMLIRTensor):
                m._parameters[name] = torch.nn.Parameter(p.detach().cpu(), requires_grad=p.requires_grad)
        for name, b in list(m._buffers.items()):
            if isinstance(b, TorchMLIRTensor):
                m._buffers[name] = b.cpu()
    return module
