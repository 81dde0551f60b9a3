"""The ``lora:R`` trainable set: adapters beside frozen weights, trained on the numba engine as ONNX Runtime trains
them, and folded into plain weights in the inference export."""
import numpy as np
import onnx
import pytest

pytest.importorskip("onnxruntime.training", reason="the export extra is not installed")
import onnxruntime as ort  # noqa: E402
import edge_lbp  # noqa: E402
from edge_lbp.methods import export_model  # noqa: E402
from edge_lbp.methods import export_inference  # noqa: E402
from engine_check import assert_parameters_match  # noqa: E402

TARGETS = ("qkv", "proj", "fc1", "fc2")


@pytest.fixture(scope="module")
def lora_artifact(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora") / "art"
    report = export_model("vit-tiny", folder, lbp="none", method="lora:4", lr=0.01)
    return folder, report.manifest


def _batches(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((4, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 4)) for _ in range(n)]


def test_only_the_adapters_and_the_head_train(lora_artifact):
    _, manifest = lora_artifact
    adapted = {n.rsplit(".", 2)[-2] for n in manifest["trainable"] if n.endswith((".lora_a", ".lora_b"))}
    assert adapted == {"qkv", "proj", "fc1", "fc2"} and adapted <= set(TARGETS)
    others = [n for n in manifest["trainable"] if not n.endswith((".lora_a", ".lora_b"))]
    assert others == ["head.weight", "head.bias"]
    assert all(not n.endswith((".lora_a", ".lora_b")) for n in manifest["frozen"])


def test_numba_trains_the_adapters_as_onnx_runtime_does(lora_artifact):
    folder, _ = lora_artifact
    numba, reference = edge_lbp.load(folder, "numba"), edge_lbp.load(folder, "ort")
    initial = numba.state.parameters()
    for x, y in _batches(5):
        assert numba.train_step(x, y) == pytest.approx(reference.train_step(x, y), rel=1e-4)
    after = numba.state.parameters()
    assert_parameters_match(after, reference.state.parameters(), initial)
    frozen = [n for n in after if not n.endswith((".lora_a", ".lora_b")) and not n.startswith("head.")]
    assert all(np.array_equal(after[n], initial[n]) for n in frozen)
    assert any(not np.array_equal(after[n], initial[n]) for n in after if n.endswith(".lora_b"))


def test_folded_inference_export_gives_the_adapted_logits(lora_artifact, tmp_path):
    folder, _ = lora_artifact
    session = edge_lbp.load(folder, "numba")
    for x, y in _batches(5, seed=1):
        session.train_step(x, y)
    path = export_inference(session, tmp_path / "adapted.onnx")

    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["input"]
    assert not [t.name for t in model.graph.initializer if "lora" in t.name]
    export_model("vit-tiny", tmp_path / "plain", lbp="none", method="all")  # the same model without adapters
    plain = export_inference(edge_lbp.load(tmp_path / "plain", "numba"), tmp_path / "plain.onnx")
    assert [n.op_type for n in model.graph.node] == [n.op_type for n in onnx.load(str(plain)).graph.node]

    x = np.random.default_rng(2).standard_normal((6, 3, 32, 32)).astype(np.float32)
    folded = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    adapted = session.eval_step(x)
    np.testing.assert_allclose(folded, adapted, rtol=0, atol=1e-5)
    before = edge_lbp.load(folder, "numba").eval_step(x)
    assert np.abs(before - adapted).max() > 1e-3  # the adapters moved the logits: the fold carries them


def test_lora_on_an_onnx_file_is_refused_in_one_line(tmp_path, lora_artifact):
    folder, _ = lora_artifact
    with pytest.raises(ValueError, match="LoRA adapters are added to a torch model"):
        export_model(str(folder / "eval_model.onnx"), tmp_path / "x", method="lora:4", num_classes=10)
