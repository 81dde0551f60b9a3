"""Graph passes the device applies at load time (graph in, graph out)."""
import onnx

from edge_lbp.core import ops
from edge_lbp.runtime.attention_pass import fuse_attention
from edge_lbp.runtime.graph_edits import attribute, readers, reduced_axes, with_nodes
from edge_lbp.runtime.norm_passes import norm_passes


def fold_transpose_into_gemm(model: onnx.ModelProto) -> onnx.ModelProto:
    """``Transpose(Gemm(A, B))`` -> ``Gemm(B, A)`` with the transpose flags swapped and flipped.

    ORT's gradient of ``MatMul(x, W^T)`` is ``Transpose(Gemm(x, dy, transA=1))``: BLAS can write the weight
    gradient in its final orientation directly instead of a transposing copy of every weight gradient. Only a
    Gemm without a C input whose output feeds nothing but that Transpose is folded.
    """
    graph = model.graph
    counts = readers(graph)
    outputs = {o.name for o in graph.output}
    producer = {o: n for n in graph.node for o in n.output}
    folded, dropped = {}, set()
    for node in graph.node:
        gemm = producer.get(node.input[0]) if node.op_type == "Transpose" and node.input else None
        if (gemm is None or gemm.op_type != "Gemm" or list(attribute(node, "perm", [])) != [1, 0]
                or (len(gemm.input) > 2 and gemm.input[2]) or counts[gemm.output[0]] != 1
                or gemm.output[0] in outputs):
            continue
        swapped = onnx.helper.make_node(
            "Gemm", [gemm.input[1], gemm.input[0]], [node.output[0]], name=gemm.name,
            transA=1 - attribute(gemm, "transB", 0), transB=1 - attribute(gemm, "transA", 0),
            alpha=attribute(gemm, "alpha", 1.0))
        folded[id(gemm)] = swapped
        dropped.add(id(node))
    if not folded:
        return model
    return with_nodes(model, [folded.get(id(n), n) for n in graph.node if id(n) not in dropped])


def _gemm_product(gemm, consumer, chain):
    """The fused node of ``InPlaceAccumulatorV2(buffer, Gemm(A, B))``, or None."""
    if gemm.op_type != "Gemm" or chain or (len(gemm.input) > 2 and gemm.input[2]):
        return None
    return onnx.helper.make_node(
        ops.GEMM_ACCUMULATE, [consumer.input[0], gemm.input[0], gemm.input[1], *_reset(consumer)],
        list(consumer.output), name=gemm.name, domain=ops.DOMAIN, transA=attribute(gemm, "transA", 0),
        transB=attribute(gemm, "transB", 0), alpha=attribute(gemm, "alpha", 1.0))


def _wht_weight_gradient(grad, consumer, chain):
    """The fused node of ``InPlaceAccumulatorV2(buffer, Transpose(WHTMatMulGrad(...)[1]))``, or None."""
    if (grad.op_type != ops.MATMUL_GRAD or grad.domain != ops.DOMAIN or len(chain) != 1
            or chain[0].op_type != "Transpose" or list(attribute(chain[0], "perm", [])) != [1, 0]
            or chain[0].input[0] != grad.output[1]):
        return None
    fused = onnx.helper.make_node(
        ops.MATMUL_GRAD_ACCUMULATE, [*grad.input[:3], consumer.input[0], *_reset(consumer)],
        [grad.output[0], *consumer.output], name=grad.name, domain=ops.DOMAIN)
    fused.attribute.extend(grad.attribute)
    return fused


def _reset(accumulator):
    return [accumulator.input[2]] if len(accumulator.input) > 2 and accumulator.input[2] else []


def accumulate_in_place(model: onnx.ModelProto) -> onnx.ModelProto:
    """The op that computes a weight gradient writes it into the gradient's accumulation buffer.

    ``InPlaceAccumulatorV2(buffer, Gemm(A, B), reset)`` becomes ``edge_lbp::GemmAccumulate(buffer, A, B,
    reset)``, and ``InPlaceAccumulatorV2(buffer, Transpose(WHTMatMulGrad(x_hat, dy, b)[1]), reset)`` becomes
    ``edge_lbp::WHTMatMulGradAccumulate(x_hat, dy, b, buffer, reset)``, each at the producer's place. Unfused,
    every weight gradient is a temporary the accumulator then copies (ViT-B/16: 330 MB a step, and the largest
    one held beside the buffers); fused, BLAS writes the product into the buffer on the steps that overwrite it.
    Only chains whose intermediate tensors nothing else reads are fused.
    """
    graph = model.graph
    counts = readers(graph)
    outputs = {o.name for o in graph.output}
    producer = {o: n for n in graph.node for o in n.output}

    def private(name):
        return counts.get(name) == 1 and name not in outputs

    fused, dropped = {}, set()
    for node in graph.node:
        if node.op_type != "InPlaceAccumulatorV2" or len(node.input) < 2 or not private(node.input[1]):
            continue
        chain, source = [], producer.get(node.input[1])
        if source is not None and source.op_type == "Transpose" and private(source.input[0]):
            chain, source = [source], producer.get(source.input[0])
        if source is None or id(source) in fused:
            continue
        new = _gemm_product(source, node, chain) or _wht_weight_gradient(source, node, chain)
        if new is not None:
            fused[id(source)] = new
            dropped.update(id(n) for n in (node, *chain))
    if not fused:
        return model
    return with_nodes(model, [fused.get(id(n), n) for n in graph.node if id(n) not in dropped])


def sum_bias_gradient_with_gelu_grad(model: onnx.ModelProto) -> onnx.ModelProto:
    """``ReduceSum(BiasGeluGrad_dX(dy, x, b), axes, keepdims=0)`` -> ``edge_lbp::BiasGeluGradSum(dy, x, b)``.

    ORT's backward of ``BiasGelu(MatMul(h, W), b)`` computes GELU's input gradient, then reads all of it again to
    sum the bias gradient; the fused kernel sums the columns while it writes the gradient (one pass over a
    ``B·N × 4·dim`` tensor less per block). The gradient stays an output for the weight gradient and the layer's
    input gradient that read it too.
    """
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    fused, dropped = {}, set()
    for node in graph.node:
        grad = producer.get(node.input[0]) if node.op_type == "ReduceSum" and node.input else None
        if (grad is None or grad.op_type != "BiasGeluGrad_dX" or grad.domain != ops.MICROSOFT
                or id(grad) in fused):
            continue
        axes = reduced_axes(node, initializers)
        if axes is None:
            continue
        fused[id(grad)] = onnx.helper.make_node(
            ops.BIAS_GELU_GRAD_SUM, list(grad.input), [grad.output[0], node.output[0]], name=grad.name,
            domain=ops.DOMAIN, axes=axes)
        dropped.add(id(node))
    if not fused:
        return model
    return with_nodes(model, [fused.get(id(n), n) for n in graph.node if id(n) not in dropped])


def add_into_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """``Add(Add(MatMul(a, b), bias), residual)`` -> ``edge_lbp::MatMulAdd(a, b, bias, residual)``, and a lone
    ``Add(MatMul(a, b), bias)`` -> ``MatMulAdd(a, b, bias)``, at the last add's place.

    A transformer block's qkv, proj and fc2 layers add their bias in a node of its own, proj and fc2 then the
    residual: each add wrote a new tensor of the product's size; fused, both add into the product in one pass.
    Only a product (and a bias sum) that nothing else reads is fused.
    """
    graph = model.graph
    counts = readers(graph)
    outputs = {o.name for o in graph.output}
    producer = {o: n for n in graph.node for o in n.output}
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, node)

    def private(name):
        return counts.get(name) == 1 and name not in outputs

    fused, dropped = {}, set()
    for node in graph.node:
        if node.op_type != "Add" or node.domain not in ("", "ai.onnx") or id(node) in fused:
            continue  # (an add already fused as the residual add of an earlier one)
        side = next((i for i, name in enumerate(node.input) if private(name)
                     and getattr(producer.get(name), "op_type", None) == "MatMul"), None)
        if side is None:
            continue
        matmul = producer[node.input[side]]
        inputs, last = [*matmul.input, node.input[1 - side]], node
        after = consumers.get(node.output[0])
        if private(node.output[0]) and after.op_type == "Add" and after.domain in ("", "ai.onnx"):
            inputs.append(after.input[1] if after.input[0] == node.output[0] else after.input[0])
            last = after
        fused[id(last)] = onnx.helper.make_node(ops.MATMUL_ADD, inputs, list(last.output), name=matmul.name,
                                                domain=ops.DOMAIN)
        dropped.update(id(n) for n in (matmul, node, last) if n is not last)
    if not fused:
        return model
    return with_nodes(model, [fused.get(id(n), n) for n in graph.node if id(n) not in dropped])


_STANDARD = ("", "ai.onnx")
_VIEWS = {"Transpose": ops.TRANSPOSE_VIEW, "Split": ops.SPLIT_VIEW}
# Readers that take a strided operand as it is and write a new array: a shape's reader, and the scaling of q
# (``q * scale``: numpy's loop on a strided q costs less than the copy it saves).
_STRIDED_READERS = ("Shape", "Mul", "Div")


def views_into_attention(model: onnx.ModelProto) -> onnx.ModelProto:
    """In a training graph, ``Transpose`` and ``Split`` whose outputs reach only the fused attention (directly, or
    through other such nodes, ``Squeeze`` and ``Unsqueeze``; ``_STRIDED_READERS`` may read them too) ->
    ``TransposeView`` and ``SplitView``, which return views: the attention kernels copy each (image, head) tile from
    strided operands anyway, so the head transposes and splits of q, k, v and the transpose of the output's
    gradient (contiguous copies) are not needed."""
    graph = model.graph
    # Training graphs only (with AttentionGrad): there the backward keeps q, k, v alive and the copies cost memory
    # (9-16 % of the peak RSS). In forward-only graphs (evaluation, a side network's frozen backbone) the views were
    # not measured to help, and they moved edge-lbp plan's side-tuning estimate, taken from an eval graph, 32 %
    # away from the side graph's own step.
    if not any(n.domain == ops.DOMAIN and n.op_type == ops.ATTENTION_GRAD for n in graph.node):
        return model
    consumers, outputs, safe = {}, {o.name for o in graph.output}, {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def view_safe(tensor):
        """``(every reader takes a view, some reader is the attention or leads to it)``."""
        if tensor not in safe:
            safe[tensor] = (False, False)  # a graph has no cycles; this also bounds the recursion
            ok, attention = tensor not in outputs and bool(consumers.get(tensor)), False
            for r in consumers.get(tensor, []):
                if r.domain == ops.DOMAIN and r.op_type in (ops.ATTENTION, ops.ATTENTION_GRAD):
                    attention = True
                elif r.domain in _STANDARD and r.op_type in ("Squeeze", "Unsqueeze", *_VIEWS):
                    found = [view_safe(o) for o in r.output if o]
                    ok = ok and all(f[0] for f in found)
                    attention = attention or any(f[1] for f in found)
                else:
                    ok = ok and r.domain in _STANDARD and r.op_type in _STRIDED_READERS
            safe[tensor] = (ok, attention)
        return safe[tensor]

    def viewable(node):
        found = [view_safe(o) for o in node.output if o]
        return all(f[0] for f in found) and any(f[1] for f in found)

    viewed = {id(n): onnx.helper.make_node(_VIEWS[n.op_type], list(n.input), list(n.output), name=n.name,
                                           domain=ops.DOMAIN, **{a.name: onnx.helper.get_attribute_value(a)
                                                                 for a in n.attribute})
              for n in graph.node if n.domain in _STANDARD and n.op_type in _VIEWS and viewable(n)}
    if not viewed:
        return model
    return with_nodes(model, [viewed.get(id(n), n) for n in graph.node])


def training_passes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every pass above, ``runtime.norm_passes`` and ``runtime.attention_pass``, as the numba session applies
    them to its training graph and to its eval graph (where the passes that need a backward find nothing)."""
    return views_into_attention(fuse_attention(norm_passes(add_into_matmul(accumulate_in_place(
        fold_transpose_into_gemm(sum_bias_gradient_with_gelu_grad(model)))))))
