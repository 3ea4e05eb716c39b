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
differential / gradients / error_inputs / random_ops (running one case of a check), tally (a
column's class), attribution (culprit kernels), entry (one entry through every check), worker
(process isolation), summary, markdown, guards, baseline, cli.
"""

from .backend import ENV_BACKEND, forget_backend, load_backend
from .baseline import CLASS_RANK, compare_to_baseline, write_baseline
from .entry import COLUMNS, DEFAULT_MAX_SAMPLES, DEFAULT_OP_BUDGET, EXTRA_CHECKS, error_result, run_entry
from .guards import build_guards, merge as merge_guards, read_manual as read_manual_guards, write_guards
from .markdown import render_markdown
from .selection import (BASELINE_INPLACE, BASELINE_OPS, SWEEP_DEFAULT_OPS, baseline_names, entry_id, find_op,
                        load_op_db, select_entries, sweep_default_names)
from .summary import normalize_reason, summarize
from .tally import CLASSES, STATES
from .worker import (DEFAULT_OP_TIMEOUT, DEFAULT_OUT_DIR, ENV_TEST_CRASH, ENV_TEST_HANG, run_inprocess,
                     run_isolated)


def main(argv=None):
    from .cli import main as cli_main

    return cli_main(argv)
