"""The ``numba`` engine: the artifact's graphs run node by node with numpy and Numba alone (the device engine)."""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import time

import numpy as np

from edge_lbp.core import ort_names
from edge_lbp.core.config import keep_freed_memory
from edge_lbp.core.energy import AdaptiveBases
from edge_lbp.core.artifact import Artifact, ArtifactError, model_input
from edge_lbp.runtime.graph import Graph, LiveBytes, mismatched_shapes
from edge_lbp.runtime.kernels.stochastic import RandomStream
from edge_lbp.runtime.passes import accumulate_in_place, fold_transpose_into_gemm
from edge_lbp.runtime.session import Capabilities, Inputs, Session, Unsupported
from edge_lbp.runtime.threads import Threads

_TRAINING, _EVAL = 0, 1  # random-stream keys: a training pass and an evaluation never share draws


def _backward_start(phases) -> Optional[int]:
    """Index of the first step after which no forward step follows (None when there is no such split)."""
    if "forward" not in phases or phases[-1] == "forward":
        return None
    return len(phases) - phases[::-1].index("forward")


class NumbaSession(Session):
    """Parameters, gradients and optimizer moments live in arrays allocated once and updated in place."""

    engine = "numba"
    capabilities = Capabilities(gradients=True, optimizer_state=True, forward_end_hook=True, node_trace=True,
                                memory_estimate=True)

    def __init__(self, artifact: Artifact, seed: int = 0, threads: Optional[int] = None):
        """``threads``: a fixed thread count; None tunes it per pass (``runtime.threads``)."""
        super().__init__(artifact, seed)
        keep_freed_memory()
        self.threads = Threads(threads)
        self.params = artifact.parameters()
        self.trainable = artifact.trainable
        self.grads = {p: np.zeros_like(self.params[p]) for p in self.trainable}
        self.random = RandomStream(self.seed)
        self.bases = AdaptiveBases()
        self.training = Graph(accumulate_in_place(fold_transpose_into_gemm(artifact.graph("training"))),
                              name="training graph", random=self.random, bases=self.bases)
        self.eval = Graph(artifact.inference_graph(), name="eval graph", random=self.random)
        self.optimizer = Graph(artifact.graph("optimizer"), name="optimizer graph")
        wrong = mismatched_shapes(self.training, self.params) + mismatched_shapes(self.eval, self.params)
        if wrong:
            raise ArtifactError(f"{artifact.path(artifact.manifest['params'])}: parameter {wrong[0]}"
                                + (f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""))
        moments = [f for f in self.optimizer.feeds if ort_names.is_moment(f)]
        self.moments = {m: [np.zeros_like(self.params[p]) for p in self.trainable] for m in moments}
        self.step = 0
        self._passes = 0  # forward_backward calls since the last optimizer step (gradient accumulation)
        phases = [ort_names.backward_phase(step.name, step.op_type) for step in self.training.steps]
        self._phases = dict(zip((step.name for step in self.training.steps), phases))
        self._backward_start = _backward_start(phases)

    def forward_backward(self, inputs: Inputs, labels, *, accumulate: bool = False, trace=None,
                         on_forward_end=None, meter=None) -> float:
        feeds = self._feeds(inputs)
        feeds.update({self.artifact.labels: self._labels(labels, self._batch(feeds)), **self.params,
                      ort_names.LAZY_RESET: np.array([not accumulate])})
        feeds.update((ort_names.accumulation_buffer(p), g) for p, g in self.grads.items())
        # Dropout and drop-path draw from (seed, step, pass): reproducible, and the same after a resume.
        self.random.reseed(self.seed, _TRAINING, self.step, self._passes)
        self._passes += 1
        spans = [] if trace is not None else None
        hooks = ({self._backward_start: on_forward_end}
                 if on_forward_end is not None and self._backward_start is not None else None)
        batch = self._batch(feeds)
        threads = self.threads.before(batch)
        start = time.perf_counter()
        loss = self.training.run(feeds, trace=spans, hooks=hooks, meter=meter)[0]
        self.threads.after(batch, threads, time.perf_counter() - start)
        if trace is not None:
            trace.extend((self._phases[name], op, name, t0, t1) for op, name, t0, t1 in spans)
        return float(loss)

    def optimizer_step(self, trace=None) -> None:
        spans = [] if trace is not None else None
        self.optimizer.run({
            "learning_rate": np.array(self.lr, np.float32),
            "step": np.array([self.step + 1], np.int64),  # ORT passes the 1-based step (bias correction)
            "params": [self.params[p] for p in self.trainable],
            "gradients": [self.grads[p] for p in self.trainable],
            **self.moments,
        }, trace=spans)
        self.step += 1
        self._passes = 0
        if trace is not None:
            trace.extend(("optimizer", op, name, t0, t1) for op, name, t0, t1 in spans)

    def eval_step(self, inputs: Inputs) -> np.ndarray:
        self.random.reseed(self.seed, _EVAL, self.step)
        return self.eval.run({**self._feeds(inputs), **self.params})[0]

    def parameters(self) -> Dict[str, np.ndarray]:
        return {n: v.copy() for n, v in self.params.items()}

    def set_parameters(self, mapping: Mapping[str, np.ndarray]) -> None:
        self._check_parameters(mapping, self.params)
        for name, value in mapping.items():
            self.params[name][...] = value  # in place: the buffers stay where the graphs expect them

    def step_bytes(self, batch: int) -> int:
        """Measured on two probe steps (batch 1 and 2, zeros; the gradient buffers are overwritten, the parameters
        and moments untouched) and extrapolated: a step's intermediates grow linearly with the batch."""
        return self._extrapolate(batch, lambda x, y, meter: self.forward_backward(x, y, meter=meter))

    def eval_bytes(self, batch: int) -> int:
        """What an evaluation step at ``batch`` allocates (its intermediates' peak), measured like ``step_bytes``."""
        return self._extrapolate(batch, lambda x, y, meter: self.eval.run({**self._feeds(x), **self.params},
                                                                        meter=meter))

    def _extrapolate(self, batch: int, run) -> int:
        """Peak bytes of ``run(x, y, meter)`` at ``batch``, from runs at batch 1 and 2: what is held after each step
        grows linearly with the batch, so each step's holding is extrapolated and the largest taken. (The peak
        itself does not extrapolate: at batch 1 and 2 it may sit at a weight gradient's temporaries, which do not
        grow, while at batch 32 it sits among the activations.)"""
        shape = model_input(self.artifact.manifest)["shape"][1:]
        if not all(isinstance(d, int) for d in shape):
            raise Unsupported(f"the input shape {shape} is not fixed; no memory estimate")
        histories, passes, bases = [], self._passes, self.bases.state()
        for probe in (1, 2):
            meter = LiveBytes()
            run(np.zeros((probe, *shape), np.float32), np.zeros(probe, np.int64), meter)
            histories.append(np.array(meter.history, np.int64))
        # The probes are not training: random draws keep their (step, pass) keys, and energy:r selects as if they
        # never ran.
        self._passes = passes
        self.bases.set_state(bases)
        one, two = histories
        return int(max(0, (one + np.maximum(0, two - one) * (int(batch) - 1)).max()))

    def gradients(self) -> Dict[str, np.ndarray]:
        return self.grads

    def optimizer_state(self) -> dict:
        """The step, the moments, and (``bases``) the ``energy:r`` layers' averages and selections."""
        return {"step": self.step, **{m: {p: a.copy() for p, a in zip(self.trainable, arrays)}
                                      for m, arrays in self.moments.items()},
                **({"bases": self.bases.state()} if self.bases.layers else {})}

    def set_optimizer_state(self, state: Mapping) -> None:
        self.step = int(state["step"])
        if self.bases.layers:
            self.bases.set_state(state["bases"])
        for moment, arrays in self.moments.items():
            for p, array in zip(self.trainable, arrays):
                array[...] = state[moment][p]
