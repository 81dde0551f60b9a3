"""Gradient rules of the data-movement and reduction ops, and the ops that carry no gradient."""
import math

import numpy as np
import onnx

from edge_lbp.core.gradients.registry import no_gradient, rule
from edge_lbp.core import ops
from edge_lbp.core.ops import MICROSOFT as MS


# Shape arithmetic, comparisons, constants and random draws (drop-path's RandomUniformLike reads only its input's
# shape): their outputs do not depend differentiably on anything.
no_gradient("Shape", "Size", "Constant", "ConstantOfShape", "Equal", "Less", "Greater", "GreaterOrEqual",
            "LessOrEqual", "Not", "And", "Or", "Range", "RandomUniformLike", "RandomNormalLike", "Bernoulli")
no_gradient("Mod")  # integer arithmetic on sizes (Hugging Face Swin's window padding)


def _shape_of(g, i=0):
    return g.emit("Shape", [g.x(i)])[0]


@rule("Reshape")
@rule("Flatten")
@rule("Squeeze")
@rule("Unsqueeze")
def reshape(g):
    """Any op that only reshapes: the gradient takes the input's shape back."""
    g.set(0, g.emit("Reshape", [g.dy(), _shape_of(g)])[0])


@rule("Transpose")
def transpose(g):
    perm = g.attrs.get("perm") or list(range(len(g.shape(g.x(0))) - 1, -1, -1))
    g.set(0, g.emit("Transpose", [g.dy()], perm=[int(p) for p in np.argsort(perm)])[0])


@rule("Concat", inputs=None)
def concat(g):
    """Split the gradient back into the inputs' lengths along the axis, read at run time (a CLS token expanded to
    the batch has no static shape)."""
    axis = g.attrs["axis"] % len(g.shape(g.y()))
    sizes = [g.emit("Shape", [x], start=axis, end=axis + 1)[0] for x in g.node.input]
    lengths = g.emit("Concat", sizes, axis=0)[0]
    parts = g.emit("Split", [g.dy(), lengths], n_out=len(sizes), axis=axis)
    for i, part in enumerate(parts):
        if g.wants(i):
            g.set(i, part)


@rule("Split")
def split(g):
    dys = [g.dy(i) for i in range(len(g.node.output))]
    if None in dys:
        raise g.error("an output without a gradient is not supported")
    g.set(0, g.emit("Concat", dys, axis=g.attrs.get("axis", 0))[0])


@rule("Slice")
def slice_(g):
    """The gradient lands at the sliced positions of zeros of the input's shape."""
    bounds = list(g.node.input[1:])
    g.set(0, g.emit("SliceGrad", [g.dy(), _shape_of(g), *bounds], domain=MS)[0])


@rule("Gather")
def gather(g):
    """Scatter-add at the gathered positions (repeated indices add up)."""
    g.set(0, g.emit("GatherGrad", [_shape_of(g), g.x(1), g.dy()], domain=MS, axis=g.attrs.get("axis", 0))[0])


@rule("Resize")
def resize(g):
    """``edge_lbp::ResizeGrad`` with the forward's scales or sizes and attributes (ORT's ResizeGrad is CUDA-only)."""
    g.set(0, g.emit(ops.RESIZE_GRAD, [g.dy(), _shape_of(g), *g.node.input[1:]], domain=ops.DOMAIN, **g.attrs)[0])


@rule("Expand")
def expand(g):
    g.set(0, g.reduce_to(g.dy(), g.shape(g.y()), 0))


def _reduced_axes(g):
    """The reduction's axes (attribute until opset 18, input since; for ReduceSum since 13), non-negative."""
    rank = len(g.shape(g.x(0)))
    if "axes" in g.attrs:
        axes = g.attrs["axes"]
    elif len(g.node.input) > 1 and g.node.input[1]:
        axes = g.const_value(g.x(1))
    else:
        axes = []
    if not axes and not g.attrs.get("noop_with_empty_axes", 0):
        axes = range(rank)
    return sorted(int(a) % rank for a in axes)


def _spread(g, axes):
    """The output gradient broadcast back to the input's shape."""
    dy = g.dy()
    if axes and not g.attrs.get("keepdims", 1):
        dy = g.emit("Unsqueeze", [dy, g.const("axes", axes)])[0]
    return g.emit("Expand", [dy, _shape_of(g)])[0]


@rule("ReduceSum")
def reduce_sum(g):
    g.set(0, _spread(g, _reduced_axes(g)))


@rule("ReduceMean")
def reduce_mean(g):
    """The count is a constant where the reduced sizes are static, else ``Size(X) / Size(Y)`` at run time."""
    axes = _reduced_axes(g)
    sizes = [g.shape(g.x(0))[a] for a in axes]
    if all(isinstance(d, int) for d in sizes):
        count = g.const("count", float(math.prod(sizes)), "float32")
    else:
        ratio = g.emit("Div", [g.emit("Size", [g.x(0)])[0], g.emit("Size", [g.y()])[0]])[0]
        count = g.emit("Cast", [ratio], to=onnx.TensorProto.FLOAT)[0]
    g.set(0, g.emit("Div", [_spread(g, axes), count])[0])


@rule("Pad")
def pad(g):
    """Constant padding: the gradient is the output gradient without the padded margins, a Slice from the leading
    pads over the input's extent. The pads are read at run time (torch computes them from shapes); pads that crop
    (negative) are not supported."""
    mode = g.attrs.get("mode", b"constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        raise g.error(f"padding mode {mode!r} is not supported (constant only)")
    if len(g.node.input) > 3 and g.node.input[3]:
        raise g.error("padding selected axes (the axes input) is not supported")
    rank = len(g.shape(g.x(0)))
    pads = g.x(1) if len(g.node.input) > 1 else g.const("pads", g.attrs["pads"])
    starts = g.emit("Slice", [pads, g.const("first", [0]), g.const("rank", [rank])])[0]
    ends = g.emit("Add", [starts, _shape_of(g)])[0]
    g.set(0, g.emit("Slice", [g.dy(), starts, ends])[0])


@rule("GlobalAveragePool")
def global_average_pool(g):
    """The mean over every axis after the channels, kept: ReduceMean's gradient over those axes."""
    g.attrs = {"axes": list(range(2, len(g.shape(g.x(0))))), "keepdims": 1}
    reduce_mean(g)
