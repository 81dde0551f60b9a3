"""The optimizer graph: one ``SGDOptimizerV2`` or ``AdamWOptimizer`` node over the parameter and gradient
sequences, laid out as onnxruntime-training 1.19's ``generate_artifacts`` lays it out (the same inputs, attributes
and output), so both engines run it unchanged.

The graph does not depend on the model: ORT's update ops read sequences whose length and shapes are known only at
run time. ORT names the node and its output with a process-wide counter; the names here are the ones it writes in
a fresh process for a model whose loss block took tokens 1-4 (the training graph's ``builder.LOSS`` names), and no
reader looks them up (the engines take the single output by position).
"""
import onnx
from onnx import helper

from edge_lbp.core import ort_names
from edge_lbp.core.defaults import OPTIMIZERS
from edge_lbp.core.ops import MAX_IR_VERSION
from edge_lbp.core.ops import MICROSOFT as MS

LEARNING_RATE, STEP, PARAMS, GRADS = "learning_rate", "step", "params", "gradients"
FIRST, SECOND = (f"{order}{ort_names.MOMENT_SUFFIX}" for order in ("first", "second"))
OPSET = 17  # ORT's optimizer blocks import the default domain at this version
# AdamW as export/training.py documents it: betas 0.9 / 0.999, eps 1e-6, no weight decay, bias correction on,
# adam_mode 1 (the Hugging Face update, which ORT's block writes).
ADAMW = {"adam_mode": 1, "alpha": 0.9, "beta": 0.999, "correct_bias": 1, "epsilon": 1e-6, "weight_decay": 0.0}
# (op, the node's inputs, output name, node name, attributes)
_NODES = {
    "sgd": ("SGDOptimizerV2", (LEARNING_RATE, PARAMS, GRADS), "onnx::update_completed::5",
            "onnx::SGDOptimizerV2::6", {}),
    "adamw": ("AdamWOptimizer", (LEARNING_RATE, STEP, PARAMS, GRADS, FIRST, SECOND),
              "onnx::adamw.updated_flag::5", "onnx::AdamWOptimizer::6", ADAMW),
}


def build_optimizer_graph(optimizer):
    """The optimizer ModelProto for ``optimizer`` (one of ``OPTIMIZERS``). SGD's graph, as ORT's, also declares
    ``step`` and ``first_order_moments`` without reading them."""
    if optimizer not in _NODES:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    op, read, output, name, attrs = _NODES[optimizer]
    scalar = {LEARNING_RATE: onnx.TensorProto.FLOAT, STEP: onnx.TensorProto.INT64}
    declared = [LEARNING_RATE, STEP, PARAMS, GRADS, FIRST] + ([SECOND] if SECOND in read else [])
    inputs = [helper.make_tensor_value_info(n, scalar[n], [1]) if n in scalar else
              helper.make_tensor_sequence_value_info(n, onnx.TensorProto.FLOAT, None) for n in declared]
    node = helper.make_node(op, list(read), [output], name=name, domain=MS, **attrs)
    graph = helper.make_graph([node], "graph", inputs,
                              [helper.make_tensor_value_info(output, onnx.TensorProto.BOOL, [1])])
    return helper.make_model(graph, ir_version=MAX_IR_VERSION,
                             opset_imports=[helper.make_opsetid(MS, 1), helper.make_opsetid("", OPSET)])
