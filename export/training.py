"""ONNX Runtime training artifacts (training / eval / optimizer graphs + checkpoint) from a forward ModelProto.

Facts about onnxruntime-training 1.19 this module relies on:
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
from edge_lbp.core.defaults import OPTIMIZERS
from edge_lbp.runtime.lora import LORA_A, LORA_B

TRAINABLE_CHOICES = ("all", "last:K", "bias", "head", "lora:R")
ARTIFACT_FILES = ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "checkpoint")

# Parameter names (torch state_dict names survive the export as initializer names): export.models and timm name
# blocks ``blocks.<i>.`` (timm's Swin ``layers.<s>.blocks.<b>.``), heads ``head.``/``head_dist.`` and the final
# norm ``norm.``/``fc_norm.``; Hugging Face ``<model>.layers.<i>.`` (older releases ``encoder.layer.<i>.``, Swin
# ``encoder.layers.<s>.blocks.<b>.``), ``classifier.`` (DeiT: ``cls_classifier.``, ``distillation_classifier.``)
# and ``<model>.layernorm.``.
_BLOCK_INDEX = re.compile(r"(?:^|\.)(?:blocks|layers|layer)\.(\d+)(?=\.)")
HEAD_PREFIXES = ("head.", "head_dist.", "classifier.", "cls_classifier.", "distillation_classifier.")
_FINAL_NORM = re.compile(r"(?:norm|fc_norm|[A-Za-z_]+\.layernorm)\.")
ADAPTER_SUFFIXES = (f".{LORA_A}", f".{LORA_B}")
_NORM_OPS = ("LayerNormalization", "BatchNormalization")


class GradientError(ValueError):
    """ORT could not build the gradient graph; the message names the node and its op."""


def parameter_names(model):
    """Float initializers that are parameters, in graph order (BatchNormalization running statistics excluded)."""
    import onnx

    running = {n.input[i] for n in model.graph.node if n.op_type == "BatchNormalization" for i in (3, 4)}
    return [t.name for t in model.graph.initializer
            if t.data_type == onnx.TensorProto.FLOAT and t.name not in running]


def block_key(name: str):
    """The block a parameter belongs to: the indices of the ``blocks``/``layers``/``layer`` components of its
    name (``(stage, block)`` when nested), or None."""
    return tuple(int(m.group(1)) for m in _BLOCK_INDEX.finditer(name)) or None


def last_blocks(names, count: int):
    """The parameters ``last:K`` trains: the last ``count`` blocks', the final norm's and the head's. A stage's own
    parameters (Swin's patch merging, ``layers.<s>.downsample``: a shorter key than its blocks') are not a block."""
    keys = {block_key(n) for n in names} - {None}
    if not keys:
        raise ValueError("last:K needs blocks named 'blocks.<i>.', 'layers.<i>.' or 'layer.<i>.' and the model has "
                         "none")
    depth = max(map(len, keys))
    kept = set(sorted(k for k in keys if len(k) == depth)[-count:])
    return {n for n in names if n.startswith(HEAD_PREFIXES) or _FINAL_NORM.match(n) or block_key(n) in kept}


def split_parameters(model, trainable="all"):
    """(requires_grad, frozen) parameter-name lists for a trainable-set choice.

    - ``all``: every parameter.
    - ``last:K``: the last K transformer blocks, the final norm and the head (:func:`last_blocks`).
    - ``bias``: every bias, every normalisation scale/shift, and the head.
    - ``head``: the classifier only (``head.`` and, for DeiT, ``head_dist.``; Hugging Face's ``classifier.``).
    - ``lora:R``: the LoRA adapters (``export.lora``, added before the export) and the head.
    """
    names = parameter_names(model)
    head = {n for n in names if n.startswith(HEAD_PREFIXES)}
    if trainable == "all":
        chosen = set(names)
    elif trainable == "head":
        chosen = head
    elif re.fullmatch(r"lora:[1-9]\d*", trainable):
        chosen = head | {n for n in names if n.endswith(ADAPTER_SUFFIXES)}
    elif trainable == "side":  # the side network of edge_lbp.export.side; the backbone stays frozen
        chosen = {n for n in names if n.startswith("side.")}
    elif trainable == "bias":
        norms = {n.input[i] for n in model.graph.node if n.op_type in _NORM_OPS for i in (1, 2) if i < len(n.input)}
        chosen = head | {n for n in names if n.endswith(".bias") or n in norms}
    elif re.fullmatch(r"last:[1-9]\d*", trainable):
        chosen = last_blocks(names, int(trainable.split(":")[1]))
    else:
        raise ValueError(f"unknown trainable set {trainable!r}; choose one of {', '.join(TRAINABLE_CHOICES)}")
    if not chosen:
        raise ValueError(f"trainable set {trainable!r} selects no parameter of this model")
    return [n for n in names if n in chosen], [n for n in names if n not in chosen]


def generate_training_artifacts(model, out_dir, *, trainable="all", optimizer="adamw"):
    """Write training_model.onnx, eval_model.onnx, optimizer_model.onnx and checkpoint into ``out_dir``.

    ``model`` is a forward ModelProto as returned by ``onnx_export.export_forward``/``load_onnx`` (one output, the
    logits). Returns a dict with the artifact paths, ``requires_grad``, ``frozen`` and ``labels`` (input name).
    Raises GradientError when ORT cannot differentiate a node.
    """
    import onnx
    from onnxruntime.training import artifacts

    optim = {"adamw": artifacts.OptimType.AdamW, "sgd": artifacts.OptimType.SGD}.get(optimizer)
    if optim is None:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if len(model.graph.output) != 1:
        raise ValueError(f"the forward model must have one output (the logits), it has {len(model.graph.output)}")
    requires_grad, frozen = split_parameters(model, trainable)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        artifacts.generate_artifacts(model, requires_grad=requires_grad, frozen_params=frozen,
                                     loss=artifacts.LossType.CrossEntropyLoss, optimizer=optim,
                                     artifact_directory=out)
    except Exception as exc:
        raise translate_gradient_error(exc, model) from None
    eval_path = out / "eval_model.onnx"
    onnx.save(trim_inference_batchnorm_outputs(onnx.load(eval_path)), eval_path)
    paths = {name: out / name for name in ARTIFACT_FILES}
    return {**paths, "requires_grad": requires_grad, "frozen": frozen, "labels": ort_names.LABELS}


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
