"""Our optimizer graphs (edge_lbp.core.gradients.build_optimizer_graph): laid out as onnxruntime-training's (the
same inputs, node, attributes and output, where ORT-training is installed), and trained on the numba engine they
update the parameters as the closed forms of SGD and AdamW say."""
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from edge_lbp.core.defaults import OPTIMIZERS
from edge_lbp.core.gradients import build_optimizer_graph

LR, STEPS, BATCH = 0.05, 4, 3


def _linear_model():
    """A small classifier as an ONNX file would bring it: logits = relu(x W1 + b1) W2 + b2."""
    rng = np.random.default_rng(1)
    weights = {"w1": rng.standard_normal((6, 8)), "b1": rng.standard_normal(8) * 0.1,
               "w2": rng.standard_normal((8, 5)), "b2": rng.standard_normal(5) * 0.1}
    nodes = [helper.make_node("MatMul", ["input", "w1"], ["h0"], name="fc1"),
             helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
             helper.make_node("Relu", ["h1"], ["h2"], name="act"),
             helper.make_node("MatMul", ["h2", "w2"], ["h3"], name="fc2"),
             helper.make_node("Add", ["h3", "b2"], ["logits"], name="fc2_bias")]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 5])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_optimizer_graph_is_laid_out_as_orts(optimizer, tmp_path):
    """ORT numbers the node's and the output's names with a process-wide counter: a fresh process writes ours."""
    pytest.importorskip("onnxruntime.training", reason="onnxruntime-training (the oracle) is not installed")
    import subprocess
    import sys

    onnx.save(_linear_model(), tmp_path / "model.onnx")
    script = ("import sys, onnx\nfrom onnxruntime.training import artifacts\n"
              "artifacts.generate_artifacts(onnx.load(sys.argv[1]), requires_grad=['w1', 'b1', 'w2', 'b2'], "
              "loss=artifacts.LossType.CrossEntropyLoss, optimizer=artifacts.OptimType[sys.argv[2]], "
              "artifact_directory=sys.argv[3])\n")
    name = {"adamw": "AdamW", "sgd": "SGD"}[optimizer]
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "model.onnx"), name, str(tmp_path)], check=True,
                   capture_output=True)
    ours, ref = build_optimizer_graph(optimizer), onnx.load(tmp_path / "optimizer_model.onnx")
    assert ours.graph == ref.graph
    assert ours.ir_version == ref.ir_version and list(ours.opset_import) == list(ref.opset_import)
    onnx.checker.check_model(ours)


def test_unknown_optimizer_is_one_line():
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'; choose one of adamw, sgd"):
        build_optimizer_graph("lamb")
