"""The session contract, split as ONNX Runtime's training API splits it: what every engine offers, and what it
declares it offers beyond that.

A session is an artifact opened for training by one engine (``numba`` in :mod:`edge_lbp.runtime.numba_session`,
``ort`` in :mod:`edge_lbp.runtime.ort_session`). Like ORT's ``Module`` it runs the graphs, and it holds the two
other parts:

- ``session.state`` (:class:`TrainingState`, ORT's ``CheckpointState``): what a checkpoint holds: the parameters,
  the optimizer's step and moments, and a training method's own state as named entries (``energy:r``'s bases);
- ``session.optimizer`` (:class:`Optimizer`, ORT's ``Optimizer``): the learning rate, the optimizer's ``kind``,
  and the update, which applies a gradient scale (a micro-batch mean, clipping) as that kind needs.

Both engines start from the parameters in the artifact's tensor file and follow ORT's training API step for step: a
training step runs the training graph (gradients overwrite, or add to, the accumulation buffers), then the
optimizer graph with the step count plus one. What only some engines can do is declared in :class:`Capabilities`;
callers (the trainer, the profiler, ``plan``) read the declaration instead of probing, and an undeclared capability
raises :class:`Unsupported` with one line naming the engine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from edge_lbp.core.artifact import Artifact, model_input

Inputs = Union[np.ndarray, Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class Capabilities:
    gradients: bool  # gradients(): the live gradient buffers (their norm decides clipping; a caller may scale them)
    optimizer_state: bool  # state.optimizer_state() / set_optimizer_state(): step count and moments (checkpoints)
    forward_end_hook: bool  # forward_backward(on_forward_end=...) is called between forward and backward
    node_trace: bool  # trace spans per executed node (else one span per graph call)
    memory_estimate: bool  # the memory probe (step_bytes, eval_bytes, held_at_backward_start, node_output_bytes)


class Unsupported(ValueError):
    """The engine does not offer what was asked (see ``Session.capabilities``)."""


class NonFiniteStep(ValueError):
    """A step's loss or gradients are NaN or infinite; it was rejected before the optimizer ran, so the parameters
    and optimizer moments are those of before the step."""


class TrainingState:
    """What a checkpoint holds: the parameters, the optimizer's step and moments, and the training method's own
    state (``method_state``: named entries of arrays, e.g. ``bases``, the ``energy:r`` layers' averages and
    selections). ``trained``: the names of the parameters that training changes."""

    def __init__(self, engine: str, trained):
        self.engine, self.trained = engine, list(trained)

    def parameters(self) -> Dict[str, np.ndarray]:
        """Copies of every parameter, trainable and frozen."""
        raise NotImplementedError

    def set_parameters(self, mapping: Mapping[str, np.ndarray]) -> None:
        """Overwrite the named parameters (any subset; names and shapes are checked)."""
        raise NotImplementedError

    def optimizer_state(self) -> dict:
        """``{"step": n, moment: {parameter: array}}``: copies of everything the optimizer carries between steps."""
        raise Unsupported(f"the {self.engine} engine does not expose its optimizer moments")

    def set_optimizer_state(self, state: Mapping) -> None:
        raise Unsupported(f"the {self.engine} engine does not expose its optimizer moments")

    def method_state(self) -> Dict[str, Dict[str, np.ndarray]]:
        """``{entry: {key: array}}``: copies of what the training method carries between steps ({} when nothing)."""
        return {}

    def set_method_state(self, state: Mapping) -> None:
        """Restore every entry ``method_state`` names (a missing one raises KeyError)."""

    @staticmethod
    def _check_parameters(mapping, current) -> None:
        unknown = [n for n in mapping if n not in current]
        if unknown:
            raise KeyError(f"unknown parameters {unknown[:5]}")
        for name, value in mapping.items():
            if np.shape(value) != current[name].shape:
                raise ValueError(f"parameter {name}: shape {np.shape(value)}, expected {current[name].shape}")


class Optimizer:
    """The update: ``kind`` (``adamw`` or ``sgd``, the artifact's optimizer graph), the learning rate ``lr`` of
    the next updates (default: the artifact's) and ``moments``, the names of the per-parameter arrays it keeps."""

    moments: tuple = ()

    def __init__(self, manifest: Mapping):
        record = manifest.get("optimizer", {})
        self.kind = record.get("name")
        self._lr = float(record.get("lr", 1e-3))
        # The schedule's factor of its peak learning rate, for what else follows the schedule (the ZO part).
        self.schedule_factor = 1.0

    @property
    def lr(self) -> float:
        return self._lr

    def set_learning_rate(self, lr: float, *, peak: Optional[float] = None) -> None:
        """``lr`` for the next updates; ``peak``: the schedule's peak ``lr`` is a fraction of (default: ``lr``),
        which whatever else follows the schedule (the ZO part of zo-hybrid) is scaled by."""
        self._lr = float(lr)
        self.schedule_factor = 1.0 if peak is None else self._lr / peak

    def step(self, *, gradient_scale: float = 1.0, trace: Optional[list] = None) -> None:
        """One update from the gradient buffers times ``gradient_scale`` (the mean of summed micro-batches,
        clipping), with spans of phase ``optimizer`` in ``trace``."""
        raise NotImplementedError


class Session:
    """One artifact, one engine, as ORT's ``Module``: steps, evaluation, gradients, the memory probe and the
    capabilities; its ``state`` (:class:`TrainingState`) and ``optimizer`` (:class:`Optimizer`) are set by the
    engine. ``method_options``: the options on the device of the artifact's method (a record with ``record()``:
    zo-hybrid's ``edge_lbp.core.zo.ZOConfig``), else None."""

    engine = "?"
    capabilities = Capabilities(gradients=False, optimizer_state=False, forward_end_hook=False, node_trace=False,
                                memory_estimate=False)
    method_options = None
    state: TrainingState
    optimizer: Optimizer

    def __init__(self, artifact: Artifact, seed: int = 0):
        self.artifact = artifact
        # What training-mode randomness (Dropout, drop-path) draws from, where the engine controls it (numba).
        self.seed = int(seed)

    def forward_backward(self, inputs: Inputs, labels, *, accumulate: bool = False, trace: Optional[list] = None,
                         on_forward_end: Optional[Callable[[], None]] = None) -> float:
        """Loss of a batch; its gradients overwrite the gradient buffers, or are added to them (``accumulate``).

        ``trace``, when given, receives ``(phase, op_type, node, start, end)`` spans (``time.perf_counter``): per
        node with phases ``forward`` and ``backward`` where ``capabilities.node_trace``, else one span per graph
        call with phase ``forward_backward``. ``on_forward_end`` is called once the forward nodes are done, where
        ``capabilities.forward_end_hook`` (an engine that runs both as one call never calls it).
        """
        raise NotImplementedError

    def train_step(self, inputs: Inputs, labels, trace: Optional[list] = None) -> float:
        """Forward, backward and one optimizer update; returns the loss of this batch. A step whose loss or
        gradients are not finite raises :class:`NonFiniteStep` before the optimizer runs."""
        loss = self.forward_backward(inputs, labels, trace=trace)
        self.check_finite(loss)
        self.optimizer.step(trace=trace)
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

    def gradients(self) -> Dict[str, np.ndarray]:
        """The gradient buffers of the trainable parameters, live: scaling them in place changes the next update."""
        raise Unsupported(f"the {self.engine} engine keeps its gradients out of reach (no gradient buffers)")

    # -- the memory probe (capabilities.memory_estimate): zeros in, counters and selections untouched ------------
    def step_bytes(self, batch: int) -> int:
        """Bytes a training step at ``batch`` allocates on top of the parameters, gradients and moments."""
        raise Unsupported(f"the {self.engine} engine cannot estimate a step's memory")

    def eval_bytes(self, batch: int) -> int:
        """What an evaluation step at ``batch`` allocates (its intermediates' peak)."""
        raise Unsupported(f"the {self.engine} engine cannot estimate a step's memory")

    def held_at_backward_start(self, batch: int) -> List[Tuple[str, int]]:
        """``(node, bytes)`` for every node of the training graph in order: what the outputs it produced still
        hold when the backward starts, in a training step at ``batch``."""
        raise Unsupported(f"the {self.engine} engine cannot estimate a step's memory")

    def node_output_bytes(self, prefix: str, batch: int) -> int:
        """Bytes of the first output of the last eval-graph node whose name starts with ``prefix`` (0: none), at
        ``batch``."""
        raise Unsupported(f"the {self.engine} engine cannot estimate a step's memory")

    def extra_state_bytes(self) -> int:
        """What the training method holds beyond gradients and moments (zo-hybrid: one parameter-sized draw)."""
        return 0

    # -- shared by the engines and the method sessions that extend them -----------------------------------------
    def feeds(self, inputs: Inputs) -> Dict[str, np.ndarray]:
        """The graph's inputs for a batch (an array: the image input), float32 and contiguous, shape-checked."""
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
    def batch_size(feeds) -> int:
        return len(next(iter(feeds.values())))

    def label_array(self, labels, batch: int) -> np.ndarray:
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
