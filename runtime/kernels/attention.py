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

The per-tile products run in register panels (``make_product``) on zero-padded copies of each tile (copies were
needed anyway: the operands are strided views). ``product(a, bt, out, scale)`` computes ``out[:R, :C] = scale *
a @ bt`` for ``a`` of ``R`` rows, a multiple of ``ROWS``, and ``bt`` of ``C`` columns, a multiple of ``LANES``,
all three unit-stride along their rows, in ``ROWS x LANES`` panels whose sums stay in vector registers for the
whole reduction: one broadcast of ``a`` and one vector load of ``bt`` per step, the outer-product form of BLAS
micro-kernels. Numba cannot write that form (a local accumulator array stays in memory; a dot-product form spends
half its time in horizontal sums when the reduction is a head's 64), so the panel is LLVM IR on ``<LANES x
float>`` vectors, which LLVM splits into the registers the CPU has (AVX-512, AVX2, NEON). ``LANES`` is 32 with
AVX-512 (32 registers of 16 floats), else 16, so that the 6 rows' sums fit AVX2's 16 registers and NEON's 32.

Measured on one 197-token head tile (one thread, Intel Xeon AVX-512; GFLOP/s of the unpadded products): 6 x 32
panels 111-131, 6 x 16 104-113, numpy's OpenBLAS on the same products 102-115, the earlier 6 x 2 dot-product
blocks in Numba 55-61 (on AMD EPYC they had measured 25 against OpenBLAS's 59). Per-tile BLAS (``np.dot`` inside
``njit``), the other way the issue named, would make SciPy a core requirement (Numba takes BLAS from
``scipy.linalg.cython_blas``), and on a loaded AMD EPYC it lost at 2 threads to BLAS's own thread pools waiting
for time slices inside Numba's threads (``tests/benchmarks/bench_attention.py``).
"""
import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from edge_lbp.core import ops
from edge_lbp.runtime.kernels.activation import exp32, max32
from edge_lbp.runtime.kernels.common import ONE, ZERO
from edge_lbp.runtime.registry import register


# Small float32 products in registers (see the docstring); here, not in a module of their own, because Numba's
# cache of _forward and _backward is invalidated by changes to this file only.
ROWS = 6
llvm.initialize_native_target()
LANES = 32 if llvm.get_host_cpu_features().get("avx512f") else 16


def _panel(lanes):
    """``out[row:row+ROWS, col:col+lanes] = scale * a[row:row+ROWS] @ bt[:, col:col+lanes]`` (``a.shape[1] > 0``)."""

    def codegen(context, builder, signature, args):
        f32, i64 = ir.FloatType(), ir.IntType(64)
        vec = ir.VectorType(f32, lanes)
        a_, bt_, out_ = (context.make_array(t)(context, builder, v) for t, v in zip(signature.args[:3], args[:3]))
        row, col, scale = args[3:]

        def pitch(array):  # the row stride in elements
            return builder.sdiv(cgutils.unpack_tuple(builder, array.strides)[0], ir.Constant(i64, 4))

        def splat(x):
            one = builder.insert_element(ir.Constant(vec, ir.Undefined), x, ir.Constant(ir.IntType(32), 0))
            return builder.shuffle_vector(one, ir.Constant(vec, ir.Undefined),
                                          ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes))

        def row_start(array, r, offset):
            return builder.gep(array.data, [builder.add(builder.mul(builder.add(row, ir.Constant(i64, r)),
                                                                    pitch(array)), offset)])

        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3), f"llvm.fma.v{lanes}f32")
        length = cgutils.unpack_tuple(builder, a_.shape)[1]
        a_rows = [row_start(a_, r, ir.Constant(i64, 0)) for r in range(ROWS)]
        bt_col, bt_pitch = builder.gep(bt_.data, [col]), pitch(bt_)
        entry, loop, done = builder.block, builder.append_basic_block("panel"), builder.append_basic_block("stored")
        builder.branch(loop)
        builder.position_at_end(loop)
        c = builder.phi(i64)
        sums = [builder.phi(vec) for _ in range(ROWS)]
        b = builder.load(builder.bitcast(builder.gep(bt_col, [builder.mul(c, bt_pitch)]), vec.as_pointer()), align=4)
        new = [builder.call(fma, [splat(builder.load(builder.gep(a_row, [c]), align=4)), b, s])
               for a_row, s in zip(a_rows, sums)]
        after = builder.add(c, ir.Constant(i64, 1))
        c.add_incoming(ir.Constant(i64, 0), entry)
        c.add_incoming(after, loop)
        for s, n in zip(sums, new):
            s.add_incoming(ir.Constant(vec, None), entry)
            s.add_incoming(n, loop)
        builder.cbranch(builder.icmp_signed("<", after, length), loop, done)
        builder.position_at_end(done)
        for r, n in enumerate(new):
            target = builder.bitcast(row_start(out_, r, col), vec.as_pointer())
            builder.store(builder.fmul(n, splat(scale)), target, align=4)
        return context.get_dummy_value()

    def typer(typingctx, a, bt, out, row, col, scale):
        return types.void(a, bt, out, types.intp, types.intp, types.float32), codegen

    return intrinsic(typer)


@njit(inline="always")
def padded(x, row_multiple, col_multiple):
    """``x`` copied into a C-contiguous float32 array of zeros whose sides are rounded up to the multiples. The
    loops run along ``x``'s axis of the smaller stride, so a transposed view (``k``, ``P``, ``dS``) is transposed
    while it is read: Numba's slice assignment from a strided view took 2-3 times as long (the head tiles of a
    packed qkv tensor are read in place)."""
    rows, cols = x.shape
    out = np.zeros((-(-rows // row_multiple) * row_multiple, -(-cols // col_multiple) * col_multiple), np.float32)
    if x.strides[1] <= x.strides[0]:
        for r in range(rows):
            for c in range(cols):
                out[r, c] = x[r, c]
    else:
        for c in range(cols):
            for r in range(rows):
                out[r, c] = x[r, c]
    return out


def make_product(lanes):
    """``product(a, bt, out, scale)``: ``out[:R, :C] = scale * a @ bt`` for operands padded to ``ROWS`` rows and
    ``lanes`` columns, unit-stride along their rows (the module's docstring says which; the caller makes them so:
    ``padded``); ``product`` is the one for this CPU."""
    panel = _panel(lanes)

    @njit(inline="always")
    def product(a, bt, out, scale):
        rows, length = a.shape
        cols = bt.shape[1]
        # No checks that raise: a raise inside the callers' prange loops would make Numba run them serially.
        if length == 0:
            out[:rows, :cols] = 0
            return
        for i in range(0, rows, ROWS):
            for j in range(0, cols, lanes):
                panel(a, bt, out, i, j, scale)

    return product


product = make_product(LANES)


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
