"""Op coverage and differential sweep: PyTorch's OpInfo database run through TorchMLIRTensor and
compared with native PyTorch, to report what compiles and to find wrong results.

    python -m torch_mlir_eager.coverage                      # full float32 sweep, every check
    python -m torch_mlir_eager.coverage --checks none        # values only (the op-coverage report)
    python -m torch_mlir_eager.coverage --ops '^(add|mul)$'  # a few ops
    python -m torch_mlir_eager.coverage --sweep-default      # the bounded default sweep; exit 1 on a mismatch
    python -m torch_mlir_eager.coverage --write-guards torch_mlir_eager/guards.json --merge-guards torch_mlir_eager/guards.json
    python -m torch_mlir_eager.coverage --baseline-set --write-baseline tests/coverage_baseline.json

For every OpInfo in `op_db` that supports the dtype, the first `--max-samples` sample inputs are run
natively on CPU and through `TorchMLIRTensor`, and the outputs (and the inputs, to catch lost
writes) are compared with `torch.testing.assert_close` at the default tolerances for the dtype.
Each (op, dtype) gets one class:

    compiled   every intercepted aten call ran a compiled kernel or was pure metadata; outputs match
    partial    some calls fell back to native PyTorch; outputs match
    fallback   no call compiled (all fell back); outputs match
    mismatch   outputs differ from native
    error      the backend raised (or crashed, or timed out) where native did not
    skipped    no sample could be run (every sample raised natively, or had no tensor input)

The checks (`--checks`) add a column each, with a state per entry (ok, partial, fallback,
mismatch, error, n/a): extremal values, layouts, negative dims, gradients, error inputs and random
ops (see coverage/entry.py). Each mismatch is re-run in validation mode to find the culprit aten
kernels; `--write-guards` writes them as a guard list for the backend to run natively.

Entries run in child processes (`--worker`), fed one op at a time, so an op that aborts or
segfaults inside a native library, or hangs, costs only itself: the parent records it as `error`
and starts a fresh child for the rest.

Modules: selection (which entries), samples (input variants), compare (outputs against native),
backend (the API under test), cases (what every check's case shares), differential / gradients /
error_inputs / random_ops (one case of a check), tally (a column's class), attribution (culprit
kernels), entry (one entry through every check), worker (process isolation), progress, summary,
markdown, guards, baseline, cli.
"""

from .backend import ENV_BACKEND, forget_backend, load_backend
from .baseline import compare_to_baseline, write_baseline
from .entry import COLUMNS, EXTRA_CHECKS, run_entry
from .guards import build_guards
from .markdown import render_markdown
from .selection import SWEEP_DEFAULT_OPS, baseline_names, find_op, select_entries, sweep_default_names
from .summary import summarize
from .worker import ENV_TEST_CRASH, ENV_TEST_HANG, run_inprocess, run_isolated

__all__ = [
    "COLUMNS", "ENV_BACKEND", "ENV_TEST_CRASH", "ENV_TEST_HANG", "EXTRA_CHECKS", "SWEEP_DEFAULT_OPS", "baseline_names",
    "build_guards", "compare_to_baseline", "find_op", "forget_backend", "load_backend", "main", "render_markdown",
    "run_entry", "run_inprocess", "run_isolated", "select_entries", "summarize", "sweep_default_names",
    "write_baseline",
]


def main(argv=None):
    from .cli import main as cli_main

    return cli_main(argv)
