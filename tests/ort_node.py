"""Run one ONNX node in ONNX Runtime: the independent reference for the engine's kernels."""
import numpy as np
import onnx
from onnx import helper

DTYPES = {np.dtype(np.float32): onnx.TensorProto.FLOAT, np.dtype(np.int64): onnx.TensorProto.INT64,
          np.dtype(np.bool_): onnx.TensorProto.BOOL, np.dtype(np.int32): onnx.TensorProto.INT32,
          np.dtype(np.float64): onnx.TensorProto.DOUBLE}


def run_node(node: onnx.NodeProto, inputs, opset: int = 17):
    """Execute ``node`` on ``inputs`` (arrays, or None for an omitted optional input); return its outputs.

    Inputs become graph inputs named as the node names them; outputs are returned in the node's order. A Python
    list is a sequence input (seq(tensor), element type from its first array); sequence outputs come back as lists.
    ORT updates the inputs of in-place ops (optimizers, InPlaceAccumulatorV2) in the fed arrays: pass copies.
    """
    feeds, graph_inputs = {}, []
    for name, value in zip(node.input, inputs):
        if not name or value is None:
            continue
        if isinstance(value, list):
            value = [np.asarray(v) for v in value]
            feeds[name] = value
            graph_inputs.append(helper.make_tensor_sequence_value_info(name, DTYPES[value[0].dtype], None))
            continue
        value = np.asarray(value)
        feeds[name] = value
        graph_inputs.append(helper.make_tensor_value_info(name, DTYPES[value.dtype], value.shape))
    outputs = [onnx.ValueInfoProto(name=o) for o in node.output if o]
    graph = helper.make_graph([node], "single_node", graph_inputs, outputs)
    imports = [helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    return run_model(helper.make_model(graph, opset_imports=imports, ir_version=8), feeds)


def run_model(model: onnx.ModelProto, feeds):
    """``model``'s outputs in ONNX Runtime, graph optimisations off (each node as written), from the ``feeds`` that
    name its inputs (others are ignored)."""
    import pytest

    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (the reference runs the model)")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    inputs = {i.name for i in model.graph.input}
    return session.run([o.name for o in model.graph.output], {k: v for k, v in feeds.items() if k in inputs})
