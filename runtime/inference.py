"""The adapted model as a plain ONNX inference graph: what a user deploys after training on the device."""
from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edge_lbp.core import inference_metadata
from edge_lbp.core.artifact import model_input, normalization
from edge_lbp.core.ops import MAX_IR_VERSION, STANDARD_DOMAINS

IMAGE = "image"  # the input of a model with its preprocessing in the graph (uint8 NHWC)


def inference_model(session, fold=None, *, classes=None, preprocess: bool = False) -> onnx.ModelProto:
    """The eval graph cut down to the logits, with the session's current parameters as initializers, described by
    its ``metadata_props`` (``edge_lbp.core.inference_metadata``; ``classes``: the name of each output). ``fold``:
    ``(graph, parameters) -> (graph, parameters)``, what the artifact's method adds folded away (LoRA adapters
    into the weights they adapt: ``edge_lbp.methods``). ``preprocess``: the graph takes uint8 NHWC images at the
    model's input size and scales and normalises them itself (:func:`preprocess_in_graph`)."""
    artifact = session.artifact
    props = inference_metadata.describe(artifact.manifest, classes, in_graph=preprocess)  # first: it checks
    output = artifact.logits
    model, params = artifact.inference_graph(), session.state.parameters()
    if fold is not None:
        model, params = fold(model, params)
    graph = model.graph
    read = {i for n in graph.node for i in n.input}
    for value_info in [i for i in graph.input if i.name not in read]:  # the folded adapters
        graph.input.remove(value_info)
    del graph.output[:]  # typed as the manifest records it: a model file must say what it returns
    graph.output.append(helper.make_tensor_value_info(
        output["name"], helper.np_dtype_to_tensor_dtype(np.dtype(output["dtype"])), output["shape"]))
    baked = [i for i in graph.input if i.name in params]
    for value_info in baked:
        graph.input.remove(value_info)
    graph.initializer.extend(numpy_helper.from_array(params[v.name], v.name) for v in baked)
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in graph.node if n.domain not in STANDARD_DOMAINS})
    if foreign:
        raise ValueError(f"{artifact.folder}: the eval graph has non-standard ops {foreign}; cannot export it")
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    standard = [o for o in model.opset_import if o.domain in STANDARD_DOMAINS]
    del model.opset_import[:]
    model.opset_import.extend(standard)
    if preprocess:
        model = preprocess_in_graph(model, artifact.manifest)
    helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    return model


def preprocess_in_graph(model: onnx.ModelProto, manifest: dict) -> onnx.ModelProto:
    """The model with an input ``image`` (``image_1``, ... if the graph has such a name), uint8 (batch, H, W, C),
    in place of the artifact's float32 (batch, C, H, W) input: its first nodes scale the pixels to the input range,
    subtract the mean, divide by the std and transpose to NCHW, the ops of ``edge_lbp.data.normalize`` in its
    order, so the model gives what the device computes from the same pixels. Resizing stays outside."""
    graph, record, norm = model.graph, model_input(manifest), normalization(manifest)
    batch, channels, height, width = record["shape"]
    input_name = record["name"]
    names = {v.name for v in [*graph.input, *graph.initializer]} | {o for n in graph.node for o in n.output}
    candidates = itertools.chain([IMAGE], (f"{IMAGE}_{i}" for i in itertools.count(1)))
    image = next(n for n in candidates if not any(t == n or t.startswith(f"{n}/") for t in names))
    low, high = norm["input_range"]
    constants = {"scale": np.float32((high - low) / 255.0), "low": np.float32(low),
                 "mean": np.asarray(norm["mean"], np.float32), "std": np.asarray(norm["std"], np.float32)}
    graph.initializer.extend(numpy_helper.from_array(v, f"{image}/{k}") for k, v in constants.items())
    steps = [("Cast", [], {"to": onnx.TensorProto.FLOAT}), ("Mul", ["scale"], {}), ("Add", ["low"], {}),
             ("Sub", ["mean"], {}), ("Div", ["std"], {}), ("Transpose", [], {"perm": [0, 3, 1, 2]})]
    nodes, previous = [], image
    for i, (op, operands, attributes) in enumerate(steps):
        output = input_name if i == len(steps) - 1 else f"{image}/{op.lower()}"
        nodes.append(helper.make_node(op, [previous, *(f"{image}/{o}" for o in operands)], [output],
                                      name=f"{image}/{op}", **attributes))
        previous = output
    for node in reversed(nodes):  # the graph's nodes stay in topological order
        graph.node.insert(0, node)
    graph.input.remove(next(v for v in graph.input if v.name == input_name))
    graph.input.insert(0, helper.make_tensor_value_info(image, onnx.TensorProto.UINT8,
                                                        [batch, height, width, channels]))
    return model


def write_model(model: onnx.ModelProto, path) -> Path:
    """Write ``model`` to ``path`` atomically (a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    onnx.save(model, str(partial))
    os.replace(partial, path)
    return path
