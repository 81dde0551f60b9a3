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

The per-tile products are ``panel.product``'s register panels on zero-padded copies of each tile (the copies were
needed anyway: the operands are strided views). Before them, 6 x 2 dot-product blocks in Numba ran one 197-token
tile at 55-61 GFLOP/s where OpenBLAS reaches 102-115 (one thread, Intel Xeon; on AMD EPYC 25 of 59); the panels
run at 111-131. Per-tile BLAS (``np.dot`` inside ``njit``) was the other way the issue named: it would make SciPy a
core requirement (Numba takes BLAS from ``scipy.linalg.cython_blas``), and measured with
``tests/benchmarks/bench_attention.py`` on a loaded AMD EPYC it lost at 2 threads to BLAS's own thread pools
waiting for time slices inside Numba's threads.
"""
import numpy as np
from numba import njit, prange

from edge_lbp.core import ops
from edge_lbp.runtime.kernels.activation import exp32, max32
from edge_lbp.runtime.kernels.common import ONE, ZERO
from edge_lbp.runtime.kernels.panel import LANES, ROWS, padded, product
from edge_lbp.runtime.registry import register


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
        qs, kts = padded(q[i, k], ROWS, 1), padded(kt[i, k], 1, LANES)
        s = np.empty((qs.shape[0], kts.shape[1]), np.float32)
        product(qs, kts, s, scale)
        _probabilities(s[:n, :m], row_max[i, k], row_sum[i, k], True)
        vs = padded(v[i, k], 1, LANES)
        o = np.empty((s.shape[0], vs.shape[1]), np.float32)
        product(s[:, :m], vs, o, ONE)  # the padding rows of s are zeros: q's padding is
        out[i, :, k, :] = o[:n, :d]
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
        qs, kts = padded(q[i, k], ROWS, 1), padded(kt[i, k], 1, LANES)
        p = np.empty((qs.shape[0], kts.shape[1]), np.float32)
        product(qs, kts, p, scale)
        _probabilities(p[:n, :m], row_max[i, k], row_sum[i, k], False)
        dos = padded(dout[i, k], ROWS, LANES)  # dP's left operand and dv's right one
        pt = padded(p[:n, :m].T, ROWS, 1)
        dvs = np.empty((pt.shape[0], dos.shape[1]), np.float32)
        product(pt, dos[:n], dvs, ONE)
        dv[i, k] = dvs[:m, :d]
        vts = padded(v[i, k].T, 1, LANES)
        ds = np.empty((dos.shape[0], vts.shape[1]), np.float32)
        product(dos[:, :d], vts, ds, ONE)  # dP
        for r in range(n):  # dS = P * (dP - rowsum(P * dP)), times the scale of the product
            dot = ZERO
            for c in range(m):
                dot += p[r, c] * ds[r, c]
            for c in range(m):
                ds[r, c] = p[r, c] * (ds[r, c] - dot) * scale
        ks = padded(kt[i, k].T, 1, LANES)
        dqs = np.empty((ds.shape[0], ks.shape[1]), np.float32)
        product(ds[:, :m], ks, dqs, ONE)  # dP's padding rows are zeros: dout's padding is
        dq[i, k] = dqs[:n, :d]
        dst, qp = padded(ds[:n, :m].T, ROWS, 1), padded(q[i, k], 1, LANES)
        dks = np.empty((dst.shape[0], qp.shape[1]), np.float32)
        product(dst, qp, dks, ONE)
        dk[i, k] = dks[:m, :d]
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
