"""How ONNX Runtime training (1.19) names what it generates: the one place the exporter, the engines and the
planner read these facts from, so a change of gradient builder is a change here.

- Every backward node of a forward node ``F`` is named ``F_Grad/<...>``; the loss gradient and the gradient
  accumulation (``AccumulateGrad...``, ``InPlaceAccumulatorV2``) are not.
- The gradient of parameter ``p`` is tensor ``p_grad``; it accumulates into the graph input
  ``p_grad.accumulation.buffer``, and the input ``lazy_reset_grad`` (bool[1]) says overwrite instead of add.
- The optimizer graph reads ``learning_rate``, ``step`` (1-based), the sequences ``params`` and ``gradients``, and
  one sequence per moment named ``<first|second>_order_moments``.
- The cross-entropy loss adds the graph input ``labels`` (int64, shape (batch,)).
"""
from edge_lbp.core import ops

GRAD_SCOPE = "_Grad/"
ACCUMULATE_PREFIX = "AccumulateGrad"
LAZY_RESET = "lazy_reset_grad"
LABELS = "labels"
MOMENT_SUFFIX = "_order_moments"
# Backward ops outside the ``F_Grad/`` scopes: the loss gradient, ORT's accumulator and the engine's fused ones.
_BACKWARD_OPS = ("SoftmaxCrossEntropyLossGrad", "InPlaceAccumulatorV2", ops.GEMM_ACCUMULATE,
                 ops.MATMUL_GRAD_ACCUMULATE, ops.BIAS_GELU_GRAD_SUM, ops.ATTENTION_GRAD, *ops.GRAD_OPS)


def gradient(param: str) -> str:
    return f"{param}_grad"


def accumulation_buffer(param: str) -> str:
    return f"{param}_grad.accumulation.buffer"


def accumulation_output(param: str) -> str:
    """The accumulator's output (bool[1], 'updated'): the training graph's outputs after the loss."""
    return f"{param}_grad.accumulation.out"


def forward_node_of(node_name: str):
    """The forward node a backward node belongs to (``F`` of ``F_Grad/...``), or None."""
    return node_name.split(GRAD_SCOPE)[0] if GRAD_SCOPE in node_name else None


def is_moment(feed: str) -> bool:
    return feed.endswith(MOMENT_SUFFIX)


def moments(optimizer_graph) -> tuple:
    """The moment sequences an optimizer graph's update reads, in input order (SGD's graph declares
    ``first_order_moments`` and never reads it)."""
    read = {i for node in optimizer_graph.graph.node for i in node.input}
    return tuple(i.name for i in optimizer_graph.graph.input if i.name in read and is_moment(i.name))


def backward_phase(node_name: str, op_type: str) -> str:
    """``forward`` or ``backward`` for a node of a training graph."""
    backward = GRAD_SCOPE in node_name or op_type in _BACKWARD_OPS or node_name.startswith(ACCUMULATE_PREFIX)
    return "backward" if backward else "forward"
