"""Training artifacts (training / eval / optimizer graphs, and ORT's checkpoint) from a forward ModelProto.

Our builder (``edge_lbp.core.gradients``, the default) writes the graphs as onnxruntime-training 1.19 writes them;
``gradients="ort"`` has ORT write them (the oracle the tests compare with). Facts about onnxruntime-training 1.19
both rely on:
- ``generate_artifacts`` with ``LossType.CrossEntropyLoss`` adds a graph input named ``labels`` (int64, shape
  (batch,)) and a ``SoftmaxCrossEntropyLoss`` node (mean reduction) on the model's single output.
- ``OptimType.SGD`` emits ``com.microsoft::SGDOptimizerV2`` (inputs: lr, params, grads): plain SGD, no momentum,
  no weight decay. ``OptimType.AdamW`` emits ``com.microsoft::AdamWOptimizer`` (betas 0.9/0.999, eps 1e-6,
  weight decay 0, bias correction on).
- Parameters named in neither ``requires_grad`` nor ``frozen_params`` stay graph initializers (constants); that is
  where BatchNormalization running statistics go. The training graph always normalises with batch statistics
  (``BatchNormInternal``) and never writes the running statistics back; the eval graph uses them as exported.
"""

import re
from pathlib import Path

from edge_lbp.core import ort_names
from edge_lbp.core.defaults import EXPORT_GRADIENTS, GRADIENTS, OPTIMIZERS
from edge_lbp.core.gradients import GradientError, build_eval_graph, build_optimizer_graph, build_training_graph

ARTIFACT_FILES = ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "checkpoint")


def parameter_names(model):
    """Float initializers that are parameters, in graph order (BatchNormalization running statistics excluded)."""
    import onnx

    running = {n.input[i] for n in model.graph.node if n.op_type == "BatchNormalization" for i in (3, 4)}
    return [t.name for t in model.graph.initializer
            if t.data_type == onnx.TensorProto.FLOAT and t.name not in running]


def generate_training_artifacts(model, out_dir, trainable, frozen, *, optimizer="adamw",
                                gradients=EXPORT_GRADIENTS):
    """Write training_model.onnx, eval_model.onnx, optimizer_model.onnx and (when ORT-training is installed)
    checkpoint into ``out_dir``.

    ``model`` is a forward ModelProto as returned by ``onnx_export.export_forward``/``load_onnx`` (one output, the
    logits); ``trainable`` and ``frozen``: parameter names (a method's ``split``); ``gradients``: one of
    ``GRADIENTS``: ``"own"`` builds every graph with ``edge_lbp.core.gradients`` (numpy and onnx only), ``"ort"``
    has onnxruntime-training's ``generate_artifacts`` write them (the oracle). Returns a dict with the artifact
    paths (``checkpoint`` None when none was written) and ``labels`` (the label input's name).
    Raises GradientError when the gradient builder cannot differentiate a node.
    """
    import onnx

    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    check_gradients(gradients)
    if len(model.graph.output) != 1:
        raise ValueError(f"the forward model must have one output (the logits), it has {len(model.graph.output)}")
    out = Path(out_dir)
    if gradients == "ort":
        out.mkdir(parents=True, exist_ok=True)
        _generate_ort_artifacts(model, out, trainable, frozen, optimizer)
    else:
        graphs = {"training_model.onnx": build_training_graph(model, trainable, frozen),
                  "eval_model.onnx": build_eval_graph(model, trainable, frozen),
                  "optimizer_model.onnx": build_optimizer_graph(optimizer)}
        out.mkdir(parents=True, exist_ok=True)
        for name, graph in graphs.items():
            onnx.save(graph, out / name)
        write_ort_checkpoint(model, trainable, frozen, out / "checkpoint")
    paths = {name: out / name for name in ARTIFACT_FILES}
    if not paths["checkpoint"].is_file():
        paths["checkpoint"] = None
    return {**paths, "labels": ort_names.LABELS}


def _generate_ort_artifacts(model, out, trainable, frozen, optimizer):
    import onnx
    from onnxruntime.training import artifacts

    optim = {"adamw": artifacts.OptimType.AdamW, "sgd": artifacts.OptimType.SGD}[optimizer]
    try:
        artifacts.generate_artifacts(model, requires_grad=list(trainable), frozen_params=list(frozen),
                                     loss=artifacts.LossType.CrossEntropyLoss, optimizer=optim,
                                     artifact_directory=out)
    except Exception as exc:
        raise translate_gradient_error(exc, model) from None
    eval_path = out / "eval_model.onnx"
    onnx.save(trim_inference_batchnorm_outputs(onnx.load(eval_path)), eval_path)


def write_ort_checkpoint(model, trainable, frozen, path):
    """ORT's checkpoint of ``model``'s parameters (what the ``ort`` engine loads) at ``path``, when
    onnxruntime-training is installed; returns whether it wrote one. Without it the artifact trains on the numba
    engine only (it reads params.safetensors)."""
    try:
        from onnxruntime.training import onnxblock
    except ImportError:  # not installed, or the inference package (no training API)
        return False
    # generate_artifacts' own split and order: the initializers in graph order.
    chosen = [[t for t in model.graph.initializer if t.name in set(names)] for names in (trainable, frozen)]
    onnxblock.save_checkpoint(tuple(chosen), Path(path))
    return True


def check_gradients(gradients):
    """A one-line ValueError unless ``gradients`` is one of ``GRADIENTS``."""
    if gradients not in GRADIENTS:
        raise ValueError(f"unknown gradient builder {gradients!r}; choose one of {', '.join(GRADIENTS)}")


def trim_inference_batchnorm_outputs(model):
    """Drop the running-statistics outputs of BatchNormalization nodes in inference mode (training_mode=0).

    ORT's eval-model builder switches training_mode to 0 but keeps the three outputs of the training-mode export,
    which ONNX shape inference rejects ("number of op outputs should be 1"), so the eval model would not load.
    """
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    used = {name for n in out.graph.node for name in n.input} | {o.name for o in out.graph.output}
    for node in out.graph.node:
        training = next((a.i for a in node.attribute if a.name == "training_mode"), 0)
        if node.op_type == "BatchNormalization" and not training and len(node.output) > 1:
            if used.intersection(node.output[1:]):
                raise ValueError(f"{node.name}: running-statistics outputs are consumed; cannot trim them")
            del node.output[1:]
    return out


def translate_gradient_error(exc, model):
    """ORT's gradient-builder failure (a long C++ enforce message) -> one GradientError line with node name and op.

    Exceptions that are not gradient-builder failures are returned unchanged.
    """
    text = str(exc)
    match = re.search(r"gradient builder has not been registered[^:]*:\s*(\S+?)(?:\s+for node\s+(\S+))?\s*$",
                      text, re.M)
    if not match:
        return exc
    op, node = match.group(1), match.group(2)
    if node is None:
        node = next((n.name for n in model.graph.node if n.op_type == op), "?")
    return GradientError(f"ONNX Runtime has no gradient for node {node!r} (op {op}); it cannot be trained through")
