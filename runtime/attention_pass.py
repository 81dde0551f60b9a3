"""The load-time pass that replaces each exported attention product and its gradient by the fused kernels
(``runtime.kernels.attention``; graph in, graph out).

Matched by ops and dataflow, not by node names, so the graphs of ONNX Runtime's gradient builder and of the
project's own (``--gradients own``) are matched alike. Forward: ``MatMul(q, kt)``, optionally times or divided
by a constant scalar, ``Softmax`` over the last axis, ``MatMul(probabilities, v)``. Backward (the ops both
builders emit for those): ``FusedMatMul(P, dout, transA)`` -> dv, ``FusedMatMul(dout, v, transB)`` -> dP,
``SoftmaxGrad_13(dP, P)``, the scalar's gradient (``Mul``/``Div`` by the same constant, ``Identity``), then
``FusedMatMul(dS, kt, transB)`` -> dq and ``FusedMatMul(q, dS, transA)`` -> dkt. Anything else between them (an
additive bias or mask before the softmax, as Swin's, a tensor another node reads, a graph output, dropout on the
probabilities) leaves that attention as it was.
"""
from typing import Dict, List, Optional

import onnx
from onnx import numpy_helper

from edge_lbp.core import ops
from edge_lbp.runtime.graph_edits import attribute

_STANDARD = ("", "ai.onnx")


class _Index:
    """Who produces and who reads each tensor, the graph outputs and the constant scalars."""

    def __init__(self, graph: onnx.GraphProto):
        self.producer = {o: n for n in graph.node for o in n.output}
        self.readers: Dict[str, List[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in graph.output}
        self.values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in _STANDARD and node.attribute \
                    and node.attribute[0].name == "value":
                self.values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    def only_reader(self, name: str) -> Optional[onnx.NodeProto]:
        found = self.readers.get(name, [])
        return found[0] if len(found) == 1 and name not in self.outputs else None

    def scalar(self, name: str) -> Optional[float]:
        value = self.values.get(name)
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _is(node, op_type, domain=_STANDARD):
    return node is not None and node.op_type == op_type and node.domain in domain


def _fused_matmul(node, trans_a, trans_b):
    return (_is(node, "FusedMatMul", (ops.MICROSOFT,)) and attribute(node, "transA", 0) == trans_a
            and attribute(node, "transB", 0) == trans_b and not attribute(node, "transBatchA", 0)
            and not attribute(node, "transBatchB", 0) and attribute(node, "alpha", 1.0) == 1.0)


def _scale_node(node, index):
    """``(scale, constant)`` of ``Mul(x, c)`` / ``Mul(c, x)`` / ``Div(x, c)`` with a scalar constant, or None."""
    if _is(node, "Mul"):
        for side in (0, 1):
            c = index.scalar(node.input[side])
            if c is not None:
                return c, node.input[side]
    if _is(node, "Div"):
        c = index.scalar(node.input[1])
        if c is not None and c != 0:
            return 1.0 / c, node.input[1]
    return None


def _forward(softmax, index):
    """The forward nodes and tensors of the attention around ``softmax``, or None."""
    axis = attribute(softmax, "axis", -1)
    if axis != -1:  # the kernels' rows are the last axis; another axis value needs the rank, unknown here
        return None
    scores, scaled = softmax.input[0], None
    scale, constant = 1.0, None
    node = index.producer.get(scores)
    found = _scale_node(node, index)
    if found is not None and index.only_reader(scores) is softmax:
        scale, constant = found
        scaled = node
        scores = next(name for name in node.input if name != constant) if _is(node, "Mul") else node.input[0]
    product = index.producer.get(scores)
    if not _is(product, "MatMul") or index.only_reader(scores) is not (softmax if scaled is None else scaled):
        return None
    probabilities = softmax.output[0]
    context = [n for n in index.readers.get(probabilities, []) if _is(n, "MatMul") and n.input[0] == probabilities]
    if len(context) != 1 or probabilities in index.outputs:
        return None
    return dict(axis=axis, scale=scale, constant=constant, product=product, scaled=scaled, softmax=softmax,
                context=context[0], q=product.input[0], kt=product.input[1], v=context[0].input[1],
                probabilities=probabilities)


def _through_scale(name, fwd, index):
    """The node chain that applies the forward scalar's gradient to ``name`` (``Mul``/``Div`` by the same
    constant, ``Identity``), and the tensor it ends at; ``([], name)`` without a scalar; None if it differs."""
    if fwd["scaled"] is None:
        return [], name
    chain, done = [], False
    while True:
        node = index.only_reader(name)
        if _is(node, "Identity"):
            chain.append(node)
        elif not done and node is not None and node.op_type == fwd["scaled"].op_type \
                and fwd["constant"] in node.input and _scale_node(node, index) is not None:
            chain.append(node)
            done = True
        else:
            return (chain, name) if done else None
        name = node.output[0]


def _backward(fwd, index):
    """The gradient nodes of a matched forward and the fused node's tensors, or None."""
    readers = [n for n in index.readers.get(fwd["probabilities"], []) if n is not fwd["context"]]
    grad_v = next((n for n in readers if _fused_matmul(n, 1, 0) and n.input[0] == fwd["probabilities"]), None)
    grad_s = next((n for n in readers if _is(n, "SoftmaxGrad_13", (ops.MICROSOFT,))
                   and n.input[1] == fwd["probabilities"] and attribute(n, "axis", -1) == fwd["axis"]), None)
    if grad_v is None or grad_s is None or len(readers) != 2:
        return None
    dout = grad_v.input[1]
    grad_p = index.producer.get(grad_s.input[0])
    if (not _fused_matmul(grad_p, 0, 1) or list(grad_p.input) != [dout, fwd["v"]]
            or index.only_reader(grad_s.input[0]) is not grad_s):
        return None
    found = _through_scale(grad_s.output[0], fwd, index)
    if found is None:
        return None
    chain, d_scores = found
    users = index.readers.get(d_scores, [])
    grad_q = next((n for n in users if _fused_matmul(n, 0, 1) and list(n.input) == [d_scores, fwd["kt"]]), None)
    grad_k = next((n for n in users if _fused_matmul(n, 1, 0) and list(n.input) == [fwd["q"], d_scores]), None)
    if grad_q is None or grad_k is None or len(users) != 2 or d_scores in index.outputs:
        return None
    return dict(nodes=[grad_v, grad_p, grad_s, *chain, grad_q, grad_k], dout=dout,
                outputs=[grad_q.output[0], grad_k.output[0], grad_v.output[0]])


def _order(nodes, replace):
    """The graph's nodes with each replaced one's fused node at its place (``replace``: id -> node or None)."""
    return [replace.get(id(n), n) for n in nodes if replace.get(id(n), n) is not None]


def fuse_attention(model: onnx.ModelProto) -> onnx.ModelProto:
    """Each matched attention becomes ``edge_lbp::Attention`` at its second product's place and, in a training
    graph, its gradient one ``edge_lbp::AttentionGrad`` at the place of the first gradient node. An attention
    whose probabilities the backward reads but whose gradient does not match stays as it was."""
    graph = model.graph
    index = _Index(graph)
    position = {id(n): i for i, n in enumerate(graph.node)}
    replace = {}
    for softmax in [n for n in graph.node if _is(n, "Softmax")]:
        fwd = _forward(softmax, index)
        if fwd is None:
            continue
        bwd = _backward(fwd, index)
        if bwd is None and len(index.readers[fwd["probabilities"]]) != 1:
            continue
        context = fwd["context"]
        stats = [f"{context.output[0]}/row_max", f"{context.output[0]}/row_sum"]
        for node in (fwd["product"], fwd["scaled"], softmax):
            if node is not None:
                replace[id(node)] = None
        replace[id(context)] = onnx.helper.make_node(
            ops.ATTENTION, [fwd["q"], fwd["kt"], fwd["v"]], [context.output[0], *stats], name=softmax.name,
            domain=ops.DOMAIN, scale=fwd["scale"])
        if bwd is not None:
            first = min(bwd["nodes"], key=lambda n: position[id(n)])
            for node in bwd["nodes"]:
                replace[id(node)] = None
            replace[id(first)] = onnx.helper.make_node(
                ops.ATTENTION_GRAD, [bwd["dout"], fwd["q"], fwd["kt"], fwd["v"], *stats], bwd["outputs"],
                name=f"{softmax.name}_Grad", domain=ops.DOMAIN, scale=fwd["scale"])
    if not replace:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(_order(graph.node, replace))
    if not any(o.domain == ops.DOMAIN for o in out.opset_import):
        out.opset_import.append(onnx.helper.make_opsetid(ops.DOMAIN, ops.OPSET))
    return out
