"""Helpers every op-kernel family uses: error messages that name the node, which outputs a node's graph reads,
row views for row-wise Numba kernels, and float32 constants (Numba keeps float32 arithmetic only when every
operand is float32)."""
import numpy as np

from edge_lbp.core.ops import MICROSOFT as MS  # noqa: F401  (the domain of ORT's training and contrib ops)

ONE = np.float32(1)
ZERO = np.float32(0)
NO_BIAS = np.zeros(0, np.float32)  # a typed empty array where a fused kernel's bias is absent


def node_error(node, why: str) -> ValueError:
    return ValueError(f"{node.op_type} node {node.name!r}: {why}")


def wanted(node):
    """Which outputs the graph reads (an empty name is an omitted optional output)."""
    return tuple(bool(name) for name in node.output)


def flag(value) -> np.ndarray:
    """A bool[1] tensor, the form of the training ops' "updated" outputs."""
    return np.array([value], dtype=np.bool_)


def overwrites(reset) -> bool:
    """InPlaceAccumulatorV2's optional flag (and the fused ops' that replace it): true overwrites the buffer,
    false or absent adds to it."""
    return reset is not None and bool(reset.reshape(-1)[0])


def as_rows(x):
    """``x`` as a C-contiguous 2-D array of rows along its last axis (a view when ``x`` is contiguous)."""
    x = np.ascontiguousarray(x)
    return x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
