"""``zo-hybrid:K`` on the numba engine (ElasticZO): SPSA for the front of the network, backprop for its end.

The artifact was exported with the last K blocks, final norm and head trainable (its training graph, LBP-rewritten
where asked, has no backward beyond them) and names the other parameters in ``manifest["method"]["zo"]``. A step:

1. per probe, two forward passes of the eval graph (forward + loss, no activation kept for a backward) at
   ``θ_zo ± εz``, with ``z`` regenerated from the probe's seed (``edge_lbp.core.zo``), giving ``g = (L+ - L-) / 2ε``;
2. the training graph at the unperturbed parameters: the loss and the first-order gradients of the last blocks;
3. at the update: the artifact's optimizer on the first-order part, and plain SGD ``θ_zo -= lr_zo · mean(g z)``
   on the ZO part (``z`` drawn a fourth time from the same seed).

Peak memory: the larger of the eval graph's forward and the training graph's step, plus one parameter-sized draw.
"""
from __future__ import annotations

import math

from edge_lbp.core.artifact import Artifact, ArtifactError, training_method
from edge_lbp.runtime.graph import Graph
from edge_lbp.runtime.numba_session import NumbaOptimizer, NumbaSession, NumbaState
from edge_lbp.core.graphs import prune_to_outputs
from edge_lbp.runtime.session import Inputs, NonFiniteStep
from edge_lbp.core.zo import ZOConfig, add_perturbation, probe_key, spsa_probe

_ZO_PASS = 2  # random-stream key of the ZO forwards (beside numba_session's training 0 and evaluation 1)


class ZOState(NumbaState):
    """The numba state, with the ZO parameters among the trained ones; refuses to be saved while an estimate is
    pending (``probes``: the session's, shared)."""

    def __init__(self, params, trainable, moments, bases, zo_names, probes):
        super().__init__(params, trainable, moments, bases, trained=[*trainable, *zo_names])
        self.probes = probes

    def optimizer_state(self) -> dict:
        if self.probes:
            raise ValueError("a ZO estimate is pending (accumulation in progress); save after the update")
        return super().optimizer_state()


class ZOOptimizer(NumbaOptimizer):
    """The artifact's optimizer on the first-order part, then plain SGD along each probe's direction on the ZO part,
    its learning rate following the schedule (``schedule_factor``)."""

    def __init__(self, artifact, graph, state, gradients, zo: ZOConfig, zo_names, probes):
        super().__init__(artifact, graph, state, gradients)
        self.zo, self.zo_names, self.probes = zo, zo_names, probes

    def step(self, *, gradient_scale: float = 1.0, trace=None) -> None:
        super().step(gradient_scale=gradient_scale, trace=trace)
        # The mean over probes and micro-batches, each probe's step along its own regenerated direction.
        rate = self.zo.lr * self.schedule_factor / max(1, len(self.probes))
        for key, g in self.probes:
            add_perturbation(self.state.params, self.zo_names, key, -rate * g)
        self.probes.clear()


class ZOHybridSession(NumbaSession):
    def __init__(self, artifact: Artifact, seed: int = 0, options=None, threads=None):
        self.method_options = ZOConfig.of(options)
        self.zo_names = list(training_method(artifact.manifest).get("zo", ()))
        self.probes = []  # (key, projected gradient) of every probe since the last update
        super().__init__(artifact, seed, threads)
        params = self.state.params
        unknown = [n for n in self.zo_names if n not in params or n in artifact.trainable]
        if unknown or not self.zo_names:
            raise ArtifactError(f"{artifact.folder}: the zo-hybrid method names "
                                + (f"parameters that are not frozen ones: {unknown[:3]}" if unknown
                                   else "no ZO parameters"))
        loss = artifact.manifest["loss"]["output"]
        self.loss_graph = Graph(prune_to_outputs(artifact.graph("eval"), [loss]), name="eval graph (loss)",
                                random=self.random)
        self._draw_bytes = max(params[n].nbytes for n in self.zo_names)

    def make_state(self, params, trainable, moments, bases) -> ZOState:
        return ZOState(params, trainable, moments, bases, self.zo_names, self.probes)

    def make_optimizer(self, graph) -> ZOOptimizer:
        return ZOOptimizer(self.artifact, graph, self.state, self.grads, self.method_options, self.zo_names,
                           self.probes)

    def forward_backward(self, inputs: Inputs, labels, *, accumulate: bool = False, trace=None,
                         on_forward_end=None, meter=None) -> float:
        if not accumulate:
            self.probes.clear()
        params = self.state.params
        feeds = {**self.feeds(inputs), **params}  # the arrays themselves: perturbed in place
        feeds[self.artifact.labels] = self.label_array(labels, self.batch_size(feeds))
        spans = [] if trace is not None else None
        step, passes = self.state.step, self.pass_index()

        def loss():
            self.random.reseed(self.seed, _ZO_PASS, step, passes)
            return self.loss_graph.run(feeds, trace=spans, meter=meter)[0]

        zo = self.method_options
        for probe in range(zo.probes):
            key = probe_key(self.seed, step, passes, probe)
            self.probes.append((key, spsa_probe(loss, params, self.zo_names, key, zo.eps)[0]))
        if trace is not None:
            trace.extend(("forward", op, name, t0, t1) for op, name, t0, t1 in spans)
        return super().forward_backward(inputs, labels, accumulate=accumulate, trace=trace,
                                        on_forward_end=on_forward_end, meter=meter)

    def check_finite(self, loss=None, *, gradients: bool = True) -> None:
        super().check_finite(loss, gradients=gradients)
        if gradients and not all(math.isfinite(g) for _, g in self.probes):
            raise NonFiniteStep("the ZO estimate is not finite; step rejected, parameters unchanged")

    def step_bytes(self, batch: int) -> int:
        def run(x, y, meter):
            # A probe's forward at unperturbed parameters allocates what a perturbed one does, and moves nothing.
            self.loss_graph.run({**self.feeds(x), **self.state.params, self.artifact.labels: y}, meter=meter)
            NumbaSession.forward_backward(self, x, y, meter=meter)

        return self.extrapolate(batch, run) + self._draw_bytes

    def extra_state_bytes(self) -> int:
        return self._draw_bytes
