# edge_lbp sets process-wide thread settings (OMP_WAIT_POLICY) that OpenMP reads when it first starts; importing
# it here, before any test module imports torch (which starts OpenMP), keeps the engine's kernels at full speed.
import edge_lbp  # noqa: F401

import pytest  # noqa: E402


@pytest.fixture
def export_extra():
    """Skip, with the reason, where the workstation side (torch, ONNX Runtime training) is not installed."""
    pytest.importorskip("torch", reason="the export extra is not installed")
    pytest.importorskip("onnxruntime.training", reason="the export extra is not installed")
