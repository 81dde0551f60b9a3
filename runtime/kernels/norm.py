"""LayerNormalization and BatchNormalization, forward and backward, as fused Numba kernels.

LayerNorm works on rows (the dimensions from ``axis`` on, flattened), parallel over rows; the per-row statistics
use two passes in float32 (ORT makes one pass, E[x^2] - mean^2, which is the less accurate of the two). The
parameter gradients of LayerNormalizationGrad sum over rows: each thread's block of rows accumulates in float64,
then the blocks are added; the blocks do not depend on the thread count (``GRAD_BLOCKS``), so neither do the
sums, and the engine may change its thread count between steps (``runtime.threads``). BatchNorm works on ``(N, C, S)`` and is parallel over channels, accumulating in
float64.
"""
import numpy as np
from numba import njit, prange

from edge_lbp.core import ops
from edge_lbp.runtime.kernels.common import MS, NO_BIAS, ONE, ZERO, node_error
from edge_lbp.runtime.kernels.linear import add_row, add_to_product, matmul, row_adds
from edge_lbp.runtime.registry import register

GRAD_BLOCKS = 16  # row blocks of LayerNormalizationGrad's parameter sums: a multiple of common core counts


@njit(inline="always", fastmath=True)
def _normalise_row(x, y, r, scale, bias, use_bias, eps):
    """Row ``r`` of LayerNorm into ``y``; returns the row's mean and inverse standard deviation."""
    m = x.shape[1]
    total = ZERO
    for c in range(m):
        total += x[r, c]
    mu = total / m
    square = ZERO
    for c in range(m):
        d = x[r, c] - mu
        square += d * d
    inv = ONE / np.sqrt(square / m + eps)
    if use_bias:
        for c in range(m):
            y[r, c] = (x[r, c] - mu) * inv * scale[c] + bias[c]
    else:
        for c in range(m):
            y[r, c] = (x[r, c] - mu) * inv * scale[c]
    return mu, inv


@njit(parallel=True, fastmath=True, cache=True)
def _layernorm(x, scale, bias, use_bias, eps):
    rows = x.shape[0]
    y = np.empty_like(x)
    mean = np.empty(rows, np.float32)
    inv_std = np.empty(rows, np.float32)
    for r in prange(rows):
        mean[r], inv_std[r] = _normalise_row(x, y, r, scale, bias, use_bias, eps)
    return y, mean, inv_std


@njit(parallel=True, fastmath=True, cache=True)
def add_layernorm(s, bias, residual, use_residual, scale, ln_bias, use_ln_bias, eps):
    """``s = (s + bias) + residual`` in place (as ``linear.add_row``), then LayerNorm of ``s``, row by row: the
    row is normalised while it is still in cache instead of a second pass over the tensor."""
    rows = s.shape[0]
    y = np.empty_like(s)
    mean = np.empty(rows, np.float32)
    inv_std = np.empty(rows, np.float32)
    for r in prange(rows):
        add_row(s, r, bias, residual, use_residual)
        mean[r], inv_std[r] = _normalise_row(s, y, r, scale, ln_bias, use_ln_bias, eps)
    return y, mean, inv_std


@njit(parallel=True, fastmath=True, cache=True)
def _layernorm_grad(dy, x, scale, mean, inv_std, blocks, addend, use_addend, column_sums):
    """LayerNorm's input gradient (plus ``addend``, the residual stream's other gradient, when ``use_addend``)
    and the parameter gradients; with ``column_sums`` also the column sums of that input gradient (the bias
    gradient of the linear layer whose output this LayerNorm read), from the same pass."""
    rows, m = x.shape
    dx = np.empty_like(x)
    blocks = min(rows, blocks)
    per_block = -(-rows // blocks)
    scale_parts = np.zeros((blocks, m))
    bias_parts = np.zeros((blocks, m))
    dx_parts = np.zeros((blocks if column_sums else 0, m))
    for blk in prange(blocks):
        for r in range(blk * per_block, min(rows, (blk + 1) * per_block)):
            mu = mean[r]
            inv = inv_std[r]
            sum_b = ZERO
            sum_c = ZERO
            for c in range(m):
                xhat = (x[r, c] - mu) * inv
                g = dy[r, c]
                b = g * scale[c] * inv
                sum_b += b
                sum_c += b * xhat
                scale_parts[blk, c] += g * xhat
                bias_parts[blk, c] += g
            mean_b = sum_b / m
            mean_c = sum_c / m
            for c in range(m):
                dx[r, c] = dy[r, c] * scale[c] * inv - mean_b - (x[r, c] - mu) * inv * mean_c
            if use_addend:
                for c in range(m):
                    dx[r, c] += addend[r, c]
            if column_sums:
                for c in range(m):
                    dx_parts[blk, c] += dx[r, c]
    return dx, _sum_blocks(scale_parts), _sum_blocks(bias_parts), _sum_blocks(dx_parts)


@njit(fastmath=True, cache=True)
def _sum_blocks(parts):
    out = np.zeros(parts.shape[1], np.float32)
    for c in range(parts.shape[1]):
        out[c] = parts[:, c].sum()
    return out


def _norm_shape(x, axis):
    """Rows of ``x`` for a normalisation over dimensions ``axis:``, and the shape of the per-row statistics."""
    axis %= x.ndim
    stats_shape = x.shape[:axis] + (1,) * (x.ndim - axis)
    return np.ascontiguousarray(x).reshape(int(np.prod(x.shape[:axis])), -1), stats_shape


def _check_stash(attrs, node):
    if attrs.get("stash_type", 1) != 1:
        raise node_error(node, f"stash_type={attrs['stash_type']} is not supported (float32 statistics only)")


def _normalise(attrs, use_bias):
    """LayerNormalization's ``(x, scale, bias) -> (y, mean, inv_std)``."""
    axis = attrs.get("axis", -1)
    eps = np.float32(attrs.get("epsilon", 1e-5))

    def run(x, scale, bias=None):
        rows, stats_shape = _norm_shape(x, axis)
        y, mean, inv = _layernorm(rows, scale.reshape(-1), bias.reshape(-1) if use_bias else NO_BIAS, use_bias,
                                  eps)
        return y.reshape(x.shape), mean.reshape(stats_shape), inv.reshape(stats_shape)

    return run


@register("LayerNormalization")
def layer_normalization(attrs, node):
    _check_stash(attrs, node)
    run = _normalise(attrs, len(node.input) > 2 and bool(node.input[2]))
    n_out = len(node.output)
    return lambda x, scale, bias=None: run(x, scale, bias)[:n_out]


@register(ops.MATMUL_ADD_LAYER_NORM, ops.DOMAIN)
def matmul_add_layer_norm(attrs, node):
    """(a, b, bias, residual?, scale, ln_bias?) -> (s, y, mean?, inv_std?): ``s = MatMulAdd(a, b, bias,
    residual)`` and ``LayerNormalization(s, scale, ln_bias)`` (``runtime.passes.layer_norm_into_matmul_add``),
    the adds and the normalisation in one pass over the rows when the norm runs over the last axis and the adds
    are a linear layer's; the two kernels one after the other otherwise."""
    _check_stash(attrs, node)
    axis = attrs.get("axis", -1)
    eps = np.float32(attrs.get("epsilon", 1e-5))
    use_ln_bias = len(node.input) > 5 and bool(node.input[5])
    separate = _normalise(attrs, use_ln_bias)
    n_out = len(node.output)

    def run(a, b, bias, residual, scale, ln_bias=None):
        s = matmul(a, b)
        fast = row_adds(s, bias, residual) if axis % s.ndim == s.ndim - 1 else None
        if fast is None:
            s = add_to_product(s, bias, residual)
            return (s, *separate(s, scale, ln_bias))[:n_out]
        y, mean, inv = add_layernorm(*fast, scale.reshape(-1), ln_bias.reshape(-1) if use_ln_bias else NO_BIAS,
                                     use_ln_bias, eps)
        stats_shape = s.shape[:-1] + (1,)
        return (s, y.reshape(s.shape), mean.reshape(stats_shape), inv.reshape(stats_shape))[:n_out]

    return run


_NO_ROWS = np.zeros((0, 0), np.float32)


@register("LayerNormalizationGrad", MS)
def layer_normalization_grad(attrs, node):
    axis = attrs.get("axis", -1)

    def run(dy, x, scale, mean, inv_std):
        rows, _ = _norm_shape(x, axis)
        dx, dscale, dbias, _ = _layernorm_grad(np.ascontiguousarray(dy).reshape(rows.shape), rows,
                                               scale.reshape(-1), mean.reshape(-1), inv_std.reshape(-1),
                                               GRAD_BLOCKS, _NO_ROWS, False, False)
        return dx.reshape(x.shape), dscale.reshape(scale.shape), dbias.reshape(scale.shape)

    return run


@register(ops.LAYER_NORM_GRAD_ADD, ops.DOMAIN)
def layer_normalization_grad_add(attrs, node):
    """(dy, x, scale, mean, inv_std, addend?) -> (dx + addend, dscale, dbias, column sums?): LayerNormalizationGrad,
    the ``Sum`` that adds the residual stream's other gradient to its input gradient, and the ``ReduceSum`` over
    ``axes`` of that total (``runtime.norm_passes``) in one pass; the sums come from the pass when the norm runs
    over the last axis and ``axes`` are all the others (a linear layer's bias gradient), from numpy otherwise."""
    axis = attrs.get("axis", -1)
    axes = tuple(attrs.get("axes", ()))
    with_sums = len(node.output) > 3 and bool(node.output[3])
    n_out = len(node.output)

    def run(dy, x, scale, mean, inv_std, addend=None):
        rows, _ = _norm_shape(x, axis)
        in_pass = with_sums and axis % x.ndim == x.ndim - 1 and sorted(a % x.ndim for a in axes) == list(
            range(x.ndim - 1))
        use_addend = addend is not None and addend.shape == x.shape and addend.dtype == np.float32
        dx, dscale, dbias, sums = _layernorm_grad(
            np.ascontiguousarray(dy).reshape(rows.shape), rows, scale.reshape(-1), mean.reshape(-1),
            inv_std.reshape(-1), GRAD_BLOCKS, np.ascontiguousarray(addend).reshape(rows.shape) if use_addend
            else _NO_ROWS, use_addend, in_pass)
        dx = dx.reshape(x.shape)
        if addend is not None and not use_addend:
            dx = dx + addend
        if with_sums and not in_pass:
            sums = dx.sum(axis=axes)
        return (dx, dscale.reshape(scale.shape), dbias.reshape(scale.shape), sums if with_sums else None)[:n_out]

    return run


@njit(parallel=True, fastmath=True, cache=True)
def _channel_stats(x):
    """Batch mean and biased variance per channel of ``x`` (N, C, S)."""
    n, channels, s = x.shape
    mean = np.empty(channels, np.float32)
    var = np.empty(channels, np.float32)
    for ch in prange(channels):
        total = 0.0
        for i in range(n):
            for j in range(s):
                total += x[i, ch, j]
        mu = total / (n * s)
        square = 0.0
        for i in range(n):
            for j in range(s):
                d = x[i, ch, j] - mu
                square += d * d
        mean[ch] = mu
        var[ch] = square / (n * s)
    return mean, var


@njit(parallel=True, fastmath=True, cache=True)
def _channel_affine(x, mul, add):
    n, channels, s = x.shape
    y = np.empty_like(x)
    for task in prange(n * channels):
        i = task // channels
        ch = task % channels
        for j in range(s):
            y[i, ch, j] = x[i, ch, j] * mul[ch] + add[ch]
    return y


@njit(parallel=True, fastmath=True, cache=True)
def _batchnorm_grad(dy, x, scale, mean, inv_std):
    n, channels, s = x.shape
    dx = np.empty_like(x)
    dscale = np.empty(channels, np.float32)
    dbias = np.empty(channels, np.float32)
    count = n * s
    for ch in prange(channels):
        mu = mean[ch]
        inv = inv_std[ch]
        sum_g = 0.0
        sum_gx = 0.0
        for i in range(n):
            for j in range(s):
                g = dy[i, ch, j]
                sum_g += g
                sum_gx += g * (x[i, ch, j] - mu)
        sum_gx *= inv
        dbias[ch] = sum_g
        dscale[ch] = sum_gx
        k = scale[ch] * inv / count
        for i in range(n):
            for j in range(s):
                dx[i, ch, j] = k * (dy[i, ch, j] * count - sum_g - (x[i, ch, j] - mu) * inv * sum_gx)
    return dx, dscale, dbias


def _channels(x):
    return np.ascontiguousarray(x).reshape(x.shape[0], x.shape[1], -1)


def _batchnorm(attrs, node, training, saved_outputs):
    """BatchNormalization (opset 15, no saved statistics) and BatchNormInternal (with saved_mean, saved_inv_std).

    In training mode the batch statistics normalise, and the running statistics are blended with ``momentum``
    (``momentum * running + (1 - momentum) * batch``, biased variance, as ORT does).
    """
    if attrs.get("spatial", 1) != 1:
        raise node_error(node, "spatial=0 is not supported")
    eps = np.float32(attrs.get("epsilon", 1e-5))
    momentum = np.float32(attrs.get("momentum", 0.9))
    n_out = len(node.output)
    if not training:
        if n_out > 1:
            raise node_error(node, "training_mode=0 with running-statistics outputs is not supported")

        def infer(x, scale, bias, mean, var):
            mul = scale / np.sqrt(var + eps)
            return (_channel_affine(_channels(x), mul, bias - mean * mul).reshape(x.shape),)

        return infer

    def train(x, scale, bias, running_mean, running_var):
        x3 = _channels(x)
        mean, var = _channel_stats(x3)
        inv_std = ONE / np.sqrt(var + eps)
        mul = scale * inv_std
        y = _channel_affine(x3, mul, bias - mean * mul).reshape(x.shape)
        stats = [running_mean * momentum + mean * (ONE - momentum), running_var * momentum + var * (ONE - momentum)]
        if saved_outputs:
            stats += [mean, inv_std]
        return (y, *stats)[:n_out]

    return train


@register("BatchNormalization")
def batch_normalization(attrs, node):
    return _batchnorm(attrs, node, bool(attrs.get("training_mode", 0)), saved_outputs=False)


@register("BatchNormInternal", MS)
def batch_norm_internal(attrs, node):
    return _batchnorm(attrs, node, bool(attrs.get("training_mode", 1)), saved_outputs=True)


@register("BatchNormalizationGrad", MS)
def batch_normalization_grad(attrs, node):
    # Inputs: dY, X, scale, saved_mean, saved_inv_std (BatchNormInternal's outputs 3 and 4), NCHW.
    def run(dy, x, scale, mean, inv_std):
        dx, dscale, dbias = _batchnorm_grad(_channels(dy), _channels(x), scale, mean, inv_std)
        return dx.reshape(x.shape), dscale, dbias

    return run
