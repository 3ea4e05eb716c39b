"""A compile worker: a process that builds kernels for the user's process (compile_service.py).

It runs the whole miss path (plan on fake tensors, trace, decompose, import, lower, compile)
for one recipe at a time, so that nothing the compiler stack does can end the user's process:
a crash or a hang ends only this worker, which the service restarts.

Protocol on stdin/stdout: frames of an 8-byte little-endian length and a pickle.
    request   ("build", id, Recipe, scalars)
    replies   ("ready", pid) once at start; then ("built", id, Built) or
              ("failed", id, step, message) per request
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
import traceback

_LEN = struct.Struct("<Q")


def _read_exactly(stream, n: int):
    chunks, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(stream):
    """The next object on `stream`, or None at end of stream."""
    head = _read_exactly(stream, _LEN.size)
    if head is None:
        return None
    body = _read_exactly(stream, _LEN.unpack(head)[0])
    if body is None:
        return None
    from .recipe import loads

    return loads(body)


def write_frame(stream, obj):
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LEN.pack(len(body)) + body)
    stream.flush()


def main():
    # The protocol owns the real stdout: anything the libraries print goes to stderr.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    # This process is the isolation: compile with IREE's in-process API (no tool to start).
    os.environ.setdefault("TORCH_MLIR_EAGER_COMPILER", "inprocess")

    import torch

    torch.set_num_threads(1)  # planning and tracing compute nothing
    from . import compiler
    from .recipe import StepError

    try:  # pay the first build's one-time costs before saying ready
        compiler.warm_up()
    except Exception:  # noqa: BLE001 - a real request reports any real problem
        traceback.print_exc()
    write_frame(replies, ("ready", os.getpid()))
    while True:
        message = read_frame(requests)
        if message is None:
            return
        _, request_id, recipe, scalars = message
        try:
            reply = ("built", request_id, compiler.build(recipe, scalars))
        except StepError as e:
            reply = ("failed", request_id, e.step, e.message)
        except Exception as e:  # noqa: BLE001 - a bug in the build: report it, keep serving
            reply = ("failed", request_id, "internal", f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        write_frame(replies, reply)


if __name__ == "__main__":
    main()
