"""Softmax, ReLU, Erf and GELU kernels (forward and backward), and the gradient of Tanh.

Row-wise and element-wise work runs in fused Numba kernels, parallel over rows. GELU is the exact erf form that
ORT's Gelu, BiasGelu, GeluGrad and BiasGeluGrad_dX compute; the bias of the Bias* ops runs along the last axis.

``exp`` and ``erf`` are evaluated here in float32 arithmetic that LLVM vectorises: Numba calls libm one element
at a time for ``np.exp`` / ``math.erf`` (there is no SVML on the devices), which made Softmax ~6x slower than
ORT on ViT-B shapes (one thread). Measured against float64: exp within 1.2e-7 relative, erf within 2.4 ulp
(1.4e-7 absolute).
"""
import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from edge_lbp.core import ops
from edge_lbp.runtime.kernels.common import MS, NO_BIAS, ONE, ZERO, as_rows
from edge_lbp.runtime.registry import register

_SQRT1_2 = np.float32(1 / math.sqrt(2))
_INV_SQRT_2PI = np.float32(1 / math.sqrt(2 * math.pi))
_HALF = np.float32(0.5)
_SUM_ROWS = 64


def along_axis(row_kernel, axis):
    """Apply a kernel over rows of the last axis along ``axis`` instead; every argument has the output's shape."""

    def run(*arrays):
        ndim = arrays[0].ndim
        if axis % ndim == ndim - 1:
            return row_kernel(*[as_rows(a) for a in arrays]).reshape(arrays[0].shape)
        # A softmax over a middle axis is rare in these graphs: pay two transposing copies rather than a
        # strided kernel.
        moved = [np.moveaxis(a, axis, -1) for a in arrays]
        out = row_kernel(*[as_rows(m) for m in moved]).reshape(moved[0].shape)
        return np.ascontiguousarray(np.moveaxis(out, -1, axis))

    return run


@intrinsic
def _float_from_bits(typingctx, bits):
    """Reinterpret an int32 as the float32 with the same bits (a no-op instruction, vectorisable)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


def _llvm_binary(name):
    """A float32 (a, b) -> float32 LLVM intrinsic as a Numba function. The builtin min() / max() branch on NaN and
    do not vectorise: a softmax row's max ran ~4x slower with them."""

    @intrinsic
    def call(typingctx, a, b):
        def codegen(context, builder, signature, args):
            f32 = ir.FloatType()
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32, f32]), name)
            return builder.call(fn, args, fastmath=("fast",))

        return types.float32(types.float32, types.float32), codegen

    return call


max32 = _llvm_binary("llvm.maxnum.f32")
_min = _llvm_binary("llvm.minnum.f32")


@njit(inline="always", fastmath=True)
def exp32(x):
    """exp of a float32: 2^n * e^r with |r| <= ln2 / 2, e^r by Cephes' expf polynomial, 2^n built from its bits."""
    x = _min(max32(x, np.float32(-87.3)), np.float32(88.0))
    n = np.floor(x * np.float32(1.44269504) + np.float32(0.5))
    r = x - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    return (p * r * r + r + ONE) * _float_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))


@njit(inline="always", fastmath=True)
def _erf_gauss(x):
    """``(erf(x), exp(-x^2))`` of a float32. Below |x| = 1, ``x·P(x²)``; from 1 to 4, ``1 - exp(-x²)·R(t)`` with
    ``t = 1 / (1 + x/2) - 1/2``; above 4, ±1 (erfc(4) is below half an ulp of 1). P (degree 6) and R (degree 8)
    are least-squares fits of erf(x)/x and erfc(x)·exp(x²) in float64 (relative residuals 2e-9 and 5e-10), so
    the float32 evaluation's rounding dominates: within 2.4 ulp of ``math.erf`` (tests/test_kernels_math.py).
    The Gaussian is the one the formula needs anyway, and GELU's slope needs it too: returning it saves the
    backward a second exp per element."""
    a = abs(x)
    z = a * a
    small = a * (np.float32(1.1283792) + z * (np.float32(-0.37612629) + z * (np.float32(0.11283626)
                 + z * (np.float32(-0.026855398) + z * (np.float32(5.1912148e-3) + z * (np.float32(-8.0348138e-4)
                 + z * np.float32(7.9333819e-5)))))))
    t = ONE / (ONE + _HALF * a) - _HALF
    r = np.float32(0.25539568) + t * (np.float32(0.85437167) + t * (np.float32(0.9666328) + t * (
        np.float32(0.63182795) + t * (np.float32(0.05972866) + t * (np.float32(-0.22382088) + t * (
            np.float32(-0.05438218) + t * (np.float32(0.12059158) + t * np.float32(0.01530283))))))))
    gauss = exp32(-z)
    return math.copysign(small if a < ONE else (ONE - r * gauss if a < np.float32(4) else ONE), x), gauss


@njit(inline="always", fastmath=True)
def _erf(x):
    return _erf_gauss(x)[0]


@njit(parallel=True, fastmath=True, cache=True)
def softmax_rows(x):
    rows, m = x.shape
    y = np.empty_like(x)
    for r in prange(rows):
        peak = x[r, 0]
        for c in range(1, m):
            peak = max32(peak, x[r, c])
        total = ZERO
        for c in range(m):
            e = exp32(x[r, c] - peak)
            y[r, c] = e
            total += e
        inv = ONE / total
        for c in range(m):
            y[r, c] *= inv
    return y


@njit(parallel=True, fastmath=True, cache=True)
def _softmax_grad_rows(dy, y):
    rows, m = y.shape
    dx = np.empty_like(y)
    for r in prange(rows):
        dot = ZERO
        for c in range(m):
            dot += dy[r, c] * y[r, c]
        for c in range(m):
            dx[r, c] = y[r, c] * (dy[r, c] - dot)
    return dx


@njit(inline="always", fastmath=True)
def _gelu(v):
    return _HALF * v * (ONE + _erf(v * _SQRT1_2))


@njit(inline="always", fastmath=True)
def _gelu_slope(v):
    erf, gauss = _erf_gauss(v * _SQRT1_2)  # gauss = exp(-v^2 / 2)
    return _HALF * (ONE + erf) + v * _INV_SQRT_2PI * gauss


@njit(parallel=True, fastmath=True, cache=True)
def _gelu_rows(x, bias, use_bias):
    rows, m = x.shape
    y = np.empty_like(x)
    for r in prange(rows):
        if use_bias:
            for c in range(m):
                y[r, c] = _gelu(x[r, c] + bias[c])
        else:
            for c in range(m):
                y[r, c] = _gelu(x[r, c])
    return y


@njit(parallel=True, fastmath=True, cache=True)
def _gelu_grad_rows(dy, x, bias, use_bias, column_sums):
    """GELU's input gradient, and with ``column_sums`` also its sum over the rows (the bias gradient of the layer
    before, in the same pass instead of a second read of the gradient). The rows are summed in fixed blocks of
    ``_SUM_ROWS``, then the blocks in order: the sums do not depend on the thread count."""
    rows, m = x.shape
    dx = np.empty_like(x)
    blocks = (rows + _SUM_ROWS - 1) // _SUM_ROWS
    partial = np.zeros((blocks if column_sums else 0, m), np.float32)
    for k in prange(blocks):
        for r in range(k * _SUM_ROWS, min(rows, (k + 1) * _SUM_ROWS)):
            if use_bias:
                for c in range(m):
                    dx[r, c] = dy[r, c] * _gelu_slope(x[r, c] + bias[c])
            else:
                for c in range(m):
                    dx[r, c] = dy[r, c] * _gelu_slope(x[r, c])
            if column_sums:
                for c in range(m):
                    partial[k, c] += dx[r, c]
    total = np.zeros(m if column_sums else 0, np.float32)
    for k in range(partial.shape[0]):
        for c in range(m):
            total[c] += partial[k, c]
    return dx, total


@njit(parallel=True, fastmath=True, cache=True)
def _erf_rows(x):
    rows, m = x.shape
    y = np.empty_like(x)
    for r in prange(rows):
        for c in range(m):
            y[r, c] = _erf(x[r, c])
    return y


def _softmax_axis(attrs):
    return attrs.get("axis", -1)  # opset 13+: one axis, not the flatten-to-2-D of opset 1-12


@register("Softmax")
def softmax(attrs, node):
    run = along_axis(softmax_rows, _softmax_axis(attrs))
    return lambda x: (run(x),)


@register("SoftmaxGrad_13", MS)
def softmax_grad(attrs, node):
    run = along_axis(_softmax_grad_rows, _softmax_axis(attrs))
    return lambda dy, y: (run(dy, y),)


@register("Relu")
def relu(attrs, node):
    return lambda x: (np.maximum(x, ZERO),)


@register("ReluGrad", MS)
def relu_grad(attrs, node):
    # The second input is Relu's input or output (the gradient builder passes the output): same sign either way.
    return lambda dy, x: (np.where(x > ZERO, dy, ZERO),)


@register("TanhGrad", MS)
def tanh_grad(attrs, node):
    # ORT's input order: (dY, Y), the forward's output.
    return lambda dy, y: (np.asarray(dy * (ONE - y * y)),)


@register("Erf")
def erf(attrs, node):
    return lambda x: (_erf_rows(as_rows(x)).reshape(np.shape(x)),)


@register("Gelu", MS)
def gelu(attrs, node):
    return lambda x: (_gelu_rows(as_rows(x), NO_BIAS, False).reshape(x.shape),)


@register("BiasGelu", MS)
def bias_gelu(attrs, node):
    return lambda x, b: (_gelu_rows(as_rows(x), b, True).reshape(x.shape),)


@register("GeluGrad", MS)
def gelu_grad(attrs, node):
    return lambda dy, x: (_gelu_grad_rows(as_rows(dy), as_rows(x), NO_BIAS, False, False)[0].reshape(x.shape),)


@register("BiasGeluGrad_dX", MS)
def bias_gelu_grad(attrs, node):
    return lambda dy, x, b: (_gelu_grad_rows(as_rows(dy), as_rows(x), b, True, False)[0].reshape(x.shape),)


@register(ops.BIAS_GELU_GRAD_SUM, ops.DOMAIN)
def bias_gelu_grad_sum(attrs, node):
    """(dy, x, bias) -> (dx, dbias): BiasGeluGrad_dX and the ReduceSum of its output over ``axes``
    (``runtime.passes.sum_bias_gradient_with_gelu_grad``); the sum comes from the same pass when ``axes`` are
    every axis but the last, as in a linear layer's bias gradient."""
    axes = tuple(attrs["axes"])

    def run(dy, x, b):
        if sorted(a % x.ndim for a in axes) == list(range(x.ndim - 1)):
            dx, db = _gelu_grad_rows(as_rows(dy), as_rows(x), b, True, True)
            return dx.reshape(x.shape), db
        dx = _gelu_grad_rows(as_rows(dy), as_rows(x), b, True, False)[0].reshape(x.shape)
        return dx, dx.sum(axis=axes)

    return run
