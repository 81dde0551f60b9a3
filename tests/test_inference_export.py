"""The adapted model exported as a plain ONNX inference graph runs in onnxruntime with the engine's logits."""
import numpy as np
import onnx
import pytest

ort = pytest.importorskip("onnxruntime")
import edge_lbp  # noqa: E402
from edge_lbp.methods import export_model  # noqa: E402
from edge_lbp.methods import export_inference  # noqa: E402


@pytest.mark.parametrize("family", ["vit-tiny", "efficientformer-tiny"])
def test_exported_inference_graph_gives_the_engines_logits(tmp_path, family):
    export_model(family, tmp_path / "artifact", lr=0.01, method="all")
    session = edge_lbp.load(tmp_path / "artifact", "numba")
    rng = np.random.default_rng(0)
    for _ in range(3):  # adapt a little, so the exported weights are not the exported initial ones
        session.train_step(rng.standard_normal((4, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 4))
    path = export_inference(session, tmp_path / "adapted.onnx")

    model = onnx.load(str(path))
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    assert [i.name for i in model.graph.input] == ["input"]
    assert model.ir_version <= 10
    x = rng.standard_normal((5, 3, 32, 32)).astype(np.float32)
    inference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = inference.run(None, {"input": x})[0]
    expected = session.eval_step(x)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    # and they are the adapted weights, not the exported ones
    fresh = edge_lbp.load(tmp_path / "artifact", "numba").eval_step(x)
    assert np.abs(fresh - expected).max() > 1e-3
