"""Elementwise kernels (numpy broadcasting), with ONNX Runtime's dtype rules.

ONNX gives both operands of a binary op the same dtype (Pow excepted), so numpy's promotion keeps the input
dtype; the exceptions are handled below. Every output is an ndarray (numpy returns scalars for 0-d operands).
"""
import numpy as np
from onnx import helper

from edge_lbp.runtime.kernels.common import MS
from edge_lbp.runtime.registry import register


def _divide(a, b):
    if a.dtype.kind != "i":
        return np.divide(a, b)
    # ORT divides signed integers like C++ (towards zero); numpy's // floors.
    return np.floor_divide(a, b) + ((np.remainder(a, b) != 0) & ((a < 0) != (b < 0)))


def _power(base, exponent):
    # The output has the base's dtype even when the exponent's dtype differs (float32 ** int64 -> float32).
    return np.power(base, exponent).astype(base.dtype, copy=False)


_ELEMENTWISE = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": _divide,
    "Pow": _power,
    "Equal": np.equal,
    "GreaterOrEqual": np.greater_equal,
    "Less": np.less,
    "Floor": np.floor,
    "Neg": np.negative,
    "Sqrt": np.sqrt,
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
    def run(first, *rest):
        out = first.copy() if not rest else np.add(first, rest[0])
        for x in rest[1:]:
            out = np.add(out, x)
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
