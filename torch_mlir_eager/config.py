"""Run-time switches, read from the environment at import and settable from Python."""

from __future__ import annotations

import os


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class Config:
    # Check the first run of each newly compiled kernel against native PyTorch.
    validate: bool = _env_flag("TORCH_MLIR_EAGER_VALIDATE")
    # Compile on a background pool and run natively until the kernel is ready.
    async_compile: bool = _env_flag("TORCH_MLIR_EAGER_ASYNC_COMPILE")
    # Pointwise ops and eval batch norm on row-major inputs share one shape-generic kernel per op (flat.py).
    flat_kernels: bool = os.environ.get("TORCH_MLIR_EAGER_FLAT_KERNELS", "1").strip().lower() not in ("0", "false", "no", "off")


config = Config()


def set_validate(enabled: bool = True) -> None:
    """Validation mode: on a mismatch the kernel is disabled for its key and the native result
    is returned (counted in stats()['validation_mismatches'] and as a 'validate' fallback)."""
    config.validate = bool(enabled)
    if enabled:  # runners skip validation: kernels must go through the full path again
        from .runners import clear

        clear()


def set_async_compile(enabled: bool = True) -> None:
    """Non-blocking compilation: a miss runs natively at once while the kernel compiles."""
    config.async_compile = bool(enabled)
