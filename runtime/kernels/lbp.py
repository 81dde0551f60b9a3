"""The edge_lbp ops on the fused WHT kernels (their ONNX function bodies are never run here).

An ``energy:r`` layer's projection and gradient nodes share the layer's entry in the graph's adaptive bases
(keyed by the stash tensor between them): both read its current selection, and the gradient node lets it
measure the output gradient after use (``edge_lbp.core.energy``).
"""
import numpy as np

from edge_lbp.core import ops
from edge_lbp.core.bases import is_adaptive
from edge_lbp.runtime.kernels.common import flag, overwrites
from edge_lbp.runtime.registry import register
from edge_lbp.core.wht import lowrank_backward


def _layer(attrs, node, bases, stash):
    """An object whose ``projector`` is the layer's current one (fixed, or its ``energy:r`` state), and the
    gradient padding."""
    try:
        projector, padding = ops.projector_from_attributes(attrs)
    except ValueError as err:
        raise ValueError(f"bad edge_lbp attributes: {err}") from None
    if is_adaptive(projector.selection.name):
        return bases.layer(stash, projector), padding
    return _Fixed(projector), padding


class _Fixed:
    def __init__(self, projector):
        self.projector = projector

    def observe(self, gy, padding):
        pass


def _map_to_tokens(x):
    """(B, C, H, W) -> contiguous (B, H*W, C): the kernels walk tokens with channels innermost."""
    return np.ascontiguousarray(x.reshape(x.shape[0], x.shape[1], -1).transpose(0, 2, 1))


@register(ops.PROJECT, ops.DOMAIN, adaptive=True)
def wht_project(attrs, node, bases):
    layer, _ = _layer(attrs, node, bases, node.output[0])
    return lambda x, _dense=None: (layer.projector.project(x),)


@register(ops.PROJECT_MAP, ops.DOMAIN, adaptive=True)
def wht_project_map(attrs, node, bases):
    layer, _ = _layer(attrs, node, bases, node.output[0])
    return lambda x, _dense=None: (layer.projector.project(_map_to_tokens(x)),)


def _wants(node, index):
    return ops.is_used(node.output[index])


def _matmul_backward(attrs, node, bases):
    """``(x_hat, dy, b, gw_out) -> (gx, gw)`` of ``y = a @ b``: b ``(Ci, Co)`` is a linear layer with weight
    ``b^T``, whose gradient ``gw`` is ``(Co, Ci)`` (written into ``gw_out`` unless None)."""
    layer, padding = _layer(attrs, node, bases, node.input[0])
    input_grad = _wants(node, 0)

    def backward(x_hat, dy, b, gw_out):
        gx, gw, _ = lowrank_backward(x_hat, dy, b.T, layer.projector, grad_padding=padding, input_grad=input_grad,
                                     bias_grad=False, weight_grad_out=gw_out)
        layer.observe(dy, padding)
        return gx, gw

    return backward


@register(ops.MATMUL_GRAD, ops.DOMAIN, adaptive=True)
def wht_matmul_grad(attrs, node, bases):
    backward = _matmul_backward(attrs, node, bases)

    def run(x_hat, dy, b, *_dense):
        gx, gw = backward(x_hat, dy, b, None)
        return gx, gw.T  # the gradient in b's orientation

    return run


@register(ops.MATMUL_GRAD_ACCUMULATE, ops.DOMAIN, adaptive=True)
def wht_matmul_grad_accumulate(attrs, node, bases):
    """(x_hat, dy, b, buffer, overwrite?) -> (da, updated bool[1], buffer?): ``WHTMatMulGrad`` whose weight
    gradient, in the weight's orientation ``(Co, Ci)``, goes into the accumulation buffer: written there when the
    flag says overwrite, else added (``runtime.passes.accumulate_in_place``)."""
    backward = _matmul_backward(attrs, node, bases)
    n_out = len(node.output)

    def run(x_hat, dy, b, buffer, overwrite=None):
        reset = overwrites(overwrite)
        gx, gw = backward(x_hat, dy, b, buffer if reset else None)
        if not reset:
            buffer += gw
        return (gx, flag(True), buffer)[:n_out]

    return run


@register(ops.CONV_GRAD, ops.DOMAIN, adaptive=True)
def wht_conv_grad(attrs, node, bases):
    layer, padding = _layer(attrs, node, bases, node.input[0])
    input_grad = _wants(node, 0)

    def run(x_hat, dy, w, *_dense):
        batch, co, height, width = dy.shape
        tokens = _map_to_tokens(dy)
        gx, gw, gb = lowrank_backward(x_hat, tokens, w.reshape(co, -1), layer.projector, grad_padding=padding,
                                      input_grad=input_grad)
        layer.observe(tokens, padding)
        dx = None if gx is None else np.ascontiguousarray(gx.transpose(0, 2, 1)).reshape(batch, -1, height, width)
        return dx, gw.reshape(w.shape), gb

    return run
