"""The session contract: what every engine offers, and what it declares it offers beyond that.

A session is an artifact opened for training by one engine (``numba`` in :mod:`edge_lbp.runtime.numba_session`,
``ort`` in :mod:`edge_lbp.runtime.ort_session`). Both start from the parameters in the artifact's tensor file and
follow ONNX Runtime's training API step for step: a training step runs the training graph (gradients overwrite,
or add to, the accumulation buffers), then the optimizer graph with the step count plus one.

Every session runs steps, evaluates, and reads and writes parameters and the learning rate. What only some engines
can do is declared in :class:`Capabilities`; callers (the trainer, the profiler) read the declaration instead of
probing, and an undeclared capability raises :class:`Unsupported` with one line naming the engine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Union

import numpy as np

from edge_lbp.core.artifact import Artifact, model_input

Inputs = Union[np.ndarray, Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class Capabilities:
    gradients: bool  # gradients(): the live gradient buffers, which the caller may scale in place (clipping)
    optimizer_state: bool  # optimizer_state() / set_optimizer_state(): step count and moments (checkpoints)
    forward_end_hook: bool  # forward_backward(on_forward_end=...) is called between forward and backward
    node_trace: bool  # trace spans per executed node (else one span per graph call)
    memory_estimate: bool  # step_bytes(batch): what a training step allocates beyond the parameters and state


class Unsupported(ValueError):
    """The engine does not offer what was asked (see ``Session.capabilities``)."""


class NonFiniteStep(ValueError):
    """A step's loss or gradients are NaN or infinite; it was rejected before the optimizer ran, so the parameters
    and optimizer moments are those of before the step."""


class Session:
    """One artifact, one engine: steps, evaluation, parameters, learning rate (``lr``), and the capabilities."""

    engine = "?"
    capabilities = Capabilities(gradients=False, optimizer_state=False, forward_end_hook=False, node_trace=False,
                                memory_estimate=False)

    def __init__(self, artifact: Artifact, seed: int = 0):
        self.artifact = artifact
        # What training-mode randomness (Dropout, drop-path) draws from, where the engine controls it (numba).
        self.seed = int(seed)
        self.lr = float(artifact.manifest.get("optimizer", {}).get("lr", 1e-3))
        # The schedule's factor of the peak learning rate, for what else follows it (the ZO part of zo-hybrid).
        self.schedule_factor = 1.0

    @property
    def trained(self):
        """The parameters that training changes: the artifact's trainable ones (and, for zo-hybrid, the ZO ones)."""
        return self.artifact.trainable

    def forward_backward(self, inputs: Inputs, labels, *, accumulate: bool = False, trace: Optional[list] = None,
                         on_forward_end: Optional[Callable[[], None]] = None) -> float:
        """Loss of a batch; its gradients overwrite the gradient buffers, or are added to them (``accumulate``).

        ``trace``, when given, receives ``(phase, op_type, node, start, end)`` spans (``time.perf_counter``): per
        node with phases ``forward`` and ``backward`` where ``capabilities.node_trace``, else one span per graph
        call with phase ``forward_backward``. ``on_forward_end`` is called once the forward nodes are done, where
        ``capabilities.forward_end_hook`` (an engine that runs both as one call never calls it).
        """
        raise NotImplementedError

    def optimizer_step(self, trace: Optional[list] = None) -> None:
        """One optimizer update from the gradient buffers (spans with phase ``optimizer``)."""
        raise NotImplementedError

    def train_step(self, inputs: Inputs, labels, trace: Optional[list] = None) -> float:
        """Forward, backward and one optimizer update; returns the loss of this batch. A step whose loss or
        gradients are not finite raises :class:`NonFiniteStep` before the optimizer runs."""
        loss = self.forward_backward(inputs, labels, trace=trace)
        self.check_finite(loss)
        self.optimizer_step(trace=trace)
        return loss

    def check_finite(self, loss: Optional[float] = None, *, gradients: bool = True) -> None:
        """Raise :class:`NonFiniteStep` when ``loss`` (if given) or, with ``gradients`` and where the engine exposes
        them, a gradient is NaN or infinite. A gradient's sum is finite exactly when all its entries are (barring
        a float32 overflow of the sum itself, which only gradients near 1e38 reach: a diverged step all the same).
        """
        if loss is not None and not math.isfinite(loss):
            raise NonFiniteStep(f"the loss is {loss}; step rejected, parameters unchanged")
        if gradients and self.capabilities.gradients:
            for name, grad in self.gradients().items():
                if not math.isfinite(float(grad.sum())):
                    raise NonFiniteStep(f"the gradient of {name} is not finite; step rejected, parameters "
                                        "unchanged")

    def eval_step(self, inputs: Inputs) -> np.ndarray:
        """Logits for a batch, with the current parameters."""
        raise NotImplementedError

    def parameters(self) -> Dict[str, np.ndarray]:
        """Copies of every parameter, trainable and frozen."""
        raise NotImplementedError

    def set_parameters(self, mapping: Mapping[str, np.ndarray]) -> None:
        """Overwrite the named parameters (any subset; names and shapes are checked)."""
        raise NotImplementedError

    def gradients(self) -> Dict[str, np.ndarray]:
        """The gradient buffers of the trainable parameters, live: scaling them in place changes the next update."""
        raise Unsupported(f"the {self.engine} engine keeps its gradients out of reach (no gradient buffers)")

    def step_bytes(self, batch: int) -> int:
        """Bytes a training step at ``batch`` allocates on top of the parameters, gradients and moments."""
        raise Unsupported(f"the {self.engine} engine cannot estimate a step's memory")

    def optimizer_state(self) -> dict:
        """``{"step": n, moment: {parameter: array}}``: copies of everything the optimizer carries between steps."""
        raise Unsupported(f"the {self.engine} engine does not expose its optimizer moments")

    def set_optimizer_state(self, state: Mapping) -> None:
        raise Unsupported(f"the {self.engine} engine does not expose its optimizer moments")

    # -- shared by the engines -----------------------------------------------------------------------------------
    def _feeds(self, inputs: Inputs) -> Dict[str, np.ndarray]:
        if not isinstance(inputs, Mapping):
            inputs = {self.artifact.input_name: inputs}
        feeds = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()}
        image = feeds.get(self.artifact.input_name)
        expected = model_input(self.artifact.manifest)["shape"][1:]
        if image is not None and (image.ndim != len(expected) + 1 or not image.shape[0] or any(
                isinstance(e, int) and e != d for e, d in zip(expected, image.shape[1:]))):
            raise ValueError(f"inputs of shape {image.shape}; the model takes (batch, {', '.join(map(str, expected))})"
                             " with batch >= 1")
        return feeds

    @staticmethod
    def _batch(feeds) -> int:
        return len(next(iter(feeds.values())))

    def _labels(self, labels, batch: int) -> np.ndarray:
        """Class indices, one per sample, in ``[0, classes)``: anything else would train silently on the wrong
        target (numpy reads -1 as the last class, and a cast truncates 2.7 to 2)."""
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iu":
            raise ValueError(f"labels of dtype {labels.dtype}: pass integer class indices"
                             + (" (one-hot rows? take their argmax)" if labels.ndim == 2 else ""))
        if labels.shape != (batch,):
            raise ValueError(f"labels of shape {labels.shape} for a batch of {batch}: pass one class index per sample"
                             + (" (one-hot rows? take their argmax)" if labels.ndim == 2 else ""))
        classes = self.artifact.logits["shape"][-1]
        if labels.size and (labels.min() < 0 or (isinstance(classes, int) and labels.max() >= classes)):
            raise ValueError(f"labels range from {labels.min()} to {labels.max()}; the model has {classes} classes "
                             f"(0..{classes - 1 if isinstance(classes, int) else 'C-1'})")
        return np.ascontiguousarray(labels, dtype=np.int64)

    @staticmethod
    def _check_parameters(mapping, current) -> None:
        unknown = [n for n in mapping if n not in current]
        if unknown:
            raise KeyError(f"unknown parameters {unknown[:5]}")
        for name, value in mapping.items():
            if np.shape(value) != current[name].shape:
                raise ValueError(f"parameter {name}: shape {np.shape(value)}, expected {current[name].shape}")
