"""MaxPool, forward only: what a small CNN teacher's forward needs besides Conv, BatchNormalization, Relu and
GlobalAveragePool (a ResNet's stem pools 3 x 3 with stride 2; ``edge_lbp.teacher``).

Two spatial axes, NCHW; ``kernel_shape``, ``strides``, ``pads``, ``dilations``, ``ceil_mode`` and ``auto_pad`` as
ONNX defines them. Padding never wins a maximum (it is left out of the window, as -inf would be), and with
``ceil_mode`` a window that would start in the right or bottom padding is dropped (ONNX's and PyTorch's rule).
"""
import math

import numpy as np
from numba import njit, prange

from edge_lbp.runtime.kernels.common import node_error
from edge_lbp.runtime.registry import register


@njit(parallel=True, fastmath=True, cache=True)
def _max_pool(x, out_h, out_w, kh, kw, sh, sw, dh, dw, top, left):
    n, c, h, w = x.shape
    out = np.empty((n, c, out_h, out_w), np.float32)
    for plane in prange(n * c):
        image, channel = plane // c, plane % c
        src = x[image, channel]
        for i in range(out_h):
            for j in range(out_w):
                best = -np.inf
                for a in range(kh):
                    r = i * sh - top + a * dh
                    if 0 <= r < h:
                        for b in range(kw):
                            col = j * sw - left + b * dw
                            if 0 <= col < w and src[r, col] > best:
                                best = src[r, col]
                out[image, channel, i, j] = best
    return out


def _extent(size, kernel, stride, dilation, before, after, ceil_mode):
    """The output length of one axis."""
    span = (kernel - 1) * dilation + 1
    steps = (size + before + after - span) / stride
    out = (math.ceil(steps) if ceil_mode else math.floor(steps)) + 1
    if ceil_mode and (out - 1) * stride >= size + before:
        out -= 1  # the last window would start in the padding
    return out


def _auto_pads(mode, size, kernel, stride, dilation):
    """``(before, after)`` of one axis for ``auto_pad`` SAME_UPPER / SAME_LOWER (the extra one after / before)."""
    total = max(0, (math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size)
    small, large = total // 2, total - total // 2
    return (small, large) if mode == "SAME_UPPER" else (large, small)


@register("MaxPool")
def max_pool(attrs, node):
    kernel = list(attrs.get("kernel_shape", []))
    if len(kernel) != 2:
        raise node_error(node, f"MaxPool over {len(kernel)} spatial axes: the kernel pools two (N, C, H, W)")
    if len(node.output) > 1 and node.output[1]:
        raise node_error(node, "MaxPool's Indices output is not supported (a forward-only kernel)")
    strides = list(attrs.get("strides", [1, 1]))
    dilations = list(attrs.get("dilations", [1, 1]))
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    ceil_mode = bool(attrs.get("ceil_mode", 0))
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise node_error(node, f"auto_pad={auto_pad!r} is not an ONNX MaxPool padding")

    def run(x):
        if x.ndim != 4:
            raise node_error(node, f"MaxPool input of shape {x.shape}: the kernel pools (N, C, H, W)")
        spatial = x.shape[2:]
        if auto_pad.startswith("SAME"):
            axes = [_auto_pads(auto_pad, spatial[k], kernel[k], strides[k], dilations[k]) for k in range(2)]
            before, after = [a[0] for a in axes], [a[1] for a in axes]
        else:
            before, after = (pads[:2], pads[2:]) if auto_pad == "NOTSET" else ([0, 0], [0, 0])
        out = [_extent(spatial[k], kernel[k], strides[k], dilations[k], before[k], after[k], ceil_mode)
               for k in range(2)]
        return (_max_pool(np.ascontiguousarray(x, np.float32), *out, *kernel, *strides, *dilations, *before),)

    return run
