"""The edge_lbp ops on the fused WHT kernels (their ONNX function bodies are never run here)."""
import numpy as np

from edge_lbp import ops
from edge_lbp.runtime.registry import register
from edge_lbp.wht import lowrank_backward


def _projector(attrs, node):
    try:
        return ops.projector_from_attributes(attrs)
    except ValueError as err:
        raise ValueError(f"bad edge_lbp attributes: {err}") from None


def _map_to_tokens(x):
    """(B, C, H, W) -> contiguous (B, H*W, C): the kernels walk tokens with channels innermost."""
    return np.ascontiguousarray(x.reshape(x.shape[0], x.shape[1], -1).transpose(0, 2, 1))


@register(ops.PROJECT, ops.DOMAIN)
def wht_project(attrs, node):
    projector, _ = _projector(attrs, node)
    return lambda x, _dense=None: (projector.project(x),)


@register(ops.PROJECT_MAP, ops.DOMAIN)
def wht_project_map(attrs, node):
    projector, _ = _projector(attrs, node)
    return lambda x, _dense=None: (projector.project(_map_to_tokens(x)),)


def _wants(node, index):
    return ops.is_used(node.output[index])


@register(ops.MATMUL_GRAD, ops.DOMAIN)
def wht_matmul_grad(attrs, node):
    projector, padding = _projector(attrs, node)
    input_grad = _wants(node, 0)

    def run(x_hat, dy, b, *_dense):
        # y = a @ b with b (Ci, Co) is a linear layer with weight b^T; its gradient in b's orientation is gw^T.
        gx, gw, _ = lowrank_backward(x_hat, dy, b.T, projector, grad_padding=padding, input_grad=input_grad,
                                     bias_grad=False)
        return gx, gw.T

    return run


@register(ops.CONV_GRAD, ops.DOMAIN)
def wht_conv_grad(attrs, node):
    projector, padding = _projector(attrs, node)
    input_grad = _wants(node, 0)

    def run(x_hat, dy, w, *_dense):
        batch, co, height, width = dy.shape
        gx, gw, gb = lowrank_backward(x_hat, _map_to_tokens(dy), w.reshape(co, -1), projector,
                                      grad_padding=padding, input_grad=input_grad)
        dx = None if gx is None else np.ascontiguousarray(gx.transpose(0, 2, 1)).reshape(batch, -1, height, width)
        return dx, gw.reshape(w.shape), gb

    return run
