"""Side-tuning (SynQT-style): a query network + head beside the frozen backbone, trained without backbone backprop."""
import json
import tempfile

import numpy as np
import onnx
import pytest

pytest.importorskip("onnxruntime.training", reason="the export extra is not installed")
import edge_lbp  # noqa: E402
from edge_lbp.export import onnx_export, training  # noqa: E402
from edge_lbp.methods import export_model  # noqa: E402
from edge_lbp.export.models import build_model  # noqa: E402
from edge_lbp.export.side_network import SideTuned, backbone_reads  # noqa: E402
from method_split import split  # noqa: E402
from edge_lbp.methods import export_inference  # noqa: E402
from engine_check import assert_side_gradients_match  # noqa: E402

THREADS = 1


@pytest.fixture(scope="module")
def side(tmp_path_factory):
    folder = tmp_path_factory.mktemp("side") / "vit-tiny-side"
    export_model("vit-tiny", folder, method="side", optimizer="sgd", lbp="none")
    return folder


def _batch(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, n)


def test_the_artifact_trains_the_side_network_only(side):
    manifest = json.loads((side / "manifest.json").read_text())
    assert manifest["method"] == {"name": "side", "taps": [0, 1]}
    assert manifest["trainable"] and all(n.startswith("side.") for n in manifest["trainable"])
    assert all(n.startswith("backbone.") for n in manifest["frozen"])
    # The backbone's head and final norm are not read by the side network: they dropped out of the graph.
    assert not any(n.startswith(("backbone.head.", "backbone.norm.")) for n in manifest["frozen"])


def test_side_gradients_equal_onnx_runtime_s_on_the_same_graph(side):
    assert_side_gradients_match(side, *_batch(), threads=THREADS)


def test_no_backbone_activation_is_read_by_the_backward():
    """On the training graph ORT builds: side-tuning's backward reads no tensor of the backbone and gives none a
    gradient; the same wrapped model trained end to end does both (so the check can fail)."""
    module = SideTuned(build_model("vit-tiny"))
    forward = onnx_export.export_forward(module, (3, 32, 32))
    graphs = {}
    for trainable in ("side", "all"):
        with tempfile.TemporaryDirectory() as tmp:
            out = training.generate_training_artifacts(forward, tmp, *split(forward, trainable))
            graphs[trainable] = onnx.load(out["training_model.onnx"])
    assert backbone_reads(forward, graphs["side"]) == ([], [])
    read, differentiated = backbone_reads(forward, graphs["all"])
    assert any(t.startswith("/backbone/blocks.0/") for t in read)
    assert any(t.startswith("/backbone/blocks.0/") for t in differentiated)


def test_a_step_holds_no_more_than_an_inference_forward(side, tmp_path):
    """Measured by the engine's memory probe at batch 32: a side step's intermediates stay within an inference
    forward's (the backbone's activations are released as it goes), a full-backprop step's do not."""
    full = tmp_path / "full"
    export_model("vit-tiny", full, lbp="none")
    session = edge_lbp.load(side, threads=THREADS)
    side_bytes, forward = session.step_bytes(32), session.eval_bytes(32)
    full_bytes = edge_lbp.load(full, threads=THREADS).step_bytes(32)
    assert side_bytes <= 1.5 * forward and side_bytes <= 0.5 * full_bytes, (side_bytes, forward, full_bytes)


def test_the_adapted_side_model_exports_for_inference(side, tmp_path):
    import onnxruntime as ort

    session = edge_lbp.load(side, threads=THREADS)
    for seed in range(3):
        session.train_step(*_batch(seed=seed))
    path = export_inference(session, tmp_path / "adapted.onnx")
    x, _ = _batch(6, seed=9)
    theirs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.allclose(session.eval_step(x), theirs, rtol=1e-4, atol=1e-5)


def test_taps_choose_the_blocks_and_bad_sources_are_one_line(tmp_path):
    export_model("vit-tiny", tmp_path / "one", method="side", taps="-1", lbp="none")
    assert json.loads((tmp_path / "one" / "manifest.json").read_text())["method"]["taps"] == [1]
    with pytest.raises(ValueError, match="the backbone has blocks 0..1"):
        export_model("vit-tiny", tmp_path / "bad", method="side", taps="2")
    with pytest.raises(ValueError, match="--taps applies to --method side"):
        export_model("vit-tiny", tmp_path / "bad", taps="0")
    onnx_file = tmp_path / "m.onnx"
    onnx.save(onnx_export.export_forward(build_model("vit-tiny"), (3, 32, 32)), onnx_file)
    with pytest.raises(ValueError, match="side-tuning wraps a torch model"):
        export_model(str(onnx_file), tmp_path / "bad", method="side")
