import os
import tempfile

# Tests use a disk kernel cache of their own (shared by the test processes of one run), never
# the user's ~/.cache, so that results do not depend on what ran before on this machine.
os.environ.setdefault(
    "TORCH_MLIR_EAGER_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"tme-test-cache-{os.getpid()}")
)

import pytest  # noqa: E402
import torch  # noqa: E402

import torch_mlir_eager  # noqa: E402


@pytest.fixture
def stats():
    """Reset the counters; the test reads them with stats()."""
    torch_mlir_eager.reset_stats()
    return torch_mlir_eager.stats


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def inprocess_compiler(monkeypatch):
    """Build kernels in this process (no compile workers), so that a test can patch the
    compiler; the disk cache is private to the test, so no kernel built before is reused."""
    import tempfile

    from torch_mlir_eager import compile_service, kernel_index

    monkeypatch.setenv("TORCH_MLIR_EAGER_COMPILE_WORKERS", "0")
    monkeypatch.setenv("TORCH_MLIR_EAGER_CACHE_DIR", tempfile.mkdtemp(prefix="tme-test-inprocess-"))
    monkeypatch.setattr(kernel_index, "_disk_opened", False)
    monkeypatch.setattr(kernel_index, "_disk", None)
    compile_service.restart()
    yield
    compile_service.restart()
