"""SoftmaxCrossEntropyLoss and its gradient (com.microsoft::SoftmaxCrossEntropyLossGrad).

Scores are ``(N, C)`` or ``(N, C, d1, ..., dk)`` with labels ``(N, d1, ..., dk)``; the work is done on rows of
classes (the class axis moved last). The tensors are a batch of logits, so plain numpy is enough.
"""
import numpy as np

from edge_lbp.runtime.kernels.common import MS, node_error
from edge_lbp.runtime.registry import register

REDUCTIONS = ("none", "sum", "mean")


def _class_rows(scores):
    """``(N, C, d...)`` -> ``(N * d..., C)`` (a view for 2-D scores)."""
    if scores.ndim == 2:
        return np.ascontiguousarray(scores)
    return np.ascontiguousarray(np.moveaxis(scores, 1, -1)).reshape(-1, scores.shape[1])


def _class_layout(rows, scores_shape):
    """Inverse of :func:`_class_rows`."""
    if len(scores_shape) == 2:
        return rows
    moved = rows.reshape((scores_shape[0],) + scores_shape[2:] + (scores_shape[1],))
    return np.ascontiguousarray(np.moveaxis(moved, -1, 1))


class _Targets:
    """Per-row label and per-row weight (0 for an ignored label)."""

    def __init__(self, attrs, node, weight_input):
        self.reduction = attrs.get("reduction", "mean")
        if self.reduction not in REDUCTIONS:
            raise node_error(node, f"reduction={self.reduction!r} is not one of {REDUCTIONS}")
        self.ignore_index = attrs.get("ignore_index")
        self.weighted = len(node.input) > weight_input and bool(node.input[weight_input])

    def __call__(self, labels, class_weights):
        labels = labels.reshape(-1)
        if self.ignore_index is not None:
            kept = labels != self.ignore_index
            labels = np.where(kept, labels, 0)  # any valid class: the row's weight is zeroed below
        weights = class_weights[labels] if self.weighted else np.ones(len(labels), np.float32)
        if self.ignore_index is not None:
            weights = weights * kept
        return labels, weights


def _log_softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    z -= np.log(np.exp(z).sum(axis=1, keepdims=True))
    return z


@register("SoftmaxCrossEntropyLoss")
def softmax_cross_entropy_loss(attrs, node):
    targets = _Targets(attrs, node, weight_input=2)
    with_log_prob = len(node.output) > 1 and bool(node.output[1])

    def run(scores, labels, class_weights=None):
        log_prob = _log_softmax(_class_rows(scores))
        rows, weights = targets(labels, class_weights)
        losses = -log_prob[np.arange(len(rows)), rows] * weights
        if targets.reduction == "none":
            loss = losses.reshape(labels.shape)
        elif targets.reduction == "sum":
            loss = np.float32(losses.sum())
        else:
            loss = np.float32(losses.sum() / weights.sum())
        out = (np.asarray(loss, np.float32),)
        if with_log_prob:
            out += (_class_layout(log_prob, scores.shape),)
        return out

    return run


@register("SoftmaxCrossEntropyLossGrad", MS)
def softmax_cross_entropy_loss_grad(attrs, node):
    """Inputs dY, log_prob, label, [weight]; output d_logits."""
    if len(node.input) > 4 and any(node.input[4:]):
        raise node_error(node, "inputs after 'weight' are not supported")
    targets = _Targets(attrs, node, weight_input=3)

    def run(dy, log_prob, labels, class_weights=None):
        grad = np.exp(_class_rows(log_prob))
        rows, weights = targets(labels, class_weights)
        grad[np.arange(len(rows)), rows] -= np.float32(1)
        if targets.reduction == "none":
            weights = weights * dy.reshape(-1)
        else:
            weights = weights * (dy if targets.reduction == "sum" else dy / weights.sum())
        grad *= weights.astype(np.float32)[:, None]
        return (_class_layout(grad, log_prob.shape),)

    return run
