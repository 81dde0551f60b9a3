"""Resize (ONNX opsets 13-18, without antialiasing) and its gradient, ``edge_lbp::ResizeGrad``.

Every Resize mode (nearest, linear, cubic) is separable: an output element is a weighted sum along each resized
axis in turn, with weights that depend only on that axis's input and output lengths. So an axis of length ``n``
resized to ``m`` is an ``(m, n)`` matrix, built the first time a shape is seen, and the gradient applies the
transposed matrices (ORT has a ``ResizeGrad`` for CUDA only). The weights follow the ONNX specification: the
output coordinate maps back through ``coordinate_transformation_mode``, neighbours beyond the edge repeat the
edge value, and ``exclude_outside`` drops them and renormalises.

``ResizeGrad(dY, X_shape, roi, scales, sizes) -> dX``: the forward's inputs with ``X`` replaced by its shape, the
forward's attributes (``edge_lbp.core.ops.RESIZE_GRAD``).
"""
import math

import numpy as np

from edge_lbp.core import ops
from edge_lbp.runtime.kernels.common import node_error
from edge_lbp.runtime.registry import register

_COORDINATES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric")
_NEAREST = {"round_prefer_floor": lambda x: math.ceil(x - 0.5), "round_prefer_ceil": lambda x: math.floor(x + 0.5),
            "floor": math.floor, "ceil": math.ceil}


def _cubic(t, a):
    """Weights of the neighbours at offsets -1, 0, 1, 2 of a point ``t`` in [0, 1) past offset 0 (Keys' kernel)."""
    def near(d):  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return (-1, far(t + 1)), (0, near(t)), (1, near(1 - t)), (2, far(2 - t))


def _source(x, n, m, scale, mode):
    """The input coordinate of output coordinate ``x`` (ONNX's coordinate transformations), in float32 as ORT
    computes it: 3 / 0.6 is 5 there, and a nearest or floor on it picks the neighbour ORT picks."""
    x, n, m, scale = (np.float32(v) for v in (x, n, m, scale))
    if mode == "align_corners":
        return 0.0 if m == 1 else float(x * (n - 1) / (m - 1))
    if mode == "asymmetric":
        return float(x / scale)
    if mode == "pytorch_half_pixel" and m == 1:
        return 0.0
    return float((x + np.float32(0.5)) / scale - np.float32(0.5))


class _Plan:
    """A node's attributes, checked once; ``matrix(n, m, scale)`` is one axis's weights."""

    def __init__(self, attrs, node):
        self.mode = attrs.get("mode", "nearest")
        self.coordinates = attrs.get("coordinate_transformation_mode", "half_pixel")
        self.nearest = attrs.get("nearest_mode", "round_prefer_floor")
        self.a = float(attrs.get("cubic_coeff_a", -0.75))
        self.exclude = bool(attrs.get("exclude_outside", 0))
        self.axes = attrs.get("axes")
        for name, value, allowed in (("mode", self.mode, ("nearest", "linear", "cubic")),
                                     ("coordinate_transformation_mode", self.coordinates, _COORDINATES),
                                     ("nearest_mode", self.nearest, tuple(_NEAREST))):
            if value not in allowed:
                raise node_error(node, f"{name}={value!r} is not supported (one of {', '.join(allowed)})")
        if attrs.get("antialias", 0) or attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise node_error(node, "antialias and keep_aspect_ratio_policy other than stretch are not supported")
        self.node, self._matrices = node, {}

    def _weights(self, x):
        """``[(input index, weight)]`` of one output coordinate's source ``x``."""
        if self.mode == "nearest":
            return [(_NEAREST[self.nearest](x), 1.0)]
        base = math.floor(x)
        t = x - base
        pairs = ((0, 1.0 - t), (1, t)) if self.mode == "linear" else _cubic(t, self.a)
        return [(base + k, w) for k, w in pairs]

    def matrix(self, n, m, scale):
        key = (n, m, scale)
        if key not in self._matrices:
            weights = np.zeros((m, n))
            for i in range(m):
                pairs = self._weights(_source(i, n, m, scale, self.coordinates))
                if self.exclude and self.mode != "nearest":
                    pairs = [(j, w) for j, w in pairs if 0 <= j < n]
                    total = sum(w for _, w in pairs)
                    pairs = [(j, w / total) for j, w in pairs]
                for j, w in pairs:
                    weights[i, min(max(j, 0), n - 1)] += w
            self._matrices[key] = weights.astype(np.float32)
        return self._matrices[key]

    def axis_matrices(self, shape, scales, sizes):
        """``[(axis, (out, in) matrix)]`` of the axes whose length changes or whose scale is not 1."""
        rank = len(shape)
        axes = [int(a) % rank for a in self.axes] if self.axes else list(range(rank))
        if sizes is not None and sizes.size:
            lengths = [int(s) for s in sizes]
            factors = [m / shape[a] for a, m in zip(axes, lengths)]
        elif scales is not None and scales.size:
            factors = [float(s) for s in scales]
            lengths = [math.floor(shape[a] * f) for a, f in zip(axes, factors)]
        else:
            raise node_error(self.node, "neither scales nor sizes is given")
        if len(lengths) != len(axes):
            raise node_error(self.node, f"{len(lengths)} scales or sizes for {len(axes)} axes")
        return [(a, self.matrix(shape[a], m, f)) for a, m, f in zip(axes, lengths, factors)
                if m != shape[a] or f != 1.0]


def _along(matrix, x, axis):
    return np.moveaxis(np.tensordot(matrix, x, axes=([1], [axis])), 0, axis)


@register("Resize")
def resize(attrs, node):
    plan = _Plan(attrs, node)

    def run(x, roi=None, scales=None, sizes=None):
        y = x
        for axis, matrix in plan.axis_matrices(x.shape, scales, sizes):
            y = _along(matrix, y, axis)
        return (np.ascontiguousarray(y, dtype=x.dtype),)

    return run


@register(ops.RESIZE_GRAD, ops.DOMAIN)
def resize_grad(attrs, node):
    plan = _Plan(attrs, node)

    def run(dy, shape, roi=None, scales=None, sizes=None):
        dx = dy
        for axis, matrix in plan.axis_matrices(tuple(int(d) for d in shape), scales, sizes):
            dx = _along(matrix.T, dx, axis)
        return (np.ascontiguousarray(dx, dtype=dy.dtype),)

    return run
