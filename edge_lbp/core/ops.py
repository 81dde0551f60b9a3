"""The ONNX contract between the exporter and the device engine: domains, the IR version artifacts keep to, and
the ``edge_lbp`` ops (names, attributes, unread-output naming, the dense operators their function bodies use).

The exporter writes these nodes and the device engine reads them, so this contract lives in the shared core.

* ``WHTProject(x, projection) -> x_hat``: the forward stash of a linear layer's input ``x: (B, N, C)``;
  ``x_hat`` is ``(B, E + r*P, C)``. ``WHTProjectMap`` does the same for a 1x1 convolution's ``(B, C, H, W)``.
* ``WHTMatMulGrad(x_hat, dy, b, grad_projection, reconstruction) -> (da, db)``: the backward of
  ``y = MatMul(a, b)`` with ``a: (B, N, Ci)`` and ``b: (Ci, Co)`` (the orientation ONNX ``MatMul`` uses).
* ``WHTConvGrad(x_hat, dy, w, grad_projection, reconstruction) -> (dx, dw, db)``: the backward of a 1x1
  ``Conv`` with ``w: (Co, Ci, 1, 1)`` on ``(B, C, H, W)``; ``db`` is the bias gradient.
* ``ResizeGrad(dy, x_shape, roi, scales, sizes) -> dx``: the gradient of ``Resize(x, roi, scales, sizes)`` with the
  forward's attributes (ORT's ``com.microsoft::ResizeGrad`` has a CUDA kernel only); the gradient builder emits it.

Geometry and selection are node attributes. The matrix inputs (``projection``, ``grad_projection``,
``reconstruction``) are the same operators as dense ``(rows, N)`` / ``(N, rows)`` constants, so that the
function bodies are plain ``MatMul`` chains any ONNX runtime can execute; the Numba engine ignores them and
runs the fused kernels from the attributes.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from edge_lbp.core.bases import Selection
from edge_lbp.core.wht import Projector

STANDARD_DOMAINS = ("", "ai.onnx")  # both spellings of the default ONNX domain
MICROSOFT = "com.microsoft"  # ONNX Runtime's contrib and training ops
MAX_IR_VERSION = 10  # what onnxruntime(-training) 1.19 reads: artifacts and inference files stay at or below it

DOMAIN = "edge_lbp"
OPSET = 1
PROJECT = "WHTProject"
PROJECT_MAP = "WHTProjectMap"
MATMUL_GRAD = "WHTMatMulGrad"
CONV_GRAD = "WHTConvGrad"
GRAD_OPS = (MATMUL_GRAD, CONV_GRAD)
RESIZE_GRAD = "ResizeGrad"
# Not in artifacts: the device's load-time pass (runtime.passes.accumulate_in_place) fuses the op that computes a
# weight gradient with the InPlaceAccumulatorV2 that adds it to its buffer, so BLAS writes the gradient into the
# buffer: a Gemm, or a WHTMatMulGrad whose weight gradient is transposed into the weight's orientation.
GEMM_ACCUMULATE = "GemmAccumulate"
MATMUL_GRAD_ACCUMULATE = "WHTMatMulGradAccumulate"
# Not in artifacts either (runtime.passes.sum_bias_gradient_with_gelu_grad): ``BiasGeluGradSum(dy, x, bias) -> (dx,
# dbias)`` is com.microsoft's ``BiasGeluGrad_dX(dy, x, bias)`` and ``ReduceSum(dx, axes, keepdims=0)`` of its
# output (attribute ``axes``) in one pass over the gradient.
BIAS_GELU_GRAD_SUM = "BiasGeluGradSum"
# Not in artifacts (runtime.passes.add_into_matmul): ``MatMulAdd(a, b, bias, residual?) -> y`` is
# ``Add(Add(MatMul(a, b), bias), residual)``, the adds done in place on the product.
MATMUL_ADD = "MatMulAdd"
# Not in artifacts (runtime.attention_pass): ``Attention(q, kt, v) -> (out, row_max, row_sum)`` is
# ``MatMul(Softmax(scale * MatMul(q, kt)), v)`` with the softmax rows' max and sum of exponentials, attribute
# ``scale``; ``AttentionGrad(dout, q, kt, v, row_max, row_sum) -> (dq, dkt, dv)`` its gradient, the
# probabilities recomputed from the row statistics.
ATTENTION = "Attention"
ATTENTION_GRAD = "AttentionGrad"
# Not in artifacts (runtime.passes.layer_norm_into_matmul_add): ``MatMulAddLayerNorm(a, b, bias, residual?, scale,
# ln_bias?) -> (s, y, mean?, inv_std?)`` is ``s = MatMulAdd(a, b, bias, residual)`` and
# ``LayerNormalization(s, scale, ln_bias)`` (its attributes) in one pass over the rows.
MATMUL_ADD_LAYER_NORM = "MatMulAddLayerNorm"
# Not in artifacts (runtime.norm_passes): ``LayerNormalizationGradAdd(dy, x, scale, mean, inv_std, addend?) -> (dx,
# dscale, dbias, dsum?)`` is com.microsoft's ``LayerNormalizationGrad`` with ``addend`` (the residual stream's
# other gradient) added to its input gradient, and ``dsum`` that total's ``ReduceSum`` over ``axes``.
LAYER_NORM_GRAD_ADD = "LayerNormalizationGradAdd"
# Not in artifacts (runtime.passes.views_into_attention): ``TransposeView`` and ``SplitView`` are ``Transpose`` and
# ``Split`` (their attributes and inputs) returning numpy views instead of contiguous copies, for outputs that reach
# only the fused attention, which reads strided operands.
TRANSPOSE_VIEW = "TransposeView"
SPLIT_VIEW = "SplitView"
# ORT leaves an unread gradient output nameless; an ONNX function call needs every output named, so the rewrite
# names it with this marker and the engine skips computing it.
UNUSED_OUTPUT = "/wht_unused_"


def unused_output(node_name: str, index: int) -> str:
    return f"{node_name}{UNUSED_OUTPUT}{index}"


def is_used(output_name: str) -> bool:
    return UNUSED_OUTPUT not in output_name


def node_attributes(projector: Projector, grad_padding: str = "reflect") -> Dict[str, object]:
    g = projector.geometry
    return dict(
        grid=[g.height, g.width],
        extra_tokens=g.extra,
        block=g.block,
        pairs=[i for pair in projector.selection.pairs for i in pair],
        selection=projector.selection.name,
        grad_padding=grad_padding,
    )


def projector_from_attributes(attributes: Dict[str, object]) -> Tuple[Projector, str]:
    """Inverse of :func:`node_attributes`: ``(projector, grad_padding)``. Raises ``ValueError`` on bad values."""
    try:
        grid, flat = list(attributes["grid"]), list(attributes["pairs"])
        extra, block = int(attributes["extra_tokens"]), int(attributes["block"])
    except KeyError as missing:
        raise ValueError(f"edge_lbp node lacks attribute {missing}") from None
    if len(flat) % 2:
        raise ValueError(f"edge_lbp attribute 'pairs' has odd length {len(flat)}")
    name, padding = (_text(attributes.get(key, default)) for key, default in
                     (("selection", "pairs"), ("grad_padding", "reflect")))
    selection = Selection(tuple((int(u), int(v)) for u, v in zip(flat[0::2], flat[1::2])), name)
    return Projector.of(tuple(grid), extra, block, selection), padding


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def dense_operators(projector: Projector, grad_padding: str = "reflect") -> Dict[str, np.ndarray]:
    """The projection, gradient projection and reconstruction as dense float32 matrices.

    Built by running the kernels on the identity, so the function bodies compute exactly what the kernels do.
    """
    n = projector.geometry.tokens
    k = projector.geometry.block
    eye_tokens = np.eye(n, dtype=np.float32)[None]  # token t carries a one in channel t
    projection = projector.project(eye_tokens)[0]
    grad_projection = projector.project(eye_tokens, scale=1.0 / (k * k), padding=grad_padding)[0]
    eye_rows = np.eye(projector.rows, dtype=np.float32)[None]
    reconstruction = projector.reconstruct(eye_rows)[0]
    return dict(projection=projection, grad_projection=grad_projection, reconstruction=reconstruction)
