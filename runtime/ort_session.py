"""The ``ort`` engine: the same artifact through ONNX Runtime training's Module / Optimizer / CheckpointState.

x86_64 with onnxruntime-training only (the ``export`` extra); imported when this engine is asked for. It is the
numerical reference and the speed peer of the numba engine.
"""
from __future__ import annotations

import importlib
import time
from typing import Dict, Mapping

import numpy as np

from edge_lbp.core import ops, ort_names
from edge_lbp.core.bases import is_adaptive
from edge_lbp.core.artifact import Artifact
from edge_lbp.runtime.session import Capabilities, Inputs, Optimizer, Session, TrainingState


def _numba_only_node(model):
    """The first node of our own domain that has no ONNX function body in ``model`` (the WHT ops have one;
    ResizeGrad, which our gradient builder emits for DINOv2's Resize, has none), or None."""
    bodies = {(f.domain, f.name) for f in model.functions}
    return next((n for n in model.graph.node if n.domain == ops.DOMAIN and (n.domain, n.op_type) not in bodies),
                None)


class OrtState(TrainingState):
    """ORT's ``CheckpointState``: the parameters; the optimizer's moments stay inside ONNX Runtime."""

    def __init__(self, checkpoint, trained):
        super().__init__(OrtSession.engine, trained)
        self.checkpoint = checkpoint

    def parameters(self) -> Dict[str, np.ndarray]:
        # Iterating ORT's Parameters yields (name, Parameter) pairs.
        return {name: np.array(param.data) for name, param in self.checkpoint.parameters}

    def set_parameters(self, mapping: Mapping[str, np.ndarray]) -> None:
        self._check_parameters(mapping, self.parameters())
        for name, value in mapping.items():
            self.checkpoint.parameters[name] = np.ascontiguousarray(value, dtype=np.float32)


class OrtOptimizer(Optimizer):
    """ORT's ``Optimizer``. The gradients stay inside ONNX Runtime, so a gradient scale goes into the learning
    rate: SGD's update is linear in the gradients, so that is exact; AdamW divides by the gradients' own scale, so
    it leaves the update as it is (but for its eps, which only the smallest gradients feel)."""

    def __init__(self, manifest, optimizer, moments):
        super().__init__(manifest)
        self.optimizer, self.moments = optimizer, moments

    def step(self, *, gradient_scale: float = 1.0, trace=None) -> None:
        self.optimizer.set_learning_rate(self.lr * gradient_scale if self.kind == "sgd" else self.lr)
        start = time.perf_counter()
        self.optimizer.step()
        if trace is not None:
            trace.append(("optimizer", "Optimizer", "optimizer graph", start, time.perf_counter()))


class OrtSession(Session):
    """ORT's ``Module``: forward and backward run as one call."""

    engine = "ort"
    capabilities = Capabilities(gradients=False, optimizer_state=False, forward_end_hook=False, node_trace=False,
                                memory_estimate=False)

    def __init__(self, artifact: Artifact, seed: int = 0):
        super().__init__(artifact, seed)  # recorded only: ONNX Runtime's Dropout draws from its own generator
        try:  # only this engine needs ONNX Runtime; the numba engine (the device path) never imports it
            ort = importlib.import_module("onnxruntime")
            api = importlib.import_module("onnxruntime.training.api")
        except ImportError as err:
            raise RuntimeError(f"the ort engine needs onnxruntime-training (pip install 'edge-lbp[ort]'): {err}")
        manifest = artifact.manifest
        adaptive = [r["layer"] for r in manifest.get("lbp", {}).get("layers", [])
                    if is_adaptive(r.get("selection") or "")]
        if adaptive:  # the function bodies hold the starting bases as constants: ORT would never re-select
            raise ValueError(f"{artifact.folder}: {adaptive[0]} (and {len(adaptive) - 1} more) use energy:r bases, "
                             "which only the numba engine re-selects while training; use the numba engine")
        foreign = _numba_only_node(artifact.graph("training"))
        if foreign is not None:
            raise ValueError(f"{artifact.folder}: node {foreign.name!r} ({foreign.domain}::{foreign.op_type}) runs on "
                             "the numba engine only (ONNX Runtime has no CPU kernel for it); use the numba engine")
        if "ort_checkpoint" not in manifest:
            raise ValueError(f"{artifact.folder}: this artifact has no ORT checkpoint (it was exported without "
                             "onnxruntime-training); use the numba engine")
        checkpoint = api.CheckpointState.load_checkpoint(str(artifact.path(manifest["ort_checkpoint"])))
        self.state = OrtState(checkpoint, artifact.trainable)
        self._module = api.Module(str(artifact.path(manifest["graphs"]["training"])), checkpoint,
                                 str(artifact.path(manifest["graphs"]["eval"])))
        # Both engines start from the artifact's tensor file. (Before a Module exists, writing a parameter of a
        # freshly loaded CheckpointState crashes ORT 1.19 with a segmentation fault.)
        self.state.set_parameters(artifact.parameters())
        optimizer = api.Optimizer(str(artifact.path(manifest["graphs"]["optimizer"])), self._module)
        self.optimizer = OrtOptimizer(manifest, optimizer, ort_names.moments(artifact.graph("optimizer")))
        # Module.eval() returns the loss only, so logits come from the eval graph pruned to them.
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.inference = ort.InferenceSession(artifact.inference_graph().SerializeToString(), options,
                                              providers=["CPUExecutionProvider"])
        self._inference_params = [i.name for i in self.inference.get_inputs() if i.name in checkpoint.parameters]

    def forward_backward(self, inputs: Inputs, labels, *, accumulate: bool = False, trace=None,
                         on_forward_end=None) -> float:
        if not accumulate:
            self._module.lazy_reset_grad()  # the next run overwrites the gradient buffers instead of adding
        self._module.train()
        feeds = self.feeds(inputs)
        start = time.perf_counter()
        labels = self.label_array(labels, self.batch_size(feeds))
        loss = self._module(*[feeds[n] for n in self._module.input_names() if n in feeds], labels)
        if trace is not None:  # ORT runs forward and backward as one graph call
            trace.append(("forward_backward", "Module", "training graph", start, time.perf_counter()))
        return float(loss)

    def eval_step(self, inputs: Inputs) -> np.ndarray:
        parameters = self.state.checkpoint.parameters
        feeds = {**self.feeds(inputs), **{n: parameters[n].data for n in self._inference_params}}
        return self.inference.run(None, feeds)[0]
