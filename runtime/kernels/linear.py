"""MatMul, Gemm, FusedMatMul, Conv and ConvGrad through numpy's BLAS.

A product of an N-D tensor with a 2-D matrix runs as one 2-D GEMM over the flattened leading dimensions: on
ViT-B shapes numpy's stacked (3-D) matmul is ~3.5x slower than the same work as one GEMM. Transposes are
views; numpy passes them to BLAS as transposed operands without copying.

Convolutions are 2-D only (NCHW): im2col as one strided view copied once, then a GEMM per group (batched by
numpy's matmul); ConvGrad scatters the column gradient back with one strided add per kernel tap. Depthwise
convolutions (one filter per channel) have direct Numba loops instead: as 1 x (kh*kw) GEMMs per channel they
ran 3.4x slower than ORT on EfficientFormer's 3x3 pooling mixer (8 x 96 x 28 x 28, one thread); the loops are
2.5x slower forward and 1.2x for dX.
"""
import numpy as np
from numba import njit, prange
from numpy.lib.stride_tricks import as_strided

from edge_lbp.core import ops
from edge_lbp.runtime.kernels.common import MS, flag, node_error, overwrites, wanted
from edge_lbp.runtime.registry import register


def matmul(a, b):
    if b.ndim == 2 and a.ndim > 2:
        out = a.reshape(-1, a.shape[-1]) @ b
        return out.reshape(a.shape[:-1] + (b.shape[1],))
    return np.matmul(a, b)


def _batch_to_rows(x):
    # FusedMatMul's transBatch: [d0, d1, ..., dn-2, dn-1] -> [d1, ..., dn-2, d0, dn-1], so the first (batch)
    # dimension becomes the row dimension of every matrix.
    return np.moveaxis(x, 0, -2) if x.ndim > 2 else x


def _swap_last(x):
    return x.swapaxes(-1, -2) if x.ndim >= 2 else x


def _scaled(alpha):
    if alpha == 1:
        return lambda out: out
    alpha = np.float32(alpha)

    def scale(out):
        out *= alpha
        return out

    return scale


@register("MatMul")
def matmul_op(attrs, node):
    return lambda a, b: (matmul(a, b),)


_NO_ROWS = np.zeros((0, 0), np.float32)


@njit(cache=True)
def add_row(out, r, bias, residual, use_residual):
    """``out[r] = (out[r] + bias) + residual[r]`` in place: the float32 operations of the two Add nodes it
    replaces, in their order (no fastmath, also where a fastmath kernel calls it), so the same bits without the
    intermediate tensor."""
    if use_residual:
        for c in range(out.shape[1]):
            out[r, c] = (out[r, c] + bias[c]) + residual[r, c]
    else:
        for c in range(out.shape[1]):
            out[r, c] = out[r, c] + bias[c]


@njit(parallel=True, cache=True)
def _add_in_place(out, bias, residual, use_residual):
    for r in prange(out.shape[0]):
        add_row(out, r, bias, residual, use_residual)
    return out


def row_adds(out, bias, residual):
    """``(out, bias, residual rows, use_residual)`` for the in-place row kernels when ``bias`` is a float32 vector
    along the product's last axis and ``residual`` (or None) has its shape, as in a linear layer; else None."""
    vector = out.dtype == bias.dtype == np.float32 and bias.shape == out.shape[-1:]
    if not vector or (residual is not None and (residual.dtype != np.float32 or residual.shape != out.shape)):
        return None
    rows = out.reshape(-1, out.shape[-1])
    if residual is None:
        return rows, bias, _NO_ROWS, False
    return rows, bias, np.ascontiguousarray(residual).reshape(rows.shape), True


@register(ops.MATMUL_ADD, ops.DOMAIN)
def matmul_add(attrs, node):
    """(a, b, bias, residual?) -> ``MatMul(a, b) + bias (+ residual)`` (``runtime.passes.add_into_matmul``): the
    adds run in place on the product when the bias is a float32 vector along its last axis and the residual has
    its shape, as in a linear layer; numpy's broadcasting adds otherwise."""

    return lambda a, b, bias, residual=None: (add_to_product(matmul(a, b), bias, residual),)


def add_to_product(out, bias, residual=None):
    """``(out + bias) + residual`` for a fresh C-contiguous product ``out``: in place when :func:`row_adds`
    allows, numpy's broadcasting adds otherwise."""
    fast = row_adds(out, bias, residual)
    if fast is not None:
        _add_in_place(*fast)
        return out
    out = out + bias
    return out if residual is None else out + residual


@register("FusedMatMul", MS)
def fused_matmul(attrs, node):
    steps_a = [f for flag, f in ((attrs.get("transBatchA", 0), _batch_to_rows), (attrs.get("transA", 0), _swap_last))
               if flag]
    steps_b = [f for flag, f in ((attrs.get("transBatchB", 0), _batch_to_rows), (attrs.get("transB", 0), _swap_last))
               if flag]
    scale = _scaled(attrs.get("alpha", 1.0))

    def run(a, b):
        for step in steps_a:
            a = step(a)
        for step in steps_b:
            b = step(b)
        return (scale(matmul(a, b)),)

    return run


def _gemm_product(attrs):
    """A Gemm's ``alpha * op(A) @ op(B)`` (transposes are views), optionally written into ``out``."""
    trans_a, trans_b = attrs.get("transA", 0), attrs.get("transB", 0)
    scale = _scaled(attrs.get("alpha", 1.0))
    return lambda a, b, out=None: scale(np.dot(a.T if trans_a else a, b.T if trans_b else b, out=out))


@register("Gemm")
def gemm(attrs, node):
    product = _gemm_product(attrs)
    beta = np.float32(attrs.get("beta", 1.0))
    # ORT skips C when beta is 0 (it may hold anything); an omitted C is an empty input name.
    with_c = len(node.input) > 2 and bool(node.input[2]) and beta != 0

    def run(a, b, c=None):
        out = product(a, b)
        if with_c:
            out += c if beta == 1 else beta * c
        return (out,)

    return run


@register(ops.GEMM_ACCUMULATE, ops.DOMAIN)
def gemm_accumulate(attrs, node):
    """(buffer, A, B, overwrite?) -> (updated bool[1], buffer?): ``InPlaceAccumulatorV2(buffer, Gemm(A, B),
    overwrite)``, the product written straight into the buffer when the flag says overwrite
    (``runtime.passes.accumulate_in_place``)."""
    product = _gemm_product(attrs)
    n_out = len(node.output)

    def run(buffer, a, b, overwrite=None):
        if overwrites(overwrite):
            product(a, b, out=buffer)
        else:
            buffer += product(a, b)
        return (flag(True), buffer)[:n_out]

    return run


class _ConvGeometry:
    """The attributes of a 2-D Conv / ConvGrad node, checked when the graph loads."""

    def __init__(self, attrs, node):
        auto_pad = attrs.get("auto_pad", "NOTSET")
        if auto_pad not in ("NOTSET", "VALID"):
            raise node_error(node, f"auto_pad={auto_pad} is not supported (explicit pads only)")
        for name, size in (("kernel_shape", 2), ("strides", 2), ("dilations", 2), ("pads", 4)):
            if name in attrs and len(attrs[name]) != size:
                raise node_error(node, f"{name}={attrs[name]}: only 2-D convolution is supported")
        self.node = node
        self.strides = tuple(attrs.get("strides", (1, 1)))
        self.dilations = tuple(attrs.get("dilations", (1, 1)))
        self.pads = (0, 0, 0, 0) if auto_pad == "VALID" else tuple(attrs.get("pads", (0, 0, 0, 0)))
        self.groups = attrs.get("group", 1)
        self.padded = any(self.pads)

    def check(self, x, w):
        if x.ndim != 4 or w.ndim != 4:
            raise node_error(self.node, f"input of rank {x.ndim}, weight of rank {w.ndim}: only 2-D convolution "
                                        "(NCHW) is supported")

    def pad(self, x):
        if not self.padded:
            return np.ascontiguousarray(x)
        top, left, bottom, right = self.pads
        n, c, h, w = x.shape
        out = np.zeros((n, c, h + top + bottom, w + left + right), x.dtype)
        out[:, :, top:top + h, left:left + w] = x
        return out

    def out_size(self, padded_hw, kernel_hw):
        return tuple((size - d * (k - 1) - 1) // s + 1
                     for size, k, s, d in zip(padded_hw, kernel_hw, self.strides, self.dilations))

    def columns(self, x, kernel_hw):
        """im2col: ``(N, groups, C/groups * kh * kw, Ho * Wo)``, and (Ho, Wo)."""
        xp = self.pad(x)
        n, c = xp.shape[:2]
        (kh, kw), (sh, sw), (dh, dw) = kernel_hw, self.strides, self.dilations
        ho, wo = self.out_size(xp.shape[2:], kernel_hw)
        s = xp.strides
        view = as_strided(xp, (n, c, kh, kw, ho, wo), (s[0], s[1], s[2] * dh, s[3] * dw, s[2] * sh, s[3] * sw),
                          writeable=False)
        return view.reshape(n, self.groups, c // self.groups * kh * kw, ho * wo), (ho, wo)

    def add_columns(self, dcols, x_shape, kernel_hw, out_hw):
        """col2im: the input gradient from the column gradient ``(N, C, kh, kw, Ho, Wo)``."""
        top, left, bottom, right = self.pads
        n, c, h, w = x_shape
        (kh, kw), (ho, wo), (sh, sw), (dh, dw) = kernel_hw, out_hw, self.strides, self.dilations
        dxp = np.zeros((n, c, h + top + bottom, w + left + right), dcols.dtype)
        for i in range(kh):
            for j in range(kw):
                rows = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
                cols = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
                dxp[:, :, rows, cols] += dcols[:, :, i, j]
        return self.unpad(dxp)

    def unpad(self, xp):
        if not self.padded:
            return xp
        top, left, bottom, right = self.pads
        return np.ascontiguousarray(xp[:, :, top:xp.shape[2] - bottom, left:xp.shape[3] - right])

    def depthwise(self, x, w):
        return self.groups > 1 and self.groups == x.shape[1] == w.shape[0] and w.shape[1] == 1

    def grouped_weight(self, w):
        return w.reshape(self.groups, w.shape[0] // self.groups, -1)


@njit(parallel=True, fastmath=True, cache=True)
def _depthwise(xp, w, out_hw, strides, dilations):
    n, channels = xp.shape[:2]
    kh, kw = w.shape[2:]
    (ho, wo), (sh, sw), (dh, dw) = out_hw, strides, dilations
    out = np.zeros((n, channels, ho, wo), np.float32)
    for task in prange(n * channels):
        i, ch = task // channels, task % channels
        for y in range(ho):
            dst = out[i, ch, y]
            for a in range(kh):
                src = xp[i, ch, y * sh + a * dh]
                for b in range(kw):
                    tap = w[ch, 0, a, b]
                    if sw == 1:  # a unit stride known to LLVM lets it vectorise the row
                        src_b = src[b * dw:b * dw + wo]
                        for x in range(wo):
                            dst[x] += tap * src_b[x]
                    else:
                        for x in range(wo):
                            dst[x] += tap * src[x * sw + b * dw]
    return out


@njit(parallel=True, fastmath=True, cache=True)
def _depthwise_grad(dy, xp, w, strides, dilations, need_dx, need_dw):
    """The padded input gradient and the weight gradient of :func:`_depthwise`."""
    n, channels, ho, wo = dy.shape
    kh, kw = w.shape[2:]
    (sh, sw), (dh, dw) = strides, dilations
    dxp = np.zeros(xp.shape if need_dx else (0, 0, 0, 0), np.float32)
    dweight = np.zeros(w.shape if need_dw else (0, 0, 0, 0), np.float32)
    for ch in prange(channels):
        for a in range(kh):
            for b in range(kw):
                tap = w[ch, 0, a, b]
                total = np.float32(0)
                for i in range(n):
                    for y in range(ho):
                        row = y * sh + a * dh
                        for x in range(wo):
                            g = dy[i, ch, y, x]
                            if need_dw:
                                total += g * xp[i, ch, row, x * sw + b * dw]
                            if need_dx:
                                dxp[i, ch, row, x * sw + b * dw] += tap * g
                if need_dw:
                    dweight[ch, 0, a, b] = total
    return dxp, dweight


@register("Conv")
def conv(attrs, node):
    geo = _ConvGeometry(attrs, node)

    def run(x, w, b=None):
        geo.check(x, w)
        if geo.depthwise(x, w):
            xp = geo.pad(x)
            out = _depthwise(xp, w, geo.out_size(xp.shape[2:], w.shape[2:]), geo.strides, geo.dilations)
        else:
            cols, (ho, wo) = geo.columns(x, w.shape[2:])
            out = np.matmul(geo.grouped_weight(w), cols).reshape(x.shape[0], w.shape[0], ho, wo)
        if b is not None:
            out += b.reshape(-1, 1, 1)
        return (out,)

    return run


@register("ConvGrad", MS)
def conv_grad(attrs, node):
    """Outputs dX, dW, dB; each may be omitted (an empty name, or dB absent)."""
    geo = _ConvGeometry(attrs, node)
    need_dx, need_dw, need_db = (wanted(node) + (False, False, False))[:3]

    def run(dy, x, w):
        geo.check(x, w)
        n, g = x.shape[0], geo.groups
        dy = np.ascontiguousarray(dy)
        dy4 = dy.reshape(n, g, w.shape[0] // g, -1)
        db = dy.sum(axis=(0, 2, 3)) if need_db else None
        if geo.depthwise(x, w):
            dxp, dw = _depthwise_grad(dy, geo.pad(x), w, geo.strides, geo.dilations, need_dx, need_dw)
            return (geo.unpad(dxp) if need_dx else None, dw if need_dw else None, db)[:len(node.output)]
        dx = dw = None
        if need_dw:
            cols, _ = geo.columns(x, w.shape[2:])
            dw = np.matmul(dy4, cols.swapaxes(-1, -2)).sum(axis=0).reshape(w.shape)
        if need_dx:
            dcols = np.matmul(geo.grouped_weight(w).swapaxes(-1, -2), dy4)
            dcols = dcols.reshape((n, x.shape[1]) + w.shape[2:] + dy.shape[2:])
            dx = geo.add_columns(dcols, x.shape, w.shape[2:], dy.shape[2:])
        return (dx, dw, db)[:len(node.output)]

    return run
