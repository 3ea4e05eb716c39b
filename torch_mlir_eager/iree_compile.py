"""Compile MLIR text (linalg-on-tensors or any input IREE accepts) to an IREE .vmfb.

Two ways to run the IREE compiler:

* ``subprocess`` (default, ``DEFAULT_MODE``): runs the ``iree-compile`` tool of the
  ``iree-base-compiler`` wheel, module text on stdin and .vmfb on stdout (what
  ``iree.compiler.compile_str`` does). Each call starts a process (~50 ms), but a compiler
  crash only kills the child and becomes a compile failure.
* ``inprocess``: the IREE compiler C embedding API in ``libIREECompiler.so``, driven
  through :mod:`iree.compiler.api` (Session / Invocation / Source / Output), with the
  result written to a memory buffer and diagnostics captured through a callback. No process
  start and no library load per compile; the ctypes calls release the GIL, so compiles on
  several threads run in parallel. A compiler crash kills the user's process.

Pick one with ``TORCH_MLIR_EAGER_COMPILER=inprocess|subprocess`` (read on every call).
``benchmarks/compile_modes.py`` measures the two.

Both functions here are thread-safe.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from typing import Sequence

__all__ = [
    "IreeCompileError",
    "compile_to_vmfb",
    "target_flags",
    "compiler_mode",
    "COMPILER_ENV",
    "COMPILE_FLAGS_ENV",
]

logger = logging.getLogger("torch_mlir_eager.iree_compile")

COMPILER_ENV = "TORCH_MLIR_EAGER_COMPILER"
COMPILE_FLAGS_ENV = "TORCH_MLIR_EAGER_COMPILE_FLAGS"
CUDA_TARGET_ENV = "TORCH_MLIR_EAGER_CUDA_TARGET"
HIP_TARGET_ENV = "TORCH_MLIR_EAGER_HIP_TARGET"
VULKAN_TARGET_ENV = "TORCH_MLIR_EAGER_VULKAN_TARGET"
CPU_TARGET_ENV = "TORCH_MLIR_EAGER_CPU_TARGET"

# Measured (benchmarks/compile_modes.py): the two modes are within noise of each other (the
# subprocess pays ~50 ms to start). The subprocess is the default because a compiler crash there
# (IREE 3.13 dies with SIGFPE on a matmul with a zero-length contraction, SIGSEGV on some invalid
# input) becomes a clean compile failure and a fallback, instead of killing the user's process.
DEFAULT_MODE = "subprocess"
_MODES = ("inprocess", "subprocess")

# Every kernel is asynchronous (queue.py): its `main` takes a wait fence and a signal fence and
# returns once its work is queued. Its command buffers take their buffers from a binding table at
# submission, also where the shapes keep IREE from recording them once (shape-generic kernels,
# flat.py): recorded directly, they would need each input's memory at recording time, and a
# result still queued has none yet ("transient buffer has not been committed").
ASYNC_FLAGS = ("--iree-execution-model=async-external", "--iree-hal-force-indirect-command-buffers")
# Flags the in-process API only takes process-wide (ireeCompilerSetupGlobalCL), not per session.
_GLOBAL_FLAGS = frozenset({"--iree-hal-force-indirect-command-buffers"})

# Diagnostics shown in an error message at most (the rest is counted).
_MAX_DIAGNOSTICS = 40
_MAX_MESSAGE_CHARS = 20000


class IreeCompileError(RuntimeError):
    """The IREE compiler rejected a module.

    ``str(err)`` starts with the first error diagnostic (``<loc>: error: <message>``)
    followed by the remaining diagnostics. Attributes: ``diagnostics`` (the compiler's
    text), ``flags`` (the flags used), ``mode`` ("inprocess" or "subprocess"),
    ``stage`` ("flags", "parse", "compile", "output", "crash" or "start"),
    ``transient`` (True when the failure says nothing about the module: the compiler
    process could not start or was killed from outside, e.g. by the OOM killer; such a
    failure should not be remembered in the disk cache).
    """

    def __init__(
        self,
        message: str,
        *,
        diagnostics: str = "",
        flags: Sequence[str] = (),
        mode: str = "",
        stage: str = "",
        transient: bool = False,
    ):
        super().__init__(message)
        self.transient = transient
        self.diagnostics = diagnostics
        self.flags = list(flags)
        self.mode = mode
        self.stage = stage


# ---------------------------------------------------------------------------------------
# Flags


def target_flags(driver: str) -> list[str]:
    """Full iree-compile flags for code that will run on IREE runtime driver ``driver``.

    driver: "local-sync" / "local-task" (llvm-cpu for the host CPU; override the CPU with
    $TORCH_MLIR_EAGER_CPU_TARGET), "cuda" ($TORCH_MLIR_EAGER_CUDA_TARGET, default sm_80),
    "hip" ($TORCH_MLIR_EAGER_HIP_TARGET, default gfx942), "vulkan"
    ($TORCH_MLIR_EAGER_VULKAN_TARGET, IREE's default target if unset). A device URI such
    as "cuda://0" is accepted (the part before "://" is used). Flags from
    $TORCH_MLIR_EAGER_COMPILE_FLAGS (shlex-split) are appended last, so they can override.

    The result is what to pass both to :func:`compile_to_vmfb` and to the disk cache key.
    """
    name = driver.split("://", 1)[0].strip().lower()
    if name in ("local-sync", "local-task", "local", "llvm-cpu", "cpu"):
        cpu = os.environ.get(CPU_TARGET_ENV, "").strip() or "host"
        flags = [
            "--iree-hal-target-device=local",
            "--iree-hal-local-target-device-backends=llvm-cpu",
            f"--iree-llvmcpu-target-cpu={cpu}",
            # keep f64 as f64: PyTorch programs ask for it on purpose
            "--iree-input-demote-f64-to-f32=false",
            # no DWARF in the kernels: .vmfb 10-15% smaller, compile time 0.93x for max pool and
            # unchanged for small kernels (benchmarks/compile_time.py)
            "--iree-llvmcpu-debug-symbols=false",
        ]
    elif name == "cuda":
        target = os.environ.get(CUDA_TARGET_ENV, "").strip() or "sm_80"
        flags = ["--iree-hal-target-device=cuda", f"--iree-cuda-target={target}"]
    elif name in ("hip", "rocm"):
        # IREE 3.13 spells the HIP/ROCm target flag --iree-rocm-target
        # (--iree-hip-target is not accepted).
        target = os.environ.get(HIP_TARGET_ENV, "").strip() or "gfx942"
        flags = ["--iree-hal-target-device=hip", f"--iree-rocm-target={target}"]
    elif name == "vulkan":
        flags = ["--iree-hal-target-device=vulkan"]
        target = os.environ.get(VULKAN_TARGET_ENV, "").strip()
        if target:
            flags.append(f"--iree-vulkan-target={target}")
    else:
        raise ValueError(
            f"unknown IREE driver {driver!r}: expected local-sync, local-task, cuda, hip or vulkan"
        )
    flags.append("--iree-input-type=auto")
    flags.extend(ASYNC_FLAGS)
    extra = os.environ.get(COMPILE_FLAGS_ENV, "").strip()
    if extra:
        flags.extend(shlex.split(extra))
    return flags


# Flags for one op class on the CPU, from benchmarks/kernel_flags.py (interleaved A/B, 30 rounds
# per op, 15 whole ResNet18 forwards per set, 2-vCPU AMD EPYC): with these, convolutions lower
# through im2col to data-tiled matmuls on ukernels. ResNet18 batch 1 at 224: 57.8 ms against
# 127.0 ms with the defaults (0.45x); a 7x7 stride-2 stem 0.27x, a 1x1 stride-2 0.06x, 3x3 at
# 128/256 channels 0.64-0.69x, at 64 channels 1.07x. Matmuls gain nothing from them (attention's
# bmm 1.19x), so only convolutions get them.
_CONV_FLAGS = ("--iree-global-opt-use-im2col-for-convs", "--iree-opt-data-tiling", "--iree-llvmcpu-enable-ukernels=all")
CPU_OP_CLASS_FLAGS = {
    "aten.convolution.default": _CONV_FLAGS,
    "aten.conv2d.default": _CONV_FLAGS,  # as it comes under torch.inference_mode
}
# At batch 1, convolutions are first converted to channels-last (transposes IREE fuses into the
# im2col and the result), so that the im2col gather reads contiguous channels: 3x3 convolutions
# 0.70-0.84x, ResNet18 0.73x (30.5 against 41.8 ms; kernel_flags_channels_last.json). At batch 8
# the same convolutions were 1.9-2.9x slower with it (a 1x1 stride-2 one 19x), so only batch 1
# gets it. Without im2col, or with a blocked `tiling-factor`, IREE's channels-last convolution
# is 13-40x slower.
CPU_BATCH1_CONV_FLAGS = ("--iree-preprocessing-pass-pipeline="
                         "builtin.module(util.func(iree-preprocessing-convert-conv-to-channels-last))",)


def op_flags(flags, op_name: str, input_shape=None) -> tuple:
    """`flags` (a device's target flags) with the flags of `op_name`'s class, for llvm-cpu
    targets; inserted before $TORCH_MLIR_EAGER_COMPILE_FLAGS, which still override them.
    `input_shape`: the shape of the call's first tensor (a convolution's input)."""
    extra = CPU_OP_CLASS_FLAGS.get(op_name)
    if extra is _CONV_FLAGS and input_shape and input_shape[0] == 1:
        extra = extra + CPU_BATCH1_CONV_FLAGS
    flags = tuple(flags)
    if not extra or "--iree-hal-local-target-device-backends=llvm-cpu" not in flags:
        return flags
    at = flags.index("--iree-input-type=auto") + 1 if "--iree-input-type=auto" in flags else len(flags)
    return flags[:at] + extra + flags[at:]


def compiler_mode() -> str:
    """The compile mode in effect: $TORCH_MLIR_EAGER_COMPILER or the default."""
    mode = os.environ.get(COMPILER_ENV, "").strip().lower() or DEFAULT_MODE
    if mode in ("in-process", "in_process", "api"):
        mode = "inprocess"
    if mode not in _MODES:
        raise ValueError(
            f"${COMPILER_ENV}={mode!r}: expected one of {', '.join(_MODES)}"
        )
    return mode


# ---------------------------------------------------------------------------------------
# Compile


def compile_to_vmfb(mlir_text: str, flags: Sequence[str], *, mode: str | None = None) -> bytes:
    """Compile ``mlir_text`` with the full iree-compile ``flags``; return the .vmfb bytes.

    ``mode`` ("inprocess" / "subprocess") overrides $TORCH_MLIR_EAGER_COMPILER.
    Raises :class:`IreeCompileError` on any compiler failure (bad flag included).
    Thread-safe; may be called from many threads at once.
    """
    mode = compiler_mode() if mode is None else mode
    flags = [str(f) for f in flags]
    if mode == "inprocess":
        return _compile_inprocess(mlir_text, flags)
    if mode == "subprocess":
        return _compile_subprocess(mlir_text, flags)
    raise ValueError(f"unknown compile mode {mode!r}: expected one of {', '.join(_MODES)}")


def _format_error(prefix: str, diagnostics: Sequence[str]) -> str:
    diags = [d.rstrip() for d in diagnostics if d and d.strip()]
    if not diags:
        return prefix
    # Put the first error first, so the message's first line says what went wrong.
    first = next((i for i, d in enumerate(diags) if ": error: " in d or d.startswith("error:")), 0)
    ordered = [diags[first]] + diags[:first] + diags[first + 1 :]
    shown = ordered[:_MAX_DIAGNOSTICS]
    text = f"{prefix}: {shown[0]}"
    if len(shown) > 1:
        text += "\n" + "\n".join(shown[1:])
    if len(ordered) > len(shown):
        text += f"\n... ({len(ordered) - len(shown)} more diagnostics)"
    if len(text) > _MAX_MESSAGE_CHARS:
        text = text[:_MAX_MESSAGE_CHARS] + "\n... (truncated)"
    return text


# --- in-process (libIREECompiler through iree.compiler.api) ----------------------------

_api_lock = threading.Lock()
_api = None  # (Session, Source, Output, dylib)

_SEVERITY = {0: "note", 1: "warning", 2: "error", 3: "remark"}

_DiagCallback = ctypes.CFUNCTYPE(
    None, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p
)


def _load_api():
    global _api
    if _api is not None:
        return _api
    with _api_lock:
        if _api is None:
            from iree.compiler.api import Output, Session, Source
            from iree.compiler.api import ctypes_dl

            dylib = ctypes_dl._dylib
            fn = dylib.ireeCompilerInvocationEnableCallbackDiagnostics
            fn.restype = None
            fn.argtypes = [ctypes.c_void_p, ctypes.c_int, _DiagCallback, ctypes.c_void_p]
            _api = (Session, Source, Output, dylib)
    return _api


_global_flags: tuple | None = None  # what this process gave ireeCompilerSetupGlobalCL, if it did


def _set_global_flags(wanted: list[str]) -> None:
    """Give `wanted` to the compiler library process-wide, once: a second call of
    ireeCompilerSetupGlobalCL aborts the process, so a different set later is refused."""
    global _global_flags
    if not wanted:
        return
    with _api_lock:
        if _global_flags is None:
            if "iree.build" in sys.modules:  # it sets the global options itself (and only once)
                raise ValueError("iree.build is in use in this process and owns the compiler's "
                                 f"process-wide options; {wanted} cannot be set (compile in a "
                                 f"subprocess: ${COMPILER_ENV}=subprocess)")
            from iree.compiler.api import ctypes_dl

            ctypes_dl._initializeGlobalCL("torch_mlir_eager", *wanted)
            _global_flags = tuple(wanted)
        elif set(wanted) - set(_global_flags):
            raise ValueError(f"the compiler's process-wide options are already set to {list(_global_flags)}; "
                             f"{wanted} cannot be added")


def _compile_inprocess(mlir_text: str, flags: list[str]) -> bytes:
    Session, Source, Output, dylib = _load_api()
    diagnostics: list[str] = []

    def on_diagnostic(severity, message, size, _user_data):
        # May run on a compiler worker thread; only append (list.append is atomic).
        try:
            text = ctypes.string_at(message, size).decode("utf-8", "replace")
            sev = _SEVERITY.get(severity, str(severity))
            # Messages look like "<loc>: <text>"; insert the severity as MLIR tools do.
            loc, sep, rest = text.partition(": ")
            if sep and (":" in loc or loc.startswith("loc(")):
                diagnostics.append(f"{loc}: {sev}: {rest}")
            else:
                diagnostics.append(f"{sev}: {text}")
        except Exception:  # never let an exception cross the C boundary
            pass

    callback = _DiagCallback(on_diagnostic)
    # One session per compile: creating one costs < 1 ms, and a fresh MLIRContext
    # does not accumulate memory across the thousands of kernels of a long run.
    session = Session()
    inv = source = output = None
    try:
        try:
            _set_global_flags([f for f in flags if f in _GLOBAL_FLAGS])
            session.set_flags(*(f for f in flags if f not in _GLOBAL_FLAGS))
        except ValueError as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            lines = [ln for ln in lines if ln != "Error parsing flags:"] or [str(e)]
            raise IreeCompileError(
                _format_error("iree-compile: bad flags", lines),
                diagnostics=str(e),
                flags=flags,
                mode="inprocess",
                stage="flags",
            ) from None
        inv = session.invocation()
        dylib.ireeCompilerInvocationEnableCallbackDiagnostics(inv._inv_p, 0, callback, None)
        data = mlir_text.encode("utf-8") if isinstance(mlir_text, str) else bytes(mlir_text)
        if not data.startswith(b"ML\xefR"):  # text: hand a NUL-terminated buffer
            data += b"\0"
        source = Source.wrap_buffer(session, data, buffer_name="kernel.mlir")
        stage = "parse"
        ok = inv.parse_source(source)
        if ok:
            stage = "compile"
            ok = inv.execute()
        if not ok:
            raise IreeCompileError(
                _format_error(f"iree-compile failed ({stage})", diagnostics),
                diagnostics="\n".join(diagnostics),
                flags=flags,
                mode="inprocess",
                stage=stage,
            )
        output = Output.open_membuffer()
        try:
            inv.output_vm_bytecode(output)
        except ValueError as e:
            raise IreeCompileError(
                _format_error("iree-compile failed (output)", diagnostics + [str(e)]),
                diagnostics="\n".join(diagnostics + [str(e)]),
                flags=flags,
                mode="inprocess",
                stage="output",
            ) from None
        vmfb = bytes(output.map_memory())
        if diagnostics and logger.isEnabledFor(logging.DEBUG):
            logger.debug("iree-compile diagnostics:\n%s", "\n".join(diagnostics))
        return vmfb
    finally:
        # Close explicitly in dependency order (the wrappers' __del__ would too, but later).
        if output is not None:
            output.close()
        if inv is not None:
            inv.close()
        if source is not None:
            source.close()
        session.close()
        del callback  # kept alive until here: the invocation held a pointer to it


# --- subprocess (iree-compile tool) -----------------------------------------------------

_tool_path: str | None = None


def _iree_compile_tool() -> str:
    global _tool_path
    if _tool_path is None:
        from iree.compiler.tools.binaries import find_tool

        _tool_path = find_tool("iree-compile")
    return _tool_path


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _compile_subprocess(mlir_text: str, flags: list[str]) -> bytes:
    data = mlir_text.encode("utf-8") if isinstance(mlir_text, str) else bytes(mlir_text)
    cmd = [_iree_compile_tool(), "-", *flags, "-o", "-"]
    try:
        proc = subprocess.run(cmd, input=data, capture_output=True, check=False)
    except OSError as e:
        raise IreeCompileError(
            f"iree-compile could not be started: {e}", flags=flags, mode="subprocess",
            stage="start", transient=True,
        ) from e
    if proc.returncode != 0 or not proc.stdout:
        stderr = proc.stderr.decode("utf-8", "replace")
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        rc = proc.returncode
        why = f"exit code {rc}" if rc >= 0 else f"killed by {_signal_name(-rc)}"
        if rc < 0:
            # Name the pass that crashed (from LLVM's stack trace) on the first line.
            m = re.search(r"(\w+Pass)::runOnOperation", stderr)
            why = f"crashed: {_signal_name(-rc)}" + (f" in {m.group(1)}" if m else "")
        # A crash (SIGSEGV, SIGABRT, ...) is the compiler's answer to this module; a kill
        # from outside (SIGKILL from the OOM killer, SIGTERM, SIGINT) is not.
        killed = rc < 0 and -rc in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        raise IreeCompileError(
            _format_error(f"iree-compile failed ({why})", lines or ["(no diagnostics)"]),
            diagnostics=stderr,
            flags=flags,
            mode="subprocess",
            stage="crash" if rc < 0 else "compile",
            transient=killed,
        )
    if proc.stderr and logger.isEnabledFor(logging.DEBUG):
        logger.debug("iree-compile diagnostics:\n%s", proc.stderr.decode("utf-8", "replace"))
    return proc.stdout
