"""The adapted model as a plain ONNX inference graph: what a user deploys after training on the device."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edge_lbp.core.ops import MAX_IR_VERSION, STANDARD_DOMAINS


def inference_model(session, fold=None) -> onnx.ModelProto:
    """The eval graph cut down to the logits, with the session's current parameters as initializers; ``fold``:
    ``(graph, parameters) -> (graph, parameters)``, what the artifact's method adds folded away (LoRA adapters
    into the weights they adapt: ``edge_lbp.methods``)."""
    artifact = session.artifact
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
    onnx.checker.check_model(model)
    return model


def write_model(model: onnx.ModelProto, path) -> Path:
    """Write ``model`` to ``path`` atomically (a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    onnx.save(model, str(partial))
    os.replace(partial, path)
    return path
