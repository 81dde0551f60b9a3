"""Forward ONNX: a torch module (or an existing .onnx file) -> a forward graph ORT's gradient builder accepts.

torch 2.13's ``torch.onnx.export`` defaults to the torch.export/dynamo exporter, which needs ``onnxscript`` (not a
dependency here: it fails with ModuleNotFoundError). The legacy TorchScript exporter (``dynamo=False``) still works
in 2.13, with DeprecationWarnings for itself and for ``training=``, and is the one used here.
"""

import io
import warnings

import onnx

from edge_lbp.core.ops import MAX_IR_VERSION

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17
# Ops that draw random numbers: a training-mode export keeps them (drop-path), and evaluation must not draw.
RANDOM_OPS = ("RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike", "Bernoulli", "Multinomial")


def export_forward(module, input_shape, *, opset=OPSET, training=True):
    """Trace ``module`` on a (batch=2, *input_shape) input and return the forward ModelProto, graph passes applied.

    The module's first output is the logits (see ``first_output_only``). ``training=False`` exports the module
    in eval mode instead (no dropout, no drop-path): the source of the eval graph when the training-mode graph
    draws random numbers (``draws_random``).

    The batch dimension is dynamic ("batch"); the graph is exported in training mode with no constant folding, so
    parameters stay initializers (trainable) and training-mode ops (BatchNormalization) keep their training form.
    """
    import torch

    buf = io.BytesIO()
    was_training = module.training
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # BatchNorm's num_batches_tracked counter is not part of the graph; dropping its update is intended.
        warnings.filterwarnings("ignore", message="ONNX Preprocess - Removing mutation", category=UserWarning)
        torch.onnx.export(
            module,
            (torch.zeros(2, *input_shape),),
            buf,
            dynamo=False,
            opset_version=opset,
            training=torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL,
            do_constant_folding=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    module.train(was_training)
    forward = onnx.load_from_string(buf.getvalue())
    return prepare_forward(first_output_only(train_mode_dropout(forward) if training else forward))


def draws_random(model):
    """Whether the graph has a node of ``RANDOM_OPS``."""
    return any(node.op_type in RANDOM_OPS for node in model.graph.node)


def load_onnx(path):
    """Load a forward model from ``path`` and apply the graph passes; a non-ONNX file raises a one-line ValueError."""
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, RuntimeError, ... depending on how the bytes are wrong
        raise ValueError(f"{path}: not an ONNX model ({type(exc).__name__})") from None
    if not model.graph.node:
        raise ValueError(f"{path}: not an ONNX model (no graph nodes)")
    return prepare_forward(model)


def first_output_only(model):
    """Keep the first output, the logits, and what it needs.

    The exporter flattens what ``forward`` returns: a Hugging Face ``ImageClassifierOutput`` becomes its non-None
    fields (``logits`` first), a tuple its items, and DeiT's distilled output ``logits`` (the mean of the two
    heads) then ``cls_logits`` and ``distillation_logits``. Training needs one output for its loss.
    """
    from edge_lbp.core.graphs import prune_to_outputs

    if len(model.graph.output) == 1:
        return model
    return prune_to_outputs(model, [model.graph.output[0].name])


def prepare_forward(model):
    """All forward-graph passes, in order."""
    return cap_ir_version(add_layernorm_stat_outputs(model))


def add_layernorm_stat_outputs(model):
    """Give every LayerNormalization node its optional Mean and InvStdDev outputs.

    ORT's LayerNormalization gradient reads them; PyTorch exports only Y, and the gradient builder then fails
    with "GradientBuilderBase::O(size_t, bool) const i < node_->OutputDefs().size() was false".
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, node in enumerate(out.graph.node):
        if node.op_type != "LayerNormalization" or node.domain not in ("", "ai.onnx"):
            continue
        stem = node.name or f"LayerNormalization_{i}"
        while len(node.output) < 3:
            node.output.append("")
        for idx, suffix in ((1, "Mean"), (2, "InvStdDev")):
            if not node.output[idx]:  # an empty name is how ONNX spells an omitted optional output
                node.output[idx] = f"{stem}_{suffix}"
    return out


def train_mode_dropout(model):
    """Give every Dropout without a training_mode input training_mode=true and its mask output.

    torch's export of ``scaled_dot_product_attention`` with ``dropout_p > 0`` (the default attention of timm and
    Hugging Face models, in training mode) writes ``Dropout(x, ratio)`` alone, in torch 2.13 and 2.14: ONNX runs
    that as the identity (training_mode defaults to false), and ORT's gradient builder fails on the missing mask
    ("GradientBuilderBase::O(size_t, bool) const i < node_->OutputDefs().size() was false"). For a training-mode
    export only, where the module dropped what the node then drops; ORT's eval graph clears training_mode again.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = []
    for i, original in enumerate(model.graph.node):
        node = onnx.NodeProto()
        node.CopyFrom(original)
        if node.op_type == "Dropout" and node.domain in ("", "ai.onnx") and (len(node.input) < 3 or not node.input[2]):
            stem = node.name or f"Dropout_{i}"
            flag = onnx.helper.make_node("Constant", [], [f"{stem}_training_mode"], name=f"{stem}_training_mode",
                                         value=onnx.helper.make_tensor("value", onnx.TensorProto.BOOL, [], [True]))
            nodes.append(flag)
            while len(node.input) < 2:
                node.input.append("")  # the default ratio, 0.5
            del node.input[2:]
            node.input.append(flag.output[0])
            if len(node.output) < 2:
                node.output.append(f"{stem}_mask")
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def cap_ir_version(model, max_ir=MAX_IR_VERSION):
    """Lower the IR version to ``max_ir`` when the writer put a newer one."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.ir_version = min(out.ir_version, max_ir)
    return out
