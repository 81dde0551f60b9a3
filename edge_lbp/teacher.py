"""A teacher on the device: an ONNX classifier that the device engine runs forward on the student's batches.

``Teacher(path, student)`` opens an inference model (``train --export-onnx`` writes one: an adapted model, a
bigger ViT, a small CNN) for the student whose artifact manifest is ``student``. ``logits(x)`` takes a batch as
the student gets it (float32 NCHW, normalised as the student's manifest records, augmented or not) and returns the
teacher's logits on the same images; ``labels(x)`` their argmax (hard distillation's targets) and
``probabilities(x, temperature)`` their softmax at a temperature (soft distillation's).

The same images, fed as the teacher expects: a model that edge_lbp wrote says in its metadata
(``edge_lbp.core.inference_metadata``) how it is fed, so the student's normalisation is undone and the teacher's
applied (one affine map per channel), or, for a model with its preprocessing in the graph, the pixels are given
as uint8 NHWC. A model without that metadata gets the student's batch as it is. The teacher must take the
student's image size (there is no resizing between them) and have as many outputs as the student has classes.

Only the forward graph is loaded, with the engine's load-time passes, as the evaluation does: no backward graph,
Dropout passes its input through and BatchNormalization uses its running statistics as the file records them.
"""
from __future__ import annotations

import json
from pathlib import Path
import numpy as np

from edge_lbp.core import inference_metadata
from edge_lbp.core.artifact import logits_output, model_input, normalization

_ALL = "edge_lbp.preprocessing"


class Teacher:
    def __init__(self, path, student: dict):
        import onnx
        from google.protobuf.message import DecodeError

        from edge_lbp.runtime.graph import Graph
        from edge_lbp.runtime.passes import training_passes

        self.path = Path(path)
        try:
            model = onnx.load(str(self.path))
        except (OSError, DecodeError) as err:
            raise ValueError(f"{self.path}: not a readable ONNX model ({type(err).__name__}: {err})") from None
        graph = model.graph
        if len(graph.output) != 1:
            raise ValueError(f"{self.path}: a teacher has one output (its logits); this model has {len(graph.output)}")
        params = {t.name for t in graph.initializer}
        inputs = [i for i in graph.input if i.name not in params]
        if len(inputs) != 1:
            raise ValueError(f"{self.path}: a teacher takes one input (the images); this model takes {len(inputs)}")
        self._input = inputs[0].name
        meta = {p.key: p.value for p in model.metadata_props}
        shape = model_input(student)["shape"]
        self._feed = _feeder(self.path, meta, shape, normalization(student))
        self.classes = logits_output(student)["shape"][-1]
        self._graph = Graph(training_passes(model), name=f"teacher {self.path.name}")
        self.described = _ALL in meta  # False: fed the student's batch as it is

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The teacher's logits, float32 ``(N, classes)``, on the student's batch ``x``."""
        logits = np.asarray(self._graph.run({self._input: self._feed(x)})[0], np.float32)
        if logits.ndim != 2 or logits.shape[0] != len(x) or logits.shape[1] != self.classes:
            raise ValueError(f"{self.path}: the teacher returned {tuple(logits.shape)} for a batch of {len(x)}; "
                             f"the student has {self.classes} classes")
        return logits

    def labels(self, x: np.ndarray) -> np.ndarray:
        return self.logits(x).argmax(axis=1).astype(np.int64)

    def probabilities(self, x: np.ndarray, temperature: float = 1.0) -> np.ndarray:
        if not temperature > 0:
            raise ValueError(f"the temperature must be > 0, got {temperature}")
        z = self.logits(x).astype(np.float64) / temperature
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


def _feeder(path, meta: dict, shape, student_norm: dict):
    """``x`` (the student's float32 NCHW batch) -> the teacher's input."""
    if _ALL not in meta:
        return lambda x: x
    try:
        size = json.loads(meta["edge_lbp.input_size"])
        teacher_norm = {k: json.loads(meta[f"edge_lbp.{k}"]) for k in ("mean", "std", "input_range")}
    except (KeyError, ValueError) as err:
        raise ValueError(f"{path}: incomplete edge_lbp metadata ({err})") from None
    if list(size) != list(shape[2:]):
        raise ValueError(f"{path}: the teacher takes {size[0]} x {size[1]} images, the student {shape[2]} x "
                         f"{shape[3]}: export the teacher at the student's size")
    pixels = _to_pixels(student_norm, shape[1])
    if meta[_ALL] == inference_metadata.IN_GRAPH:
        # The student's pixels were uint8 before normalising: rounding gives them back exactly.
        return lambda x: np.ascontiguousarray(np.clip(np.rint(pixels(x)), 0, 255).astype(np.uint8)
                                              .transpose(0, 2, 3, 1))
    scale, shift = _from_pixels(teacher_norm, shape[1])
    return lambda x: (pixels(x) * scale + shift).astype(np.float32)


def _per_channel(values, channels: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(values, np.float64), (channels,)).reshape(1, channels, 1, 1)


def _to_pixels(norm: dict, channels: int):
    """Normalised NCHW -> pixels 0..255 (float64), undoing ``data.normalize``."""
    low, high = norm["input_range"]
    mean, std = _per_channel(norm["mean"], channels), _per_channel(norm["std"], channels)
    return lambda x: ((x.astype(np.float64) * std + mean) - low) * (255.0 / (high - low))


def _from_pixels(norm: dict, channels: int):
    """``(scale, shift)``: pixels 0..255 -> normalised, as ``data.normalize`` does."""
    low, high = norm["input_range"]
    mean, std = _per_channel(norm["mean"], channels), _per_channel(norm["std"], channels)
    return (high - low) / 255.0 / std, (low - mean) / std
