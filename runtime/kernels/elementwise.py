"""Elementwise kernels (numpy broadcasting), with ONNX Runtime's dtype rules.

ONNX gives both operands of a binary op the same dtype (Pow excepted), so numpy's promotion keeps the input
dtype; the exceptions are handled below. Every output is an ndarray (numpy returns scalars for 0-d operands).

Large float32 Add, Sub, Mul, Div and Sum of two tensors of one shape, or of a tensor and a vector along its last
axis (a bias), run as a parallel Numba loop: numpy's are single-threaded, and these are the residual and bias adds
of every block (DeiT-S/16 at batch 32: 131 ms a step). Each element is the same IEEE float32 operation as
numpy's, so the results are the same bits.
"""
import numpy as np
from numba import njit, prange
from onnx import helper

from edge_lbp.runtime.kernels.common import MS
from edge_lbp.runtime.registry import register

PARALLEL_SIZE = 1 << 16  # elements from which a binary op runs in parallel
_ADD, _SUB, _MUL, _DIV = range(4)


@njit(parallel=True, cache=True)
def _binary_rows(code, a, b):
    """``a (R, C) op b`` with b ``(R, C)`` or ``(1, C)``; ``code`` picks the op (loop-invariant: LLVM hoists it)."""
    rows, cols = a.shape
    out = np.empty_like(a)
    step = 1 if b.shape[0] > 1 else 0  # b's row per row of a
    for r in prange(rows):
        br = r * step
        for c in range(cols):
            if code == 0:
                out[r, c] = a[r, c] + b[br, c]
            elif code == 1:
                out[r, c] = a[r, c] - b[br, c]
            elif code == 2:
                out[r, c] = a[r, c] * b[br, c]
            else:
                out[r, c] = a[r, c] / b[br, c]
    return out


def _rows_of(a, b):
    """``(a, b)`` as ``(R, C)`` and ``(R or 1, C)`` rows when ``a op b`` is one of the shapes the parallel loop
    takes (b of a's shape, or a vector along a's last axis), else None."""
    if (a.dtype != np.float32 or b.dtype != np.float32 or a.size < PARALLEL_SIZE or b.ndim > a.ndim
            or not a.flags.c_contiguous or not b.flags.c_contiguous):
        return None
    cols = a.shape[-1]
    if b.shape == a.shape:
        return a.reshape(-1, cols), b.reshape(-1, cols)
    if b.size == cols and b.shape[-1] == cols:
        return a.reshape(-1, cols), b.reshape(1, cols)
    return None


def _parallel(code, fn, commutes):
    def run(a, b):
        rows = _rows_of(a, b)
        if rows is not None:
            return _binary_rows(code, *rows).reshape(a.shape)
        rows = _rows_of(b, a) if commutes else None  # a vector plus a tensor: the same sum, b's shape
        if rows is not None:
            return _binary_rows(code, *rows).reshape(b.shape)
        return fn(a, b)

    return run


def _divide(a, b):
    if a.dtype.kind != "i":
        return np.divide(a, b)
    # ORT divides signed integers like C++ (towards zero); numpy's // floors.
    return np.floor_divide(a, b) + ((np.remainder(a, b) != 0) & ((a < 0) != (b < 0)))


def _power(base, exponent):
    # The output has the base's dtype even when the exponent's dtype differs (float32 ** int64 -> float32).
    return np.power(base, exponent).astype(base.dtype, copy=False)


_ELEMENTWISE = {
    "Add": _parallel(_ADD, np.add, commutes=True),
    "Sub": _parallel(_SUB, np.subtract, commutes=False),
    "Mul": _parallel(_MUL, np.multiply, commutes=True),
    "Div": _parallel(_DIV, _divide, commutes=False),
    "Pow": _power,
    "Equal": np.equal,
    "GreaterOrEqual": np.greater_equal,
    "Less": np.less,
    "Floor": np.floor,
    "Neg": np.negative,
    "Sqrt": np.sqrt,
    "Exp": np.exp,
    "Log": np.log,
    "Tanh": np.tanh,
    "Not": np.logical_not,
    "Where": np.where,
}


def _elementwise(fn):
    def factory(attrs, node):
        return lambda *xs: (np.asarray(fn(*xs)),)

    return factory


for _op, _fn in _ELEMENTWISE.items():
    register(_op)(_elementwise(_fn))


@register("Mod")
def mod(attrs, node):
    fmod = attrs.get("fmod", 0)
    if fmod not in (0, 1):
        raise ValueError(f"{node.name}: Mod fmod={fmod!r} must be 0 or 1")
    # fmod=0 is Python's % (the result has the divisor's sign; ONNX allows it for integers only), fmod=1 is C's
    # fmod (the dividend's sign). ORT's integer Mod by zero is undefined; numpy returns 0 and warns.
    fn = np.fmod if fmod else np.mod

    def run(a, b):
        if not fmod and a.dtype.kind == "f":
            raise ValueError(f"{node.name}: Mod of floating-point inputs needs fmod=1")
        return (np.asarray(fn(a, b)),)

    return run


@register("Sum")
def sum_(attrs, node):
    add = _ELEMENTWISE["Add"]

    def run(first, *rest):
        out = first.copy() if not rest else add(first, rest[0])
        for x in rest[1:]:
            out = add(out, x)
        return (np.asarray(out),)

    return run


@register("Identity")
def identity(attrs, node):
    return lambda x: (x,)


@register("Cast")
def cast(attrs, node):
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{node.name}: Cast to={attrs.get('to')!r} is not a supported tensor type") from exc
    if dtype.kind not in "biuf":
        raise ValueError(f"{node.name}: Cast to {dtype} is not supported (numeric and bool types only)")
    return lambda x: (np.asarray(x).astype(dtype),)


@register("Scale", MS)
def scale(attrs, node):
    scale_down = attrs.get("scale_down", 0)
    if scale_down not in (0, 1):
        raise ValueError(f"{node.name}: Scale scale_down={scale_down!r} must be 0 or 1")

    def run(x, factor):
        # ORT reads the (int or float) scale as float32 and, to scale down, multiplies by its float32 inverse.
        f = np.float32(factor.reshape(-1)[0])
        f = np.float32(1) / f if scale_down else f
        return (np.asarray(x * f.astype(x.dtype)),)

    return run
