"""Our gradient builder: forward ONNX graph -> training, eval and optimizer graphs (numpy and onnx only).

``build_training_graph(model, trainable, frozen)`` and ``build_eval_graph(model, trainable, frozen)`` return what
onnxruntime-training's artifact generator returns as its training and eval models, with the same names
(``edge_lbp.core.ort_names``), using only ops the numba engine runs. A rule per forward op lives in ``linear``,
``pointwise`` or ``shape`` (see ``registry``).
"""
from edge_lbp.core.gradients import linear, pointwise, shape  # noqa: F401  (registers the rules)
from edge_lbp.core.gradients.builder import build_eval_graph, build_training_graph
from edge_lbp.core.gradients.optimizer import build_optimizer_graph
from edge_lbp.core.gradients.registry import GradientError

__all__ = ["build_eval_graph", "build_optimizer_graph", "build_training_graph", "GradientError"]
