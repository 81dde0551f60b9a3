"""Reverse-mode differentiation of a forward ONNX graph into the training graph the engines run.

The training graph is laid out as onnxruntime-training 1.19 lays it out (``edge_lbp.core.ort_names``), so the
engines, the load-time passes and the artifact contract take either: inputs ``(model inputs, labels, parameters
(trainable and frozen, in initializer order), <p>_grad.accumulation.buffer..., lazy_reset_grad)``, outputs ``(loss,
<p>_grad.accumulation.out...)``; the forward nodes, then a mean ``SoftmaxCrossEntropyLoss`` on the logits, then
every backward node of forward node ``F`` named ``F_Grad/<op>_<k>`` in reverse order, a gradient read by several
nodes summed (``Sum``) into ``<x>_grad``, and one ``InPlaceAccumulatorV2`` per trainable parameter.
"""
import numpy as np
import onnx
from onnx import helper, numpy_helper

from edge_lbp.core import ops, ort_names
from edge_lbp.core.gradients import registry
from edge_lbp.core.gradients.forward import (constant_values, drop_identity_dropout, fuse_bias_gelu, fuse_gelu,
                                             inference_batchnorm, inference_dropout, mask_dropout,
                                             stash_batchnorm)
from edge_lbp.core.gradients.registry import GradientError
from edge_lbp.core.gradients.static_shapes import dims, static_shapes
from edge_lbp.core.ops import MAX_IR_VERSION
from edge_lbp.core.ops import MICROSOFT as MS

# ORT's loss block names the loss node and its outputs with a running counter (these for a small MLP; vit-tiny
# gets onnx::loss::14). The engines read the loss as the first output, never by name.
LOSS, LOG_PROB, LOSS_NODE = "onnx::loss::2", "onnx::log_prob::3", "onnx::SoftmaxCrossEntropyLoss::4"


class NodeGradient:
    """What a rule sees of one forward node: its inputs ``x(i)``, outputs ``y(i)``, output gradients ``dy(i)``
    (None where no gradient flows), the inputs it must differentiate (``wants(i)``), static shapes, and ``emit``,
    which appends a backward node named ``<node>_Grad/<op>_<k>``."""

    def __init__(self, builder, node, dys, wanted):
        self.node, self._builder, self._dys, self._wanted = node, builder, dys, wanted
        self.attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self.given = {}  # input position -> gradient tensor

    def x(self, i):
        return self.node.input[i]

    def y(self, i=0):
        return self.node.output[i]

    def dy(self, i=0):
        return self._dys[i]

    def wants(self, i):
        return i in self._wanted

    def shape(self, name):
        """Static shape of a forward tensor: a tuple of ints and symbolic names (str), or raise."""
        shape = self._builder.shapes.get(name)
        if shape is None:
            raise self.error(f"shape of {name!r} is unknown")
        return shape

    def elem_type(self, name):
        """The ONNX element type (``onnx.TensorProto.FLOAT``, ...) of a forward tensor, or raise."""
        elem = self._builder.types.get(name)
        if not elem:
            raise self.error(f"element type of {name!r} is unknown")
        return elem

    @property
    def values(self):
        """The forward's constants by name (initializers and Constant outputs), as arrays."""
        return self._builder.values

    def const_value(self, name):
        """The value of a constant input (an initializer or a Constant node's output), or raise."""
        value = self.values.get(name)
        if value is None:
            raise self.error(f"{name!r} is not a constant")
        return value.tolist()

    def error(self, text):
        return GradientError(f"node {self.node.name!r} (op {self.node.op_type}): {text}")

    def const(self, label, value, dtype=np.int64):
        return self._builder.constant(f"{self.node.name}_Grad/{label}", np.asarray(value, dtype))

    def emit(self, op, inputs, n_out=1, domain="", outputs=None, **attrs):
        """Append a backward node; returns its output names (``outputs`` given, or fresh ones)."""
        name = f"{self.node.name}_Grad/{op}_{self._builder.count(self.node.name)}"
        outputs = outputs or [f"{name}_out{j}" for j in range(n_out)]
        self._builder.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=name, domain=domain,
                                                    **attrs))
        return outputs

    def set(self, i, tensor):
        """``tensor`` is the gradient of input ``i``."""
        self.given[i] = tensor

    def reduce_to(self, tensor, full, i):
        """``tensor`` (of broadcast shape ``full``) summed over the axes input ``i`` was broadcast along: its
        missing leading axes and its static 1s where the result is not 1, decided here at build time. A symbolic
        dimension of the input that is the result's (the batch) is not broadcast; one that shape inference could
        not relate to the result's (a size computed at run time, as a Resize's) leaves the axes to run time, as
        ORT does: ``BroadcastGradientArgs`` on the two shapes, a ReduceSum, a Reshape to the input's shape."""
        target = self.shape(self.x(i))
        lead = len(full) - len(target)
        if lead < 0:
            raise self.error(f"input {i} has more dimensions than the broadcast result")
        padded = (1,) * lead + tuple(target)
        if any(not isinstance(d, int) and (d is None or d != f) for d, f in zip(padded[lead:], full[lead:])):
            return self._reduce_at_run_time(tensor, i)
        axes = [a for a in range(lead, len(full)) if padded[a] == 1 and full[a] != 1]
        if lead:
            tensor = self.emit("ReduceSum", [tensor, self.const(f"lead_axes_{i}", list(range(lead)))],
                               keepdims=0)[0]
        if axes:
            tensor = self.emit("ReduceSum", [tensor, self.const(f"axes_{i}", [a - lead for a in axes])],
                               keepdims=1)[0]
        return tensor

    def _reduce_at_run_time(self, tensor, i):
        shape = self.emit("Shape", [self.x(i)])[0]
        axes = self.emit("BroadcastGradientArgs", [shape, self.emit("Shape", [tensor])[0]], n_out=2, domain=MS)[0]
        summed = self.emit("ReduceSum", [tensor, axes], keepdims=1, noop_with_empty_axes=1)[0]
        return self.emit("Reshape", [summed, shape])[0]


class Builder:
    """The forward graph (rewritten: ``forward``), its static shapes and constants, and the backward nodes and
    constants appended so far."""

    def __init__(self, model):
        self.forward = mask_dropout(drop_identity_dropout(stash_batchnorm(fuse_bias_gelu(fuse_gelu(model)))))
        inferred = onnx.shape_inference.infer_shapes(model)
        self.shapes = static_shapes(model)
        self.types = {vi.name: vi.type.tensor_type.elem_type for vi in (*inferred.graph.value_info,
                                                                        *inferred.graph.input)}
        self.types.update((t.name, t.data_type) for t in model.graph.initializer)
        self.values = constant_values(self.forward.graph)
        self.nodes, self.initializers, self._counts = [], [], {}

    def count(self, node_name):
        k = self._counts.get(node_name, 0)
        self._counts[node_name] = k + 1
        return k

    def constant(self, name, value):
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def backward(self, trainable, logits):
        """Append the backward nodes from ``logits_grad`` down to the parameters; returns ``{param: grad}``."""
        graph = self.forward.graph
        needs = _requires_grad(graph.node, set(trainable))
        feeds = _feeds_loss(graph.node, logits)
        active = [n for n in graph.node
                  if any(o in feeds and o in needs for o in n.output) and any(i in needs for i in n.input)]
        plans, expected = [], {}
        for node in active:
            found = registry.lookup(node)
            if found is None:
                continue
            fn, positions = found
            wanted = {i for i in positions if i < len(node.input) and node.input[i] in needs}
            for i in wanted:
                expected[node.input[i]] = expected.get(node.input[i], 0) + 1
            plans.append((node, fn, wanted))
        grads, parts = {logits: ort_names.gradient(logits)}, {}
        for node, fn, wanted in reversed(plans):
            g = NodeGradient(self, node, [grads.get(o) for o in node.output], wanted)
            first = len(self.nodes)
            fn(g)
            for i in wanted:
                if i not in g.given:
                    raise g.error(f"the rule gave no gradient for input {i}")
                x = node.input[i]
                parts.setdefault(x, []).append(g.given[i])
                if len(parts[x]) == expected[x]:
                    grads[x] = self._total(x, parts.pop(x), x in trainable, first, list(g.given.values()))
        missing = [p for p in trainable if p not in grads]
        if missing:
            raise GradientError(f"the loss does not depend on trainable parameter {missing[0]!r}")
        return {p: grads[p] for p in trainable}

    def _total(self, x, parts, is_param, first, given):
        """The gradient of ``x`` from its parts, named ``<x>_grad`` (what the accumulator, the LBP rewrite and a
        reader of ORT's graphs expect): a part the current rule made for ``x`` alone is renamed, several parts
        are summed; a parameter's gradient that is another tensor's too (Add passes ``dY`` on) gets an Identity."""
        name = ort_names.gradient(x)
        if len(parts) == 1:
            made = [n for n in self.nodes[first:] if parts[0] in n.output]
            read = any(parts[0] in n.input for n in self.nodes[first:])
            if made and not read and given.count(parts[0]) == 1:
                made[0].output[list(made[0].output).index(parts[0])] = name
                return name
            if not is_param:
                return parts[0]
        op = "Sum" if len(parts) > 1 else "Identity"
        self.nodes.append(helper.make_node(op, parts, [name], name=f"{ort_names.ACCUMULATE_PREFIX}_{x}"))
        return name


def _requires_grad(nodes, trainable):
    """Tensors that depend on a trainable parameter through ops that carry gradients."""
    needs = set(trainable)
    for node in nodes:
        # An op without a rule passes the dependence on; the backward pass then names it if the loss needs it.
        found = registry.lookup(node) if registry.has_rule(node) else (None, range(len(node.input)))
        if found is None:
            continue
        positions = found[1]
        if any(i < len(node.input) and node.input[i] in needs for i in positions):
            needs.update(o for o in node.output if o)
    return needs


def _feeds_loss(nodes, logits):
    """Tensors the logits depend on."""
    feeds = {logits}
    for node in reversed(nodes):
        if any(o in feeds for o in node.output):
            feeds.update(i for i in node.input if i)
    return feeds


def _parameters(model, trainable, frozen):
    """``trainable`` and ``frozen`` in the forward's initializer order (ORT declares parameters, buffers and
    accumulator outputs in that order, whatever order the lists come in), after checking ``model`` and them."""
    order = [t.name for t in model.graph.initializer]
    unknown = [p for p in [*trainable, *frozen] if p not in order]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not an initializer of the forward model")
    if len(model.graph.output) != 1:
        raise ValueError(f"the forward model must have one output (the logits), it has {len(model.graph.output)}")
    return [p for p in order if p in set(trainable)], [p for p in order if p in set(frozen)]


def _inputs(graph, trainable, frozen):
    """The model inputs, ``labels`` and the parameters, as both of ORT's graphs start their inputs."""
    params = {t.name: t for t in graph.initializer}
    batch = dims(graph.output[0])[0]
    # A model that also lists its initializers as inputs (IR < 4 style) must not declare the parameters twice.
    inputs = [i for i in graph.input if i.name not in params]
    inputs += [helper.make_tensor_value_info(ort_names.LABELS, onnx.TensorProto.INT64, [batch])]
    chosen = set(trainable) | set(frozen)
    inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in graph.initializer
               if t.name in chosen]
    return inputs, [t for t in graph.initializer if t.name not in chosen]


def _loss(logits):
    return helper.make_node("SoftmaxCrossEntropyLoss", [logits, ort_names.LABELS], [LOSS, LOG_PROB], name=LOSS_NODE,
                            reduction="mean")


def build_training_graph(model, trainable, frozen):
    """The training ModelProto of forward ``model`` (one output, the logits) for parameters ``trainable`` (their
    gradients accumulate) and ``frozen`` (graph inputs without gradients). Raises GradientError naming the first
    node it cannot differentiate."""
    trainable, frozen = _parameters(model, trainable, frozen)
    b = Builder(model)
    graph = b.forward.graph
    logits = graph.output[0].name
    params = {t.name: t for t in graph.initializer}
    one = b.constant(ort_names.gradient(LOSS), np.array(1.0, np.float32))
    b.nodes.append(_loss(logits))
    b.nodes.append(helper.make_node("SoftmaxCrossEntropyLossGrad", [one, LOG_PROB, ort_names.LABELS],
                                    [ort_names.gradient(logits)], domain=MS, reduction="mean",
                                    name=f"{LOSS_NODE}_Grad/SoftmaxCrossEntropyLossGrad_0"))
    grads = b.backward(trainable, logits)
    outputs = [helper.make_tensor_value_info(LOSS, onnx.TensorProto.FLOAT, [])]
    buffers = []
    for k, p in enumerate(trainable, 1):
        buffer, out = ort_names.accumulation_buffer(p), ort_names.accumulation_output(p)
        b.nodes.append(helper.make_node("InPlaceAccumulatorV2", [buffer, grads[p], ort_names.LAZY_RESET], [out],
                                        name=f"GradientAccumulator{k}", domain=MS))
        buffers.append(helper.make_tensor_value_info(buffer, onnx.TensorProto.FLOAT, params[p].dims))
        outputs.append(helper.make_tensor_value_info(out, onnx.TensorProto.BOOL, [1]))
    inputs, kept = _inputs(graph, trainable, frozen)
    inputs += [*buffers, helper.make_tensor_value_info(ort_names.LAZY_RESET, onnx.TensorProto.BOOL, [1])]
    training = helper.make_graph([*graph.node, *b.nodes], "training", inputs, outputs, [*kept, *b.initializers])
    opsets = [o for o in b.forward.opset_import if o.domain not in ("", MS)]
    opsets += [helper.make_opsetid("", _onnx_opset(b.forward)), helper.make_opsetid(MS, 1)]
    if any(n.domain == ops.DOMAIN for n in b.nodes) and not any(o.domain == ops.DOMAIN for o in opsets):
        opsets.append(helper.make_opsetid(ops.DOMAIN, ops.OPSET))  # a rule emitted one of ours (ResizeGrad)
    return helper.make_model(training, opset_imports=opsets, ir_version=min(b.forward.ir_version, MAX_IR_VERSION))


def build_eval_graph(model, trainable, frozen):
    """The eval ModelProto of forward ``model``, as ORT's artifact generator lays it out: the training graph's
    inputs up to the parameters, the forward nodes (BatchNormalization on its running statistics) and the mean
    loss on the logits, the loss the only output (the engines cut the graph down to the logits themselves); a
    Dropout passes its input through."""
    trainable, frozen = _parameters(model, trainable, frozen)
    graph = model.graph
    inputs, kept = _inputs(graph, trainable, frozen)
    nodes = [*inference_dropout(inference_batchnorm(graph.node)), _loss(graph.output[0].name)]
    outputs = [helper.make_tensor_value_info(LOSS, onnx.TensorProto.FLOAT, [])]
    return helper.make_model(helper.make_graph(nodes, graph.name, inputs, outputs, kept),
                             opset_imports=model.opset_import, ir_version=min(model.ir_version, MAX_IR_VERSION))


def _onnx_opset(model):
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
