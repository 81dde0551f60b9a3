"""The forward graph's static shapes as the gradient rules read them: ints, and symbols for what varies.

ONNX shape inference names the batch dimension afresh after many ops (a Reshape to a computed shape, a Concat), so
two tensors that both carry the batch get different symbols, and a rule cannot tell a broadcast from a match: it
then has to sum at run time (``BroadcastGradientArgs``), which costs nodes and hides the graph's patterns from the
engine's load-time passes. So the graph is also inferred at two concrete batch sizes (and, for what inference cannot follow, run once at
each by onnx's reference evaluator): a dimension that is the same
in both is that constant, one that grows with the batch is ``k`` times it (named ``<batch>*k``, or the batch's own
symbol); what neither explains stays symbolic.
"""
import numpy as np
import onnx

_PROBES = (2, 3)  # two batch sizes: a dimension equal in both is a constant, one that grows with them the batch's


def dims(value_info):
    """A ValueInfoProto's shape: a tuple of ints, symbols (str) and None (unknown), or None without a shape."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)


def static_shapes(model):
    """``{tensor: shape}`` for the values, inputs, outputs and initializers of ``model``, the batch resolved."""
    shapes = _inferred(model)
    image = image_input(model)
    shape = dims(image) if image is not None else None
    if shape and isinstance(shape[0], str) and all(isinstance(d, int) for d in shape[1:]):
        unresolved = [name for name, s in shapes.items() if s is None or not all(isinstance(d, int) for d in s)]
        first, second = (concrete_shapes(model, (size, *shape[1:]), unresolved) for size in _PROBES)
        shapes = {name: _resolve(s, first.get(name), second.get(name), shape[0]) for name, s in shapes.items()}
    shapes.update((t.name, tuple(t.dims)) for t in model.graph.initializer)
    return shapes


def concrete_shapes(model, image_shape, names):
    """The shapes (ints) of the tensors ``names`` when the image input is ``image_shape``: ONNX shape inference
    with data propagation, and for what it leaves unknown one forward pass of onnx's reference evaluator (numpy,
    zeros in)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    image = image_input(probe)
    for dim, size in zip(image.type.tensor_type.shape.dim, image_shape):
        dim.Clear()
        dim.dim_value = size
    shapes = {name: s for name, s in _inferred(probe).items() if s and all(isinstance(d, int) for d in s)}
    produced = {o for n in probe.graph.node for o in n.output}
    missing = [n for n in names if n not in shapes and n in produced]
    if missing:
        from onnx.reference import ReferenceEvaluator

        values = ReferenceEvaluator(probe).run(missing, {image.name: np.zeros(image_shape, np.float32)})
        shapes.update((name, tuple(value.shape)) for name, value in zip(missing, values))
    return shapes


def _inferred(model):
    graph = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    return {vi.name: dims(vi) for vi in (*graph.value_info, *graph.input, *graph.output)}


def image_input(model):
    """The first graph input that is not an initializer: the image."""
    initializers = {t.name for t in model.graph.initializer}
    return next((v for v in model.graph.input if v.name not in initializers), None)


def _resolve(shape, first, second, batch):
    if shape is None or first is None or second is None or not len(shape) == len(first) == len(second):
        return shape
    out = []
    for symbolic, a, b in zip(shape, first, second):
        if isinstance(symbolic, int):
            out.append(symbolic)
        elif a == b:
            out.append(a)
        elif a * _PROBES[1] == b * _PROBES[0] and a % _PROBES[0] == 0:
            k = a // _PROBES[0]
            out.append(batch if k == 1 else f"{batch}*{k}")
        else:
            out.append(symbolic)
    return tuple(out)
