"""Fallback: run an op in native PyTorch on host copies, then put the results back on the device.

Host copies keep PyTorch's aliasing: each distinct device storage among the arguments is
downloaded once, and every argument becomes a view (same sizes, strides, offset) of its host
storage. After the op, each storage that the op wrote is uploaded whole and replaces the device
storage's buffer, so every alias sees the write.
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_map

from .tensor import TorchMLIRTensor, DEVICE_TYPE, host_view, write_host_values


def _host_device(x):
    if isinstance(x, torch.device) and x.type == DEVICE_TYPE:
        return torch.device("cpu")
    if isinstance(x, str) and x.split(":")[0] == DEVICE_TYPE:
        return "cpu"
    return x


class HostCopies:
    """Host copies of an op's arguments, aliasing preserved."""

    def __init__(self, args, kwargs, skip_read=None):
        """`skip_read`: a device tensor whose values the op does not read; when it covers its
        storage, its host copy is left uninitialised instead of downloaded."""
        self.storages = {}  # id(DeviceStorage) -> (DeviceStorage, host bytes)
        self.originals = {}  # id(host tensor) -> device tensor it copies
        self.device = None
        if isinstance(skip_read, TorchMLIRTensor) and skip_read.covers_storage():
            storage = skip_read._storage_ref
            self.storages[id(storage)] = (storage, torch.empty(storage.nbytes, dtype=torch.uint8))
        self.args = tree_map(self._to_host, args)
        self.kwargs = {k: _host_device(v) for k, v in tree_map(self._to_host, kwargs).items()}

    def _to_host(self, x):
        if isinstance(x, TorchMLIRTensor):
            storage = x._storage_ref
            self.device = self.device or storage.device
            entry = self.storages.get(id(storage))
            if entry is None:
                entry = self.storages[id(storage)] = (storage, storage.to_host())
            host = host_view(entry[1], x.dtype, x.shape, x.stride(), x.storage_offset(), x._qparams)
            self.originals[id(host)] = x
            return host
        return _host_device(x)

    def write_back(self, written_names, arg_names):
        """Upload the host storages of the written arguments into their device storages."""
        if not written_names:
            return
        bound = dict(zip(arg_names, self.args))
        bound.update(self.kwargs)
        done = set()
        for name in written_names:
            value = bound.get(name)
            for host in value if isinstance(value, (list, tuple)) else [value]:
                if not isinstance(host, torch.Tensor):
                    continue
                original = self.originals.get(id(host))
                if original is None:
                    continue
                if tuple(host.shape) != tuple(original.shape):  # out= resized, as PyTorch does
                    original._resize(tuple(host.shape))
                    write_host_values(original, host)
                    continue
                storage, flat = self.storages[id(original._storage_ref)]
                if host.is_quantized:  # rebuilt from its integers: put them back into the bytes
                    ints = host_view(flat, host.int_repr().dtype, original.shape, original.stride(), original.storage_offset())
                    ints.copy_(host.int_repr())
                if id(storage) in done:
                    continue
                done.add(id(storage))
                storage.replace(storage.device.upload(flat) if storage.nbytes else None)

    def to_device(self, out):
        """Device tensors for the op's host results; inputs returned as they are map back."""

        def convert(x):
            if isinstance(x, torch.Tensor) and not isinstance(x, TorchMLIRTensor):
                original = self.originals.get(id(x))
                if original is not None:
                    return original
                return upload(x, self.device)
            return x

        return tree_map(convert, out)


def upload(t: torch.Tensor, device) -> TorchMLIRTensor:
    """A new device tensor with `t`'s values, keeping its strides as `t.to(device)` would."""
    return TorchMLIRTensor(t, device=device.driver)


def run_native(func, kind, args, kwargs):
    """Run `func` natively on host copies; write back what it wrote; results onto the device."""
    skip = args[0] if kind is not None and not kind.reads_self and args else None
    host = HostCopies(args, kwargs, skip_read=skip)
    out = func(*host.args, **host.kwargs)
    if kind is not None and kind.written:
        host.write_back(kind.written, kind.arg_names)
    if host.device is None:
        return out
    return host.to_device(out)
