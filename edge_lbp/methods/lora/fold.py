"""Folding LoRA adapters into plain weights (device side): the inference model of an adapted ``lora:R`` artifact
multiplies by ``W + B A`` instead of running the adapter branch, so it has the backbone's graph and cost."""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import onnx

from edge_lbp.core.names import LORA_A, LORA_B


def fold_lora(model: onnx.ModelProto, params: Dict[str, np.ndarray]) -> Tuple[onnx.ModelProto, Dict[str, np.ndarray]]:
    """``(graph, parameters)`` -> the same without adapters: each ``<layer>.weight`` becomes ``W + B A`` and the
    branch ``... MatMul(., B^T) -> Add`` is cut at its Add, whose other input takes its place."""
    adapters = [n[: -len(LORA_B) - 1] for n in params if n.endswith("." + LORA_B)]
    if not adapters:
        return model, params
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    params = dict(params)
    producers = {o: n for n in graph.node for o in n.output}
    consumers: Dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    renames = {}
    for layer in adapters:
        a, b, weight = params.pop(f"{layer}.{LORA_A}"), params.pop(f"{layer}.{LORA_B}"), f"{layer}.weight"
        if weight not in params:
            raise ValueError(f"adapter {layer}.{LORA_B} has no weight {weight} to fold into")
        params[weight] = (params[weight] + b @ a).astype(params[weight].dtype)
        branch = _branch_output(f"{layer}.{LORA_B}", producers, consumers)
        (add,) = [n for n in consumers.get(branch, []) if n.op_type == "Add"] or [None]
        if add is None:
            raise ValueError(f"the adapter of {layer} does not end in an Add; cannot fold it")
        renames[add.output[0]] = next(i for i in add.input if i != branch)
    for node in graph.node:
        node.input[:] = [_follow(renames, i) for i in node.input]
    for value in graph.output:
        value.name = _follow(renames, value.name)
    _drop_dead_nodes(graph)
    return out, params


def _branch_output(name, producers, consumers):
    """The tensor the adapter's B enters: through an optional Transpose, the MatMul's output."""
    reader = consumers.get(name, [None])[0]
    if reader is not None and reader.op_type == "Transpose":
        reader = consumers.get(reader.output[0], [None])[0]
    if reader is None or reader.op_type != "MatMul":
        raise ValueError(f"{name} is not read by a MatMul; cannot fold it")
    return reader.output[0]


def _follow(renames, name):
    while name in renames:
        name = renames[name]
    return name


def _drop_dead_nodes(graph):
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(keep))
