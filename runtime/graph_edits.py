"""Small helpers the load-time graph passes share (``runtime.passes``, ``runtime.norm_passes``, ``runtime.attention_pass``): a node's
attribute, how many nodes read each tensor, a model with another node list, a ReduceSum's constant axes."""
import onnx
from onnx import numpy_helper


def attribute(node, name, default):
    """A node's attribute ``name`` as a plain value, or ``default``."""
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def readers(graph):
    """How many node inputs read each tensor."""
    counts = {}
    for node in graph.node:
        for name in node.input:
            counts[name] = counts.get(name, 0) + 1
    return counts


def with_nodes(model, nodes):
    """A copy of ``model`` whose graph has ``nodes``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def reduced_axes(reduce_sum, initializers):
    """The constant axes of a ``ReduceSum(keepdims=0)`` (an input since opset 13, an attribute before), or None."""
    if attribute(reduce_sum, "keepdims", 1) != 0:
        return None
    if len(reduce_sum.input) > 1 and reduce_sum.input[1]:
        tensor = initializers.get(reduce_sum.input[1])
        axes = None if tensor is None else numpy_helper.to_array(tensor).reshape(-1).tolist()
    else:
        axes = attribute(reduce_sum, "axes", None)
    return [int(a) for a in axes] if axes else None  # empty axes: all of them, or none (noop_with_empty_axes)
