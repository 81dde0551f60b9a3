"""Load-time passes around LayerNorm (graph in, graph out): the residual add before a LayerNorm and the norm in
one pass over the rows, and in the backward the LayerNorm gradient, the residual stream's gradient sum and the
bias gradient that sums it, in one pass. A transformer block's residual stream is ``B·N × dim`` floats that each
of these ops read or wrote once more unfused."""
import onnx

from edge_lbp.core import ops
from edge_lbp.runtime.graph_edits import readers, reduced_axes, with_nodes


def _producers(graph):
    return {o: (i, n) for i, n in enumerate(graph.node) for o in n.output if o}


def _is(node, domain, op_type):
    return node.op_type == op_type and (node.domain or "") == domain


def _through_identity(name, producer):
    """The tensor an ``Identity`` chain ending in ``name`` copies (ORT's gradient graphs route a gradient to each
    of its readers through one), or ``name``."""
    while name in producer and _is(producer[name][1], "", "Identity"):
        name = producer[name][1].input[0]
    return name


def layer_norm_into_matmul_add(model: onnx.ModelProto) -> onnx.ModelProto:
    """``LayerNormalization(MatMulAdd(a, b, bias, residual?), scale, ln_bias?)`` -> ``edge_lbp::MatMulAddLayerNorm(a,
    b, bias, residual, scale, ln_bias)`` with the sum's and the norm's outputs, at the MatMulAdd's place.

    After ``passes.add_into_matmul``, the proj and fc2 layers' products take their bias and the residual in place;
    the next LayerNorm then read the whole sum again. Fused, each row is normalised while it is in cache. The sum
    stays an output (the next residual add and the norm's gradient read it). Only a norm whose scale and bias no
    node computes (parameters) is moved to the product's place.
    """
    graph = model.graph
    producer = _producers(graph)
    fused, dropped = {}, set()
    for node in graph.node:
        source = producer.get(node.input[0]) if _is(node, "", "LayerNormalization") and node.input else None
        if (source is None or not _is(source[1], ops.DOMAIN, ops.MATMUL_ADD) or id(source[1]) in fused
                or any(name in producer for name in node.input[1:])):
            continue
        add = source[1]
        inputs = [*add.input[:3], add.input[3] if len(add.input) > 3 else "", node.input[1],
                  node.input[2] if len(node.input) > 2 else ""]
        new = onnx.helper.make_node(ops.MATMUL_ADD_LAYER_NORM, inputs, [add.output[0], *node.output],
                                    name=add.name, domain=ops.DOMAIN)
        new.attribute.extend(node.attribute)
        fused[id(add)] = new
        dropped.add(id(node))
    if not fused:
        return model
    return with_nodes(model, [fused.get(id(n), n) for n in graph.node if id(n) not in dropped])


def residual_gradient_into_layer_norm_grad(model: onnx.ModelProto) -> onnx.ModelProto:
    """``Sum(g, LayerNormalizationGrad(dy, x, scale, mean, inv_std)[0])`` -> ``edge_lbp::LayerNormalizationGradAdd(dy,
    x, scale, mean, inv_std, g)``, at the norm gradient's place.

    The residual stream's gradient is the sum of what flows past the block and what flows back through its
    LayerNorm; the fused kernel adds the first while it writes the second. Only a norm gradient that nothing but
    the Sum reads, and a ``g`` computed before the norm gradient, are fused.
    """
    graph = model.graph
    counts = readers(graph)
    outputs = {o.name for o in graph.output}
    producer = _producers(graph)
    fused, dropped = {}, set()
    for node in graph.node:
        if not _is(node, "", "Sum") or len(node.input) != 2:
            continue
        for side in (0, 1):
            name, other = node.input[side], _through_identity(node.input[1 - side], producer)
            index, grad = producer.get(name, (None, None))
            if (grad is None or not _is(grad, ops.MICROSOFT, "LayerNormalizationGrad") or grad.output[0] != name
                    or counts.get(name) != 1 or name in outputs or id(grad) in fused
                    or producer.get(other, (-1,))[0] >= index):
                continue
            new = onnx.helper.make_node(ops.LAYER_NORM_GRAD_ADD, [*grad.input[:5], other],
                                        [node.output[0], *grad.output[1:3]], name=grad.name, domain=ops.DOMAIN)
            new.attribute.extend(grad.attribute)
            fused[id(grad)] = new
            dropped.add(id(node))
            break
    if not fused:
        return model
    return with_nodes(model, [fused.get(id(n), n) for n in graph.node if id(n) not in dropped])


def bias_gradient_into_layer_norm_grad(model: onnx.ModelProto) -> onnx.ModelProto:
    """``ReduceSum(t, axes, keepdims=0)`` of a LayerNorm gradient's input gradient ``t`` (or of an ``Identity``
    of it) -> one more output of that gradient's node, a ``LayerNormalizationGradAdd``.

    The bias gradient of the projection that wrote the residual stream (proj, fc2) is the column sum of the
    stream's gradient: unfused, a second read of a ``B·N × dim`` tensor per layer; fused, summed while it is
    written. Run after ``residual_gradient_into_layer_norm_grad``; a plain ``LayerNormalizationGrad`` becomes the
    fused op with no addend.
    """
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    producer = _producers(graph)
    fused, dropped = {}, set()
    for node in graph.node:
        if not _is(node, "", "ReduceSum") or not node.input:
            continue
        _, source = producer.get(_through_identity(node.input[0], producer), (None, None))
        axes = reduced_axes(node, initializers)
        if (source is None or axes is None or id(source) in fused
                or not (_is(source, ops.DOMAIN, ops.LAYER_NORM_GRAD_ADD)
                        or _is(source, ops.MICROSOFT, "LayerNormalizationGrad"))):
            continue
        inputs = list(source.input) if len(source.input) > 5 else [*source.input[:5], ""]
        outs = [*source.output, "", ""][:3]
        new = onnx.helper.make_node(ops.LAYER_NORM_GRAD_ADD, inputs, [*outs, node.output[0]], name=source.name,
                                    domain=ops.DOMAIN, axes=axes)
        new.attribute.extend(a for a in source.attribute if a.name != "axes")
        fused[id(source)] = new
        dropped.add(id(node))
    if not fused:
        return model
    return with_nodes(model, [fused.get(id(n), n) for n in graph.node if id(n) not in dropped])


def norm_passes(model: onnx.ModelProto) -> onnx.ModelProto:
    """The three passes above in order; ``model`` after ``passes.add_into_matmul``."""
    return bias_gradient_into_layer_norm_grad(residual_gradient_into_layer_norm_grad(
        layer_norm_into_matmul_add(model)))
