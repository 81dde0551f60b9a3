"""Forward rewrites before differentiation, the ones ORT's training graphs make too.

- torch's erf-form GELU becomes one ``com.microsoft::Gelu``: ``torch.nn.functional.gelu`` exports as
  ``Mul(Mul(x, Add(Erf(Div(x, sqrt 2)), 1)), 0.5)``; differentiating those five nodes one by one would need an
  ``Erf`` gradient (``exp``, which the engine lacks) and keep four temporaries per GELU alive for the backward.
  ``GeluGrad`` needs only ``x``.
- ``Gelu(Add(x, b))`` with a bias vector ``b`` becomes ``com.microsoft::BiasGelu(x, b)``: its gradient
  ``BiasGeluGrad_dX`` and the bias gradient's ``ReduceSum`` are what the engine's ``BiasGeluGradSum`` pass fuses
  (the bias gradient summed while the input gradient is written).
- A training-mode ``BatchNormalization`` becomes ``com.microsoft::BatchNormInternal``, which also outputs the
  batch mean and inverse standard deviation that ``BatchNormalizationGrad`` reads (named as ORT names it).
- A ``Dropout`` that cannot drop (ratio 0, or not in training mode) is removed, as ORT's graph optimiser removes it:
  it would only copy, and it stands between ops that load-time passes fuse (attention's softmax and product).
  One that can drop gets its mask output (``<node>_mask``), which ``DropoutGrad`` reads.
- For the eval graph, a training-mode ``BatchNormalization`` normalises with its running statistics instead, and a
  ``Dropout`` loses its ``training_mode`` input (so it passes its input through), as ORT's eval graphs have them.
"""
import math

from onnx import helper, numpy_helper

from edge_lbp.core.ops import MICROSOFT as MS


def constant_values(graph):
    """Initializers and Constant outputs by name, as arrays."""
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _is(values, name, number):
    value = values.get(name)
    return value is not None and value.size == 1 and abs(float(value.reshape(-1)[0]) - number) < 1e-6


def fuse_gelu(model):
    """A copy of ``model`` with every erf-form GELU replaced by a ``Gelu`` node (the Erf's name, ``Erf`` ->
    ``Gelu``); constants left unread are dropped."""
    graph = model.graph
    values = constant_values(graph)
    readers, producer = {}, {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
        for name in node.output:
            producer[name] = node
    outputs = {o.name for o in graph.output}

    def only_reader(name, op_type):
        found = readers.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op_type and name not in outputs else None

    def other(node, name):
        return node.input[1] if node.input[0] == name else node.input[0]

    replaced, fused = {}, set()
    for erf in graph.node:
        div = producer.get(erf.input[0]) if erf.op_type == "Erf" else None
        if div is None or div.op_type != "Div" or not _is(values, div.input[1], math.sqrt(2)):
            continue
        x = div.input[0]
        add = only_reader(erf.output[0], "Add")
        mul = add and only_reader(add.output[0], "Mul")
        half = mul and only_reader(mul.output[0], "Mul")
        if not (half and _is(values, other(add, erf.output[0]), 1.0) and other(mul, add.output[0]) == x
                and _is(values, other(half, mul.output[0]), 0.5) and only_reader(div.output[0], "Erf")):
            continue
        scope, slash, last = erf.name.rpartition("/")
        name = scope + slash + last.replace("Erf", "Gelu", 1)  # /mlp/act/Erf_1 -> /mlp/act/Gelu_1: unique
        replaced[id(half)] = helper.make_node("Gelu", [x], [half.output[0]], name=name, domain=MS)
        fused.update(id(n) for n in (div, erf, add, mul))
    if not replaced:
        return model
    nodes = [replaced.get(id(n), n) for n in graph.node if id(n) not in fused]
    read = {i for n in nodes for i in n.input} | outputs
    return _with_nodes(model, [n for n in nodes if n.op_type != "Constant" or n.output[0] in read])


def fuse_bias_gelu(model):
    """A copy of ``model`` in which every ``Gelu(Add(x, b))``, ``b`` a 1-D initializer of more than one element and
    the sum read by the Gelu alone, is one ``BiasGelu(x, b)`` (named as the Gelu, ``Gelu`` -> ``BiasGelu``)."""
    graph = model.graph
    vectors = {t.name for t in graph.initializer if len(t.dims) == 1 and t.dims[0] > 1}
    producer = {o: n for n in graph.node for o in n.output}
    reads = {}
    for name in [i for n in graph.node for i in n.input] + [o.name for o in graph.output]:
        reads[name] = reads.get(name, 0) + 1
    replaced, fused = {}, set()
    for gelu in graph.node:
        add = producer.get(gelu.input[0]) if gelu.op_type == "Gelu" and gelu.domain == MS else None
        if add is None or add.op_type != "Add" or add.domain or reads[add.output[0]] != 1:
            continue
        bias = next((i for i in add.input if i in vectors), None)
        if bias is None or list(add.input).count(bias) != 1:
            continue
        x = add.input[1] if add.input[0] == bias else add.input[0]
        scope, slash, last = gelu.name.rpartition("/")
        replaced[id(gelu)] = helper.make_node("BiasGelu", [x, bias], [gelu.output[0]], domain=MS,
                                              name=scope + slash + last.replace("Gelu", "BiasGelu", 1))
        fused.add(id(add))
    if not replaced:
        return model
    return _with_nodes(model, [replaced.get(id(n), n) for n in graph.node if id(n) not in fused])


def stash_batchnorm(model):
    """A copy of ``model`` with every training-mode BatchNormalization ``B`` replaced by ``B_BatchNormInternal``
    (the same inputs and outputs, plus ``B_saved_mean`` and ``B_saved_inv_std``)."""
    nodes, changed = [], False
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "BatchNormalization" or node.domain or not attrs.get("training_mode", 0):
            nodes.append(node)
            continue
        outputs = list(node.output) + [""] * (3 - len(node.output))
        nodes.append(helper.make_node(
            "BatchNormInternal", list(node.input), [*outputs, f"{node.name}_saved_mean", f"{node.name}_saved_inv_std"],
            name=f"{node.name}_BatchNormInternal", domain=MS, training_mode=1, epsilon=attrs.get("epsilon", 1e-5),
            momentum=attrs.get("momentum", 0.9)))
        changed = True
    return _with_nodes(model, nodes) if changed else model


def dropout_is_identity(node, values):
    """Whether a Dropout passes its input through unchanged: outside training mode (no ``training_mode`` input, or
    a constant false one) or at a constant ratio 0 (``values``: ``constant_values``)."""
    ratio = node.input[1] if len(node.input) > 1 else ""
    mode = node.input[2] if len(node.input) > 2 else ""
    return not mode or _is(values, mode, 0) or bool(ratio and _is(values, ratio, 0.0))


def drop_identity_dropout(model):
    """A copy of ``model`` without the Dropouts that pass their input through (``dropout_is_identity``), their
    readers reading the input instead; one whose output is a graph output, or whose mask is read, stays."""
    graph = model.graph
    values = constant_values(graph)
    kept = {o.name for o in graph.output}
    read = {name for n in graph.node for name in n.input}
    alias = {}
    for node in graph.node:
        if (node.op_type == "Dropout" and not node.domain and dropout_is_identity(node, values)
                and node.output[0] not in kept and not read.intersection(node.output[1:2])):
            alias[node.output[0]] = alias.get(node.input[0], node.input[0])
    if not alias:
        return model
    nodes = []
    for node in graph.node:
        if node.output[0] in alias and node.op_type == "Dropout":
            continue
        if alias.keys() & set(node.input):
            node = _with_inputs(node, [alias.get(name, name) for name in node.input])
        nodes.append(node)
    return _with_nodes(model, nodes)


def _with_inputs(node, inputs):
    out = type(node)()
    out.CopyFrom(node)
    del out.input[:]
    out.input.extend(inputs)
    return out


def mask_dropout(model):
    """A copy of ``model`` in which every Dropout that can drop outputs its mask (``<node>_mask`` where the
    forward did not ask for it)."""
    values = constant_values(model.graph)
    nodes, changed = [], False
    for node in model.graph.node:
        if node.op_type == "Dropout" and not node.domain and not dropout_is_identity(node, values) and (
                len(node.output) < 2 or not node.output[1]):
            node = helper.make_node("Dropout", list(node.input), [node.output[0], f"{node.name}_mask"],
                                    name=node.name, **{a.name: helper.get_attribute_value(a) for a in node.attribute})
            changed = True
        nodes.append(node)
    return _with_nodes(model, nodes) if changed else model


def inference_batchnorm(nodes):
    """``nodes`` with every training-mode BatchNormalization in inference mode (``training_mode=0``), its
    running-statistics outputs dropped: an inference-mode node has one output (ONNX shape inference rejects more)."""
    nodes = list(nodes)
    read = {name for n in nodes for name in n.input}
    for k, node in enumerate(nodes):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "BatchNormalization" or node.domain or not attrs.get("training_mode", 0):
            continue
        if read.intersection(node.output[1:]):
            raise ValueError(f"{node.name}: running-statistics outputs are consumed; no inference-mode eval graph")
        nodes[k] = helper.make_node("BatchNormalization", list(node.input), [node.output[0]], name=node.name,
                                    **{**attrs, "training_mode": 0})
    return nodes


def inference_dropout(nodes):
    """``nodes`` with every Dropout's ``training_mode`` input dropped: ONNX's default, inference, passes the input
    through."""
    nodes = list(nodes)
    for k, node in enumerate(nodes):
        if node.op_type == "Dropout" and not node.domain and len(node.input) > 2:
            nodes[k] = helper.make_node("Dropout", list(node.input[:2]), list(node.output), name=node.name,
                                        **{a.name: helper.get_attribute_value(a) for a in node.attribute})
    return nodes


def _with_nodes(model, nodes):
    out = type(model)()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    if not any(o.domain == MS for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS, 1))
    return out
