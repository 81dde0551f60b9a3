"""Fused multi-head attention, forward and backward (``runtime.attention_pass`` puts them in the graph).

``Attention(q, kt, v) -> (out, row_max, row_sum)``: ``softmax(scale * q @ kt) @ v`` per (image, head) with ``q:
(..., N, d)``, ``kt: (..., d, M)``, ``v: (..., M, d)``, and the softmax rows' max and sum (of the exponentials),
which is all the backward keeps: ``AttentionGrad(dout, q, kt, v, row_max, row_sum) -> (dq, dkt, dv)`` recomputes
the probabilities from them (exact up to rounding) instead of reading a stashed ``(..., N, M)`` tensor (DeiT-S/16
at batch 32: 30 MB a block). One parallel loop over the (image, head) tiles; the inputs may be strided views (the
heads of the qkv projection's output, read in place), each tile is copied into small contiguous scratch arrays.

``out`` is written image-major, ``(B, N, heads, d)`` in memory, and returned as the ``(B, heads, N, d)`` view the
graph declares: the head transpose that follows it then finds it contiguous and copies nothing. ``dkt`` likewise
is the ``(..., d, M)`` view of a contiguous ``(..., M, d)`` array, which the transpose after it finds contiguous.

The per-tile products are register-blocked Numba loops (``_product``), not ``np.dot`` on each tile: measured with
``tests/benchmarks/bench_attention.py`` (forward and backward of one block, AMD EPYC Zen 3, 2 cores, the machine
loaded by other jobs, load average 6-12), ÷ the unfused ops: at 1 thread, DeiT-S/16 b32 0.86 (``np.dot`` per tile
0.77), DeiT-Ti/16 b8 1.50 (1.28); at 2 threads (an earlier 4 x 4 blocking), DeiT-S/16 b32 0.09 (``np.dot`` per
tile 0.94) and DeiT-Ti/16 b8 0.33 (1.73): on a loaded machine the BLAS thread pools (numpy's for the unfused ops,
SciPy's inside Numba's threads) wait for time slices where Numba's loop does not (the engine's thread tuner then
falls back to 1 thread, where per-tile BLAS is 10-15 % faster than these loops). ``np.dot`` in ``njit`` would also make SciPy a core
requirement (Numba takes BLAS from ``scipy.linalg.cython_blas``). On one tile (196 x 64 x 196, one thread) the
blocks run at 25 GFLOP/s where OpenBLAS reaches 59; with a reduction over 196 (the ``P @ v`` shapes), 63 against 76.
"""
import numpy as np
from numba import njit, prange

from edge_lbp.core import ops
from edge_lbp.runtime.kernels.activation import exp32, max32
from edge_lbp.runtime.kernels.common import ONE, ZERO
from edge_lbp.runtime.registry import register


@njit(inline="always", fastmath=True)
def _block(a, b, out, i, j, scale):
    """``out[i:i+6, j:j+2] = scale * a[i:i+6] @ b[j:j+2].T``: 12 sums that LLVM keeps in vector registers along
    the rows of ``a`` and ``b`` (an unsigned trip count: with Numba's signed one LLVM does not vectorise).
    6 x 2 measured fastest of 1x4, 2x4, 4x2, 3x4, 4x4, 2x8 and 6x2 on 196-token tiles (one thread, AMD EPYC)."""
    length = np.uint64(a.shape[1])
    a0, a1, a2, a3, a4, a5 = a[i], a[i + 1], a[i + 2], a[i + 3], a[i + 4], a[i + 5]
    b0, b1 = b[j], b[j + 1]
    s00 = s01 = s10 = s11 = s20 = s21 = s30 = s31 = s40 = s41 = s50 = s51 = ZERO
    for c in range(length):
        y0, y1 = b0[c], b1[c]
        s00 += a0[c] * y0
        s01 += a0[c] * y1
        s10 += a1[c] * y0
        s11 += a1[c] * y1
        s20 += a2[c] * y0
        s21 += a2[c] * y1
        s30 += a3[c] * y0
        s31 += a3[c] * y1
        s40 += a4[c] * y0
        s41 += a4[c] * y1
        s50 += a5[c] * y0
        s51 += a5[c] * y1
    for r, (t0, t1) in enumerate(((s00, s01), (s10, s11), (s20, s21), (s30, s31), (s40, s41), (s50, s51))):
        out[i + r, j] = t0 * scale
        out[i + r, j + 1] = t1 * scale


@njit(inline="always", fastmath=True)
def _product(a, b, out, scale):
    """``out = scale * a @ b.T`` with ``a: (R, K)`` and ``b: (C, K)`` C-contiguous (``out`` any layout), in 6 x 2
    blocks, the edges one sum at a time."""
    rows, length = a.shape
    cols = b.shape[0]
    rows6, cols2 = rows - rows % 6, cols - cols % 2
    for i in range(0, rows6, 6):
        for j in range(0, cols2, 2):
            _block(a, b, out, i, j, scale)
    for i in range(rows):
        for j in range(cols2 if i < rows6 else 0, cols):
            total = ZERO
            for c in range(np.uint64(length)):
                total += a[i, c] * b[j, c]
            out[i, j] = total * scale


@njit(inline="always", fastmath=True)
def _probabilities(s, row_max, row_sum, stats):
    """Softmax of each row of ``s`` in place; with ``stats`` it records each row's max and sum, else uses them."""
    n, m = s.shape
    for i in range(n):
        row = s[i]
        if stats:
            peak = row[0]
            for j in range(1, m):
                peak = max32(peak, row[j])
            total = ZERO
            for j in range(m):
                e = exp32(row[j] - peak)
                row[j] = e
                total += e
            row_max[i] = peak
            row_sum[i] = total
        else:
            peak, total = row_max[i], row_sum[i]
            for j in range(m):
                row[j] = exp32(row[j] - peak)
        inv = ONE / total
        for j in range(m):
            row[j] *= inv


@njit(parallel=True, fastmath=True, cache=True)
def _forward(q, kt, v, scale):
    b, h, n, d = q.shape
    m = kt.shape[3]
    out = np.empty((b, n, h, d), np.float32)
    row_max = np.empty((b, h, n), np.float32)
    row_sum = np.empty((b, h, n), np.float32)
    for tile in prange(b * h):
        i, k = tile // h, tile % h
        qs, ks, vts = np.ascontiguousarray(q[i, k]), np.ascontiguousarray(kt[i, k].T), np.ascontiguousarray(v[i, k].T)
        s = np.empty((n, m), np.float32)
        _product(qs, ks, s, scale)
        _probabilities(s, row_max[i, k], row_sum[i, k], True)
        _product(s, vts, out[i, :, k, :], ONE)
    return out, row_max, row_sum


@njit(parallel=True, fastmath=True, cache=True)
def _backward(dout, q, kt, v, row_max, row_sum, scale):
    b, h, n, d = q.shape
    m = kt.shape[3]
    dq = np.empty((b, h, n, d), np.float32)
    dk = np.empty((b, h, m, d), np.float32)
    dv = np.empty((b, h, m, d), np.float32)
    for tile in prange(b * h):
        i, k = tile // h, tile % h
        qs, ks, vs = np.ascontiguousarray(q[i, k]), np.ascontiguousarray(kt[i, k].T), np.ascontiguousarray(v[i, k])
        dos = np.ascontiguousarray(dout[i, k])
        p = np.empty((n, m), np.float32)
        _product(qs, ks, p, scale)
        _probabilities(p, row_max[i, k], row_sum[i, k], False)
        _product(np.ascontiguousarray(p.T), np.ascontiguousarray(dos.T), dv[i, k], ONE)
        ds = np.empty((n, m), np.float32)
        _product(dos, vs, ds, ONE)  # dP
        for r in range(n):  # dS = P * (dP - rowsum(P * dP)), times the scale of the product
            dot = ZERO
            for c in range(m):
                dot += p[r, c] * ds[r, c]
            for c in range(m):
                ds[r, c] = p[r, c] * (ds[r, c] - dot) * scale
        _product(ds, np.ascontiguousarray(ks.T), dq[i, k], ONE)
        _product(np.ascontiguousarray(ds.T), np.ascontiguousarray(qs.T), dk[i, k], ONE)
    return dq, dk, dv


def _heads(x):
    """A 3-D ``(batch, N, d)`` operand as 4-D with one head (a view)."""
    return x[:, None] if x.ndim == 3 else x


def attention(q, kt, v, scale):
    """The forward on numpy arrays of rank 3 or 4: ``(out, row_max, row_sum)``, ``out`` of ``q``'s rank."""
    out, row_max, row_sum = _forward(_heads(q), _heads(kt), _heads(v), np.float32(scale))
    out = out.transpose(0, 2, 1, 3)
    return (out[:, 0] if q.ndim == 3 else out), row_max, row_sum


def attention_grad(dout, q, kt, v, row_max, row_sum, scale):
    """The backward: ``(dq, dkt, dv)`` of the operands' ranks."""
    dq, dk, dv = _backward(_heads(dout), _heads(q), _heads(kt), _heads(v), row_max, row_sum, np.float32(scale))
    dkt = dk.swapaxes(-1, -2)
    if q.ndim == 3:
        return dq[:, 0], dkt[:, 0], dv[:, 0]
    return dq, dkt, dv


@register(ops.ATTENTION, ops.DOMAIN)
def attention_op(attrs, node):
    scale = attrs.get("scale", 1.0)
    return lambda q, kt, v: attention(q, kt, v, scale)


@register(ops.ATTENTION_GRAD, ops.DOMAIN)
def attention_grad_op(attrs, node):
    scale = attrs.get("scale", 1.0)
    return lambda dout, q, kt, v, row_max, row_sum: attention_grad(dout, q, kt, v, row_max, row_sum, scale)
