"""Small float32 products in registers: the per-tile products of the fused attention (``attention.py``).

``product(a, bt, out, scale)`` computes ``out[:R, :C] = scale * a @ bt`` for operands already padded: ``a`` of
``R`` rows, a multiple of ``ROWS``, ``bt`` of ``C`` columns, a multiple of ``LANES``, both with unit stride along
their last axis (``out`` too). It runs ``ROWS x LANES`` panels whose sums stay in vector registers for the whole
reduction, one broadcast of ``a`` and one vector load of ``bt`` per step: the outer-product form that BLAS
micro-kernels use. Numba cannot write it (a local accumulator array stays in memory, and a dot-product form
spends half its time in horizontal sums when the reduction is a head's 64), so the panel is LLVM IR with
``<LANES x float>`` vectors, which LLVM splits into whatever registers the CPU has (AVX-512, AVX2, NEON).

Measured on one 197-token head tile (one thread, Intel Xeon AVX-512, ``tests/benchmarks/bench_attention.py``'s
shapes; GFLOP/s of the unpadded products): 6 x 32 panels 111-131, 6 x 16 104-113, numpy's OpenBLAS on the same
products 102-115, the earlier 6 x 2 dot-product blocks 55-61. ``LANES`` is 32 where the CPU has AVX-512 (32 vector
registers of 16 floats) and 16 elsewhere, so that the 6 panel rows' sums fit AVX2's 16 registers and NEON's 32.
"""
import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

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
    """``x`` copied into a C-contiguous float32 array of zeros whose sides are rounded up to the multiples."""
    rows, cols = x.shape
    out = np.zeros((-(-rows // row_multiple) * row_multiple, -(-cols // col_multiple) * col_multiple), np.float32)
    out[:rows, :cols] = x
    return out


def make_product(lanes):
    """``product(a, bt, out, scale)``: ``out[:R, :C] = scale * a @ bt`` for operands padded to ``ROWS`` rows and
    ``lanes`` columns (the module's docstring says which); ``product`` is the one for this CPU."""
    panel = _panel(lanes)

    @njit(inline="always")
    def product(a, bt, out, scale):
        rows, length = a.shape
        cols = bt.shape[1]
        if rows % ROWS or cols % lanes or bt.shape[0] != length or out.shape[0] < rows or out.shape[1] < cols:
            raise ValueError("panel product: operands not padded to the panel")
        if length == 0:
            out[:rows, :cols] = 0
            return
        if a.strides[1] != 4 or bt.strides[1] != 4 or out.strides[1] != 4:
            raise ValueError("panel product: an operand is not unit-stride along its rows")
        for i in range(0, rows, ROWS):
            for j in range(0, cols, lanes):
                panel(a, bt, out, i, j, scale)

    return product


product = make_product(LANES)
