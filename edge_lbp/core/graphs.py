"""ONNX graph helpers that the exporter, the artifact reader and the engines share (graph in, graph out)."""
import onnx


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
