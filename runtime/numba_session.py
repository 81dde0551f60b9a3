"""The ``numba`` engine: the artifact's graphs run node by node with numpy and Numba alone (the device engine)."""
from __future__ import annotations

import contextlib
import time
from typing import Dict, Mapping, Optional

import numpy as np

from edge_lbp.core import ort_names
from edge_lbp.core.config import keep_freed_memory
from edge_lbp.core.energy import AdaptiveBases
from edge_lbp.core.artifact import Artifact, ArtifactError, model_input
from edge_lbp.runtime.graph import Graph, LiveBytes, mismatched_shapes
from edge_lbp.runtime.kernels.stochastic import RandomStream
from edge_lbp.runtime.passes import training_passes
from edge_lbp.runtime.session import Capabilities, Inputs, Optimizer, Session, TrainingState, Unsupported
from edge_lbp.runtime.threads import Threads

_TRAINING, _EVAL = 0, 1  # random-stream keys: a training pass and an evaluation never share draws


def _backward_start(phases) -> Optional[int]:
    """Index of the first step after which no forward step follows (None when there is no such split)."""
    if "forward" not in phases or phases[-1] == "forward":
        return None
    return len(phases) - phases[::-1].index("forward")


class NumbaState(TrainingState):
    """Parameters and optimizer moments in arrays allocated once and updated in place (``params``, ``moments``:
    the live buffers the graphs read), the optimizer's ``step`` and the ``energy:r`` layers' ``bases``."""

    def __init__(self, params: Dict[str, np.ndarray], trainable, moments, bases: AdaptiveBases, trained=None):
        super().__init__(NumbaSession.engine, trained if trained is not None else trainable)
        self.params, self.trainable, self.moments, self.bases = params, list(trainable), moments, bases
        self.step = 0

    def parameters(self) -> Dict[str, np.ndarray]:
        return {n: v.copy() for n, v in self.params.items()}

    def set_parameters(self, mapping: Mapping[str, np.ndarray]) -> None:
        self._check_parameters(mapping, self.params)
        for name, value in mapping.items():
            self.params[name][...] = value  # in place: the buffers stay where the graphs expect them

    def optimizer_state(self) -> dict:
        return {"step": self.step, **{m: {p: a.copy() for p, a in zip(self.trainable, arrays)}
                                      for m, arrays in self.moments.items()}}

    def set_optimizer_state(self, state: Mapping) -> None:
        self.step = int(state["step"])
        for moment, arrays in self.moments.items():
            for p, array in zip(self.trainable, arrays):
                array[...] = state[moment][p]

    def method_state(self) -> dict:
        """``bases``: the ``energy:r`` layers' averages and selections (when the graph has such layers)."""
        return {"bases": self.bases.state()} if self.bases.layers else {}

    def set_method_state(self, state: Mapping) -> None:
        if self.bases.layers:
            self.bases.set_state(state["bases"])


class NumbaOptimizer(Optimizer):
    """The artifact's optimizer graph on the state's buffers and the module's gradient buffers."""

    def __init__(self, artifact: Artifact, graph: Graph, state: NumbaState, gradients: Dict[str, np.ndarray]):
        super().__init__(artifact.manifest)
        self.graph, self.state, self.gradients = graph, state, gradients
        self.moments = tuple(state.moments)

    def step(self, *, gradient_scale: float = 1.0, trace=None) -> None:
        if gradient_scale != 1.0:
            for g in self.gradients.values():
                g *= np.float32(gradient_scale)  # in place: these are the buffers the optimizer graph reads
        state, spans = self.state, [] if trace is not None else None
        self.graph.run({
            "learning_rate": np.array(self.lr, np.float32),
            "step": np.array([state.step + 1], np.int64),  # ORT passes the 1-based step (bias correction)
            "params": [state.params[p] for p in state.trainable],
            "gradients": [self.gradients[p] for p in state.trainable],
            **state.moments,
        }, trace=spans)
        state.step += 1
        if trace is not None:
            trace.extend(("optimizer", op, name, t0, t1) for op, name, t0, t1 in spans)


class NumbaSession(Session):
    """The graphs and the gradient buffers; parameters and moments live in ``state`` (:class:`NumbaState`)."""

    engine = "numba"
    capabilities = Capabilities(gradients=True, optimizer_state=True, forward_end_hook=True, node_trace=True,
                                memory_estimate=True)

    def __init__(self, artifact: Artifact, seed: int = 0, threads: Optional[int] = None):
        """``threads``: a fixed thread count; None tunes it per pass (``runtime.threads``)."""
        super().__init__(artifact, seed)
        keep_freed_memory()
        self.threads = Threads(threads)
        params = artifact.parameters()
        trainable = artifact.trainable
        self.grads = {p: np.zeros_like(params[p]) for p in trainable}
        self.random = RandomStream(self.seed)
        bases = AdaptiveBases()
        self.training = Graph(training_passes(artifact.graph("training")), name="training graph",
                              random=self.random, bases=bases)
        self.eval = Graph(training_passes(artifact.inference_graph()), name="eval graph", random=self.random)
        optimizer_graph = artifact.graph("optimizer")
        optimizer = Graph(optimizer_graph, name="optimizer graph")
        wrong = mismatched_shapes(self.training, params) + mismatched_shapes(self.eval, params)
        if wrong:
            raise ArtifactError(f"{artifact.path(artifact.manifest['params'])}: parameter {wrong[0]}"
                                + (f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""))
        moments = {m: [np.zeros_like(params[p]) for p in trainable] for m in ort_names.moments(optimizer_graph)}
        self.state = self.make_state(params, trainable, moments, bases)
        self.optimizer = self.make_optimizer(optimizer)
        # forward_backward calls since the optimizer's last update (gradient accumulation), counted per step
        self._passes, self._passes_step = 0, 0
        phases = [ort_names.backward_phase(step.name, step.op_type) for step in self.training.steps]
        self._phases = dict(zip((step.name for step in self.training.steps), phases))
        self._backward_start = _backward_start(phases)

    # A method's session (edge_lbp.methods) extends the engine through these public hooks: the state and the
    # optimizer it keeps, the pass index its random draws key on, and extrapolate() for its memory probe.
    def make_state(self, params, trainable, moments, bases) -> NumbaState:
        return NumbaState(params, trainable, moments, bases)

    def make_optimizer(self, graph: Graph) -> NumbaOptimizer:
        return NumbaOptimizer(self.artifact, graph, self.state, self.grads)

    def pass_index(self) -> int:
        """The index of the next forward_backward call since the optimizer's last update."""
        if self._passes_step != self.state.step:
            self._passes, self._passes_step = 0, self.state.step
        return self._passes

    def forward_backward(self, inputs: Inputs, labels, *, accumulate: bool = False, trace=None,
                         on_forward_end=None, meter=None) -> float:
        params = self.state.params
        feeds = self.feeds(inputs)
        feeds.update({self.artifact.labels: self.label_array(labels, self.batch_size(feeds)), **params,
                      ort_names.LAZY_RESET: np.array([not accumulate])})
        feeds.update((ort_names.accumulation_buffer(p), g) for p, g in self.grads.items())
        # Dropout and drop-path draw from (seed, step, pass): reproducible, and the same after a resume.
        self.random.reseed(self.seed, _TRAINING, self.state.step, self.pass_index())
        self._passes += 1
        spans = [] if trace is not None else None
        hooks = ({self._backward_start: on_forward_end}
                 if on_forward_end is not None and self._backward_start is not None else None)
        batch = self.batch_size(feeds)
        threads = self.threads.before(batch)
        start = time.perf_counter()
        loss = self.training.run(feeds, trace=spans, hooks=hooks, meter=meter)[0]
        self.threads.after(batch, threads, time.perf_counter() - start)
        if trace is not None:
            trace.extend((self._phases[name], op, name, t0, t1) for op, name, t0, t1 in spans)
        return float(loss)

    def eval_step(self, inputs: Inputs) -> np.ndarray:
        self.random.reseed(self.seed, _EVAL, self.state.step)
        return self._evaluate(inputs)

    def _evaluate(self, inputs: Inputs, meter=None) -> np.ndarray:
        return self.eval.run({**self.feeds(inputs), **self.state.params}, meter=meter)[0]

    def gradients(self) -> Dict[str, np.ndarray]:
        return self.grads

    # -- the memory probe ------------------------------------------------------------------------------------------
    def step_bytes(self, batch: int) -> int:
        """Measured on two probe steps (batch 1 and 2, zeros; the gradient buffers are overwritten, the parameters
        and moments untouched) and extrapolated: a step's intermediates grow linearly with the batch."""
        return self.extrapolate(batch, lambda x, y, meter: self.forward_backward(x, y, meter=meter))

    def eval_bytes(self, batch: int) -> int:
        """What an evaluation step at ``batch`` allocates (its intermediates' peak), measured like ``step_bytes``."""
        return self.extrapolate(batch, lambda x, y, meter: self._evaluate(x, meter=meter))

    def held_at_backward_start(self, batch: int):
        if self._backward_start is None:
            raise Unsupported("this training graph has no backward after its forward")
        names = [step.name for step in self.training.steps]
        meter = _HeldAt(self._backward_start - 1, len(names))
        with self._probing() as zeros:
            self.forward_backward(*zeros(batch), meter=meter)
        return list(zip(names, meter.held_by))

    def node_output_bytes(self, prefix: str, batch: int) -> int:
        steps = [i for i, step in enumerate(self.eval.steps) if step.name.startswith(prefix)]
        if not steps:
            return 0
        meter = _OutputOf(steps[-1])
        with self._probing() as zeros:
            self._evaluate(zeros(1)[0], meter=meter)
        return meter.nbytes * batch

    def extrapolate(self, batch: int, run) -> int:
        """Peak bytes of ``run(x, y, meter)`` at ``batch``, from runs at batch 1 and 2: what is held after each step
        grows linearly with the batch, so each step's holding is extrapolated and the largest taken. (The peak
        itself does not extrapolate: at batch 1 and 2 it may sit at a weight gradient's temporaries, which do not
        grow, while at batch 32 it sits among the activations.)"""
        histories = []
        with self._probing() as zeros:
            for probe in (1, 2):
                meter = LiveBytes()
                run(*zeros(probe), meter)
                histories.append(np.array(meter.history, np.int64))
        one, two = histories
        return int(max(0, (one + np.maximum(0, two - one) * (int(batch) - 1)).max()))

    @contextlib.contextmanager
    def _probing(self):
        """Yields ``zeros(batch)``: inputs and labels for a probe run. The probes are not training: random draws
        keep their (step, pass) keys, and energy:r selects as if they never ran."""
        shape = model_input(self.artifact.manifest)["shape"][1:]
        if not all(isinstance(d, int) for d in shape):
            raise Unsupported(f"the input shape {shape} is not fixed; no memory estimate")
        passes, bases = self.pass_index(), self.state.bases.state()
        try:
            yield lambda batch: (np.zeros((batch, *shape), np.float32), np.zeros(batch, np.int64))
        finally:
            self._passes = passes
            self.state.bases.set_state(bases)


class _HeldAt(LiveBytes):
    """LiveBytes that also records, when step ``at`` is done, the bytes held per producing step."""

    def __init__(self, at: int, steps: int):
        super().__init__()
        self.at, self.held_by, self._index, self._producer = at, [0] * steps, 0, {}

    def count(self, step, values, feeds, constants) -> None:
        for slot in step.outputs:
            self._producer.setdefault(slot, self._index)
        super().count(step, values, feeds, constants)
        if self._index == self.at:
            for slot, size in self.held():
                self.held_by[self._producer[slot]] += size
        self._index += 1


class _OutputOf(LiveBytes):
    """Records the byte size of step ``at``'s first output."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.nbytes, self._index = at, 0, 0

    def count(self, step, values, feeds, constants) -> None:
        if self._index == self.at and step.outputs and isinstance(values[step.outputs[0]], np.ndarray):
            self.nbytes = values[step.outputs[0]].nbytes
        self._index += 1
        super().count(step, values, feeds, constants)
