"""Shape, data-movement and reduction kernels.

Aliasing contract for the executor: Identity (elementwise.py), Reshape, Flatten, Squeeze, Unsqueeze, a 2-D
Transpose, a ReduceSum/ReduceMean no-op, and edge_lbp's TransposeView and SplitView (which
``runtime.passes.views_into_attention`` puts in where only the fused attention reads them) return views of their
input; Constant returns the same read-only array on every call; every other output here is a fresh C-contiguous
array (Transpose of 3 or more dimensions, Slice, Split and Expand copy so the math kernels receive contiguous,
writable data).
"""
import math

import numpy as np

from edge_lbp.core import ops
from edge_lbp.runtime.kernels.common import MS
from edge_lbp.runtime.registry import register

_INT64 = np.int64


def _ints(values):
    return [int(v) for v in values]


@register("Reshape")
def reshape(attrs, node):
    allowzero = attrs.get("allowzero", 0)
    if allowzero not in (0, 1):
        raise ValueError(f"{node.name}: Reshape allowzero={allowzero!r} must be 0 or 1")

    def run(x, shape):
        dims = _ints(shape)
        if not allowzero:
            # A 0 copies the input's dimension at that position; -1 is left to numpy to infer.
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return (x.reshape(dims),)

    return run


@register("Shape")
def shape_(attrs, node):
    # Python slicing of the shape tuple is exactly ONNX's rule: negatives count from the back, then clamp.
    start, end = attrs.get("start", 0), attrs.get("end")
    return lambda x: (np.array(x.shape[start:end], dtype=_INT64),)


@register("Size")
def size(attrs, node):
    return lambda x: (np.array(x.size, dtype=_INT64),)


@register("Flatten")
def flatten(attrs, node):
    axis = attrs.get("axis", 1)

    def run(x):
        a = axis + x.ndim if axis < 0 else axis
        return (x.reshape(math.prod(x.shape[:a]), math.prod(x.shape[a:])),)

    return run


@register("Transpose")
def transpose(attrs, node):
    perm = attrs.get("perm")

    def run(x):
        # A 2-D transpose is the exported ``Transpose(W)`` before a linear layer's MatMul (and its gradient):
        # BLAS reads the view as it is, where a copy of every weight cost a third of a ViT-B step.
        if x.ndim == 2:
            return (x.T if perm is None or list(perm) == [1, 0] else x,)
        return (np.ascontiguousarray(x.transpose(perm)),)

    return run


@register(ops.TRANSPOSE_VIEW, ops.DOMAIN)
def transpose_view(attrs, node):
    perm = attrs.get("perm")
    return lambda x: (x.transpose(perm),)


def _slice(start, end, step, dim):
    """ONNX Slice bounds -> a Python slice. They differ for negative steps: ONNX clamps start to [0, dim-1]
    where Python would yield an empty slice, and an end of -1 (before element 0) is None in Python."""
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        return slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
    end = min(max(end, -1), dim - 1)
    return slice(min(max(start, 0), dim - 1), None if end < 0 else end, step)


@register("Slice")
def slice_(attrs, node):
    def run(x, starts, ends, axes=None, steps=None):
        axes = range(len(starts)) if axes is None else _ints(axes)
        steps = [1] * len(starts) if steps is None else _ints(steps)
        index = [slice(None)] * x.ndim
        for s, e, a, st in zip(_ints(starts), _ints(ends), axes, steps):
            index[a] = _slice(s, e, st, x.shape[a])
        return (np.ascontiguousarray(x[tuple(index)]),)

    return run


@register("SliceGrad", MS)
def slice_grad(attrs, node):
    """Inputs (dY, shape of the Slice input, starts, ends, axes, steps) -> dX: zeros with dY at the sliced positions."""

    def run(dy, shape, starts, ends, axes=None, steps=None):
        dims = tuple(_ints(shape))
        axes = range(len(starts)) if axes is None else [a + len(dims) if a < 0 else a for a in _ints(axes)]
        steps = [1] * len(starts) if steps is None else _ints(steps)
        index = [slice(None)] * len(dims)
        for s, e, a, st in zip(_ints(starts), _ints(ends), axes, steps):
            index[a] = _slice(s, e, st, dims[a])
        dx = np.zeros(dims, dtype=dy.dtype)
        dx[tuple(index)] = dy
        return (dx,)

    return run


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge"}


@register("Pad")
def pad(attrs, node):
    mode = attrs.get("mode", "constant")
    if mode not in _PAD_MODES:
        raise ValueError(f"{node.name}: Pad mode {mode!r} is not supported ({', '.join(_PAD_MODES)})")

    def run(x, pads, value=None, axes=None):
        axes = range(x.ndim) if axes is None else [a + x.ndim if a < 0 else a for a in _ints(axes)]
        pads, count = _ints(pads), len(axes)
        if len(pads) != 2 * count:
            raise ValueError(f"{node.name}: Pad has {len(pads)} pads for {count} axes")
        # Negative pads crop (ORT's Pad gradient is a Pad with the negated pads): crop first, then pad.
        crop, widths = [slice(None)] * x.ndim, [(0, 0)] * x.ndim
        for i, a in enumerate(axes):
            begin, end = pads[i], pads[i + count]
            crop[a] = slice(max(-begin, 0), x.shape[a] - max(-end, 0))
            widths[a] = (max(begin, 0), max(end, 0))
        x = x[tuple(crop)]
        if mode == "constant":
            fill = 0 if value is None or value.size == 0 else value.reshape(-1)[0]
            return (np.pad(x, widths, mode="constant", constant_values=fill),)
        return (np.pad(x, widths, mode=_PAD_MODES[mode]),)

    return run


@register("Range")
def range_(attrs, node):
    def run(start, limit, delta):
        # ONNX's element count max(ceil((limit - start) / delta), 0), computed in the inputs' dtype like ORT.
        start, limit, delta = start.reshape(()), limit.reshape(()), delta.reshape(())
        count = max(int(np.ceil((limit - start) / delta)), 0)
        return ((start + np.arange(count, dtype=start.dtype) * delta).astype(start.dtype),)

    return run


@register("Squeeze")
def squeeze(attrs, node):
    return lambda x, axes=None: (np.squeeze(x, axis=None if axes is None else tuple(_ints(axes))),)


@register("Unsqueeze")
def unsqueeze(attrs, node):
    # expand_dims resolves negative axes against the output rank, as ONNX does.
    return lambda x, axes: (np.expand_dims(x, tuple(_ints(axes))),)


@register("Concat")
def concat(attrs, node):
    axis = attrs["axis"]
    return lambda *xs: (np.concatenate(xs, axis=axis),)


@register("ConcatTraining", MS)
def concat_training(attrs, node):
    # Output 1 (optional) is int64 [n_inputs]: each input's length along axis, what SplitTraining splits by.
    axis, n_out = attrs["axis"], len(node.output)

    def run(*xs):
        lengths = np.array([x.shape[axis] for x in xs], dtype=_INT64)
        return (np.concatenate(xs, axis=axis), lengths)[:n_out]

    return run


def _split(node, x, axis, lengths, count, copy=True):
    dim = x.shape[axis]
    if lengths is None:
        # Opset 18's rule (opset 13 only allows the evenly divisible case, where it agrees): ceil-sized
        # chunks, the last one smaller.
        chunk = -(-dim // count)
        lengths = [chunk] * (count - 1) + [dim - chunk * (count - 1)]
    else:
        lengths = _ints(lengths)
    if len(lengths) != count or sum(lengths) != dim or min(lengths) < 0:
        raise ValueError(f"{node.name}: {node.op_type} lengths {lengths} do not split a dimension of {dim} "
                         f"into {count} outputs")
    parts = np.split(x, np.cumsum(lengths)[:-1], axis=axis)
    return tuple(np.ascontiguousarray(p) for p in parts) if copy else tuple(parts)


@register("Split")
def split(attrs, node):
    axis, count = attrs.get("axis", 0), len(node.output)
    if attrs.get("num_outputs", count) != count:
        raise ValueError(f"{node.name}: Split num_outputs={attrs['num_outputs']} but the node has {count} outputs")
    return lambda x, lengths=None: _split(node, x, axis, lengths, count)


@register(ops.SPLIT_VIEW, ops.DOMAIN)
def split_view(attrs, node):
    axis, count = attrs.get("axis", 0), len(node.output)
    return lambda x, lengths=None: _split(node, x, axis, lengths, count, copy=False)


@register("SplitTraining", MS)
def split_training(attrs, node):
    axis, count = attrs.get("axis", 0), len(node.output)
    return lambda x, lengths: _split(node, x, axis, lengths, count)


@register("Expand")
def expand(attrs, node):
    def run(x, shape):
        # Bidirectional broadcast: the output may be larger than `shape` where x has the larger dimension.
        out_shape = np.broadcast_shapes(x.shape, tuple(_ints(shape)))
        return (np.broadcast_to(x, out_shape).copy(),)

    return run


@register("Gather")
def gather(attrs, node):
    axis = attrs.get("axis", 0)
    return lambda x, indices: (np.take(x, indices, axis=axis),)


@register("GatherGrad", MS)
def gather_grad(attrs, node):
    """Inputs (shape of the Gather input, indices, dY) -> dX: dY scatter-added at the gathered positions."""
    axis = attrs.get("axis", 0)

    def run(shape, indices, dy):
        dims = tuple(_ints(shape))
        a = axis + len(dims) if axis < 0 else axis
        dx = np.zeros(dims, dtype=dy.dtype)
        idx = indices.reshape(-1).astype(_INT64)
        idx = np.where(idx < 0, idx + dims[a], idx)
        outer, inner = math.prod(dims[:a]), math.prod(dims[a + 1:])
        # add.at accumulates repeated indices (a plain fancy-index += would keep only one of them).
        np.add.at(dx.reshape(outer, dims[a], inner), (slice(None), idx), dy.reshape(outer, idx.size, inner))
        return (dx,)

    return run


_CONSTANT_VALUES = {
    "value": None,
    "value_float": np.float32,
    "value_floats": np.float32,
    "value_int": _INT64,
    "value_ints": _INT64,
    "value_string": object,
    "value_strings": object,
}


@register("Constant")
def constant(attrs, node):
    given = [name for name in attrs if name in _CONSTANT_VALUES or name == "sparse_value"]
    if len(given) != 1 or given[0] == "sparse_value":
        raise ValueError(f"{node.name}: Constant needs exactly one dense value_* attribute, got {given}")
    value = np.array(attrs[given[0]], dtype=_CONSTANT_VALUES[given[0]])
    # The same array is handed out on every call; read-only so no kernel can corrupt it in place.
    value.flags.writeable = False
    return lambda: (value,)


@register("ConstantOfShape")
def constant_of_shape(attrs, node):
    value = np.asarray(attrs.get("value", np.zeros(1, dtype=np.float32)))
    if value.size != 1:
        raise ValueError(f"{node.name}: ConstantOfShape value must have one element, it has {value.size}")
    fill = value.reshape(-1)[0]
    return lambda shape: (np.full(tuple(_ints(shape)), fill, dtype=value.dtype),)


def _reduction(fn):
    """ReduceSum (axes input since opset 13) and ReduceMean (axes attribute until opset 17, input from 18)."""

    def factory(attrs, node):
        keepdims = bool(attrs.get("keepdims", 1))
        noop_with_empty_axes = attrs.get("noop_with_empty_axes", 0)
        fixed_axes = attrs.get("axes")

        def run(x, axes=None):
            axes = fixed_axes if axes is None else _ints(axes)
            if not axes:
                if noop_with_empty_axes:
                    return (x,)
                return (np.asarray(fn(x, axis=None, keepdims=keepdims)),)
            return (np.asarray(fn(x, axis=tuple(axes), keepdims=keepdims)),)

        return run

    return factory


@register("GlobalAveragePool")
def global_average_pool(attrs, node):
    # The mean over every spatial axis (2 onwards) of (N, C, ...), which stay as dimensions of size 1.
    return lambda x: (np.asarray(x.mean(axis=tuple(range(2, x.ndim)), keepdims=True, dtype=x.dtype)),)


@register("BroadcastGradientArgs", MS)
def broadcast_gradient_args(attrs, node):
    """(A's shape, B's shape) -> the axes of their broadcast along which A, and B, were broadcast (a missing
    leading axis or a 1 against more), last axis first as ORT lists them: what a gradient is summed over."""

    def run(a, b):
        a, b = _ints(a), _ints(b)
        rank = max(len(a), len(b))
        a_axes, b_axes = [], []
        for i in reversed(range(rank)):
            da = a[i - rank + len(a)] if i >= rank - len(a) else None
            db = b[i - rank + len(b)] if i >= rank - len(b) else None
            if da == db:
                continue
            if da is None or (da == 1 and db is not None):
                a_axes.append(i)
            elif db is None or db == 1:
                b_axes.append(i)
            else:
                raise ValueError(f"{node.name}: shapes {a} and {b} do not broadcast")
        return np.array(a_axes, _INT64), np.array(b_axes, _INT64)

    return run


register("ReduceSum")(_reduction(np.sum))
register("ReduceMean")(_reduction(np.mean))
