"""Graph passes the device applies at load time (graph in, graph out)."""
import onnx

from edge_lbp import ops


def prune_to_outputs(model: onnx.ModelProto, outputs) -> onnx.ModelProto:
    """Keep only the nodes, inputs and initializers that ``outputs`` depend on; they become the graph outputs.

    The eval graph ends in the loss (it needs labels); pruning it to the logits gives the inference graph.
    """
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    missing = [o for o in outputs if o not in producer and o not in {i.name for i in graph.input}]
    if missing:
        raise ValueError(f"graph has no tensor named {missing}")
    needed, stack, kept = set(outputs), list(outputs), set()
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in kept:
            continue
        kept.add(id(node))
        for name in node.input:
            if name and name not in needed:
                needed.add(name)
                stack.append(name)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    nodes = [n for n in graph.node if id(n) in kept]
    del g.node[:]
    g.node.extend(nodes)
    inputs = [i for i in graph.input if i.name in needed]
    del g.input[:]
    g.input.extend(inputs)
    inits = [t for t in graph.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
    known = {v.name: v for v in list(graph.output) + list(graph.value_info)}
    del g.output[:]
    g.output.extend(known.get(o, onnx.ValueInfoProto(name=o)) for o in outputs)
    return out


def _attribute(node, name, default):
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _readers(graph):
    counts = {}
    for node in graph.node:
        for name in node.input:
            counts[name] = counts.get(name, 0) + 1
    return counts


def _with_nodes(model, nodes):
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def fold_transpose_into_gemm(model: onnx.ModelProto) -> onnx.ModelProto:
    """``Transpose(Gemm(A, B))`` -> ``Gemm(B, A)`` with the transpose flags swapped and flipped.

    ORT's gradient of ``MatMul(x, W^T)`` is ``Transpose(Gemm(x, dy, transA=1))``: BLAS can write the weight
    gradient in its final orientation directly instead of a transposing copy of every weight gradient. Only a
    Gemm without a C input whose output feeds nothing but that Transpose is folded.
    """
    graph = model.graph
    readers = _readers(graph)
    outputs = {o.name for o in graph.output}
    producer = {o: n for n in graph.node for o in n.output}
    folded, dropped = {}, set()
    for node in graph.node:
        gemm = producer.get(node.input[0]) if node.op_type == "Transpose" and node.input else None
        if (gemm is None or gemm.op_type != "Gemm" or list(_attribute(node, "perm", [])) != [1, 0]
                or (len(gemm.input) > 2 and gemm.input[2]) or readers[gemm.output[0]] != 1
                or gemm.output[0] in outputs):
            continue
        swapped = onnx.helper.make_node(
            "Gemm", [gemm.input[1], gemm.input[0]], [node.output[0]], name=gemm.name,
            transA=1 - _attribute(gemm, "transB", 0), transB=1 - _attribute(gemm, "transA", 0),
            alpha=_attribute(gemm, "alpha", 1.0))
        folded[id(gemm)] = swapped
        dropped.add(id(node))
    if not folded:
        return model
    return _with_nodes(model, [folded.get(id(n), n) for n in graph.node if id(n) not in dropped])


def accumulate_into_gemm(model: onnx.ModelProto) -> onnx.ModelProto:
    """``InPlaceAccumulatorV2(buffer, Gemm(A, B), reset)`` -> ``edge_lbp::GemmAccumulate(buffer, A, B, reset)``
    at the Gemm's place.

    Every weight gradient of a training graph is a Gemm whose product the accumulator then copies into (or adds
    to) the gradient buffer: fused, BLAS writes the product into the buffer on the steps that overwrite it, which
    saves a copy of every weight gradient and its temporary (ViT-B/16: 330 MB a step). Only a Gemm without a C
    input whose output feeds nothing but the accumulator is fused.
    """
    graph = model.graph
    readers = _readers(graph)
    outputs = {o.name for o in graph.output}
    producer = {o: n for n in graph.node for o in n.output}
    fused, dropped = {}, set()
    for node in graph.node:
        gemm = producer.get(node.input[1]) if node.op_type == "InPlaceAccumulatorV2" and len(node.input) > 1 else None
        if (gemm is None or gemm.op_type != "Gemm" or (len(gemm.input) > 2 and gemm.input[2])
                or readers[gemm.output[0]] != 1 or gemm.output[0] in outputs):
            continue
        reset = [node.input[2]] if len(node.input) > 2 and node.input[2] else []
        fused[id(gemm)] = onnx.helper.make_node(
            ops.GEMM_ACCUMULATE, [node.input[0], gemm.input[0], gemm.input[1], *reset], list(node.output),
            name=gemm.name, domain=ops.DOMAIN, transA=_attribute(gemm, "transA", 0),
            transB=_attribute(gemm, "transB", 0), alpha=_attribute(gemm, "alpha", 1.0))
        dropped.add(id(node))
    if not fused:
        return model
    return _with_nodes(model, [fused.get(id(n), n) for n in graph.node if id(n) not in dropped])
