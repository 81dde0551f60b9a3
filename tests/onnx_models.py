"""Small forward models written with onnx's helpers (no torch), as a user's ONNX file brings them."""
import numpy as np
import onnx
from onnx import helper, numpy_helper

INPUT_SHAPE, CLASSES = (3, 2, 2), 5


def small_classifier():
    """logits = relu(flatten(x) W1 + b1) W2 + b2 on (batch, 3, 2, 2) images: every product's weight and bias
    trains, and the relu makes the gradient depend on the input."""
    rng = np.random.default_rng(1)
    weights = {"w1": rng.standard_normal((12, 8)) * 0.5, "b1": rng.standard_normal(8) * 0.1,
               "w2": rng.standard_normal((8, CLASSES)) * 0.5, "b2": rng.standard_normal(CLASSES) * 0.1}
    nodes = [helper.make_node("Flatten", ["input"], ["x"], name="flatten"),
             helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"),
             helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
             helper.make_node("Relu", ["h1"], ["h2"], name="act"),
             helper.make_node("MatMul", ["h2", "w2"], ["h3"], name="fc2"),
             helper.make_node("Add", ["h3", "b2"], ["logits"], name="fc2_bias")]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", *INPUT_SHAPE])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", CLASSES])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
