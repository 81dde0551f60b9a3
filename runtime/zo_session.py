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
from edge_lbp.runtime.numba_session import NumbaSession
from edge_lbp.core.graphs import prune_to_outputs
from edge_lbp.runtime.session import Inputs, NonFiniteStep
from edge_lbp.core.zo import ZOConfig, add_perturbation, probe_key, spsa_probe

_ZO_PASS = 2  # random-stream key of the ZO forwards (beside numba_session's training 0 and evaluation 1)


class ZOHybridSession(NumbaSession):
    def __init__(self, artifact: Artifact, seed: int = 0, zo=None, threads=None):
        super().__init__(artifact, seed, threads)
        self.zo = ZOConfig.of(zo)
        self.zo_names = list(training_method(artifact.manifest).get("zo", ()))
        unknown = [n for n in self.zo_names if n not in self.params or n in self.trainable]
        if unknown or not self.zo_names:
            raise ArtifactError(f"{artifact.folder}: the zo-hybrid method names "
                                + (f"parameters that are not frozen ones: {unknown[:3]}" if unknown
                                   else "no ZO parameters"))
        loss = artifact.manifest["loss"]["output"]
        self.loss_graph = Graph(prune_to_outputs(artifact.graph("eval"), [loss]), name="eval graph (loss)",
                                random=self.random)
        self._probes = []  # (key, projected gradient) of every probe since the last update
        self._draw_bytes = max(self.params[n].nbytes for n in self.zo_names)

    @property
    def trained(self):
        return [*self.trainable, *self.zo_names]

    def forward_backward(self, inputs: Inputs, labels, *, accumulate: bool = False, trace=None,
                         on_forward_end=None, meter=None) -> float:
        if not accumulate:
            self._probes.clear()
        feeds = {**self._feeds(inputs), **self.params}  # the arrays themselves: perturbed in place
        feeds[self.artifact.labels] = self._labels(labels, self._batch(feeds))
        spans = [] if trace is not None else None

        def loss():
            self.random.reseed(self.seed, _ZO_PASS, self.step, self._passes)
            return self.loss_graph.run(feeds, trace=spans, meter=meter)[0]

        for probe in range(self.zo.probes):
            key = probe_key(self.seed, self.step, self._passes, probe)
            self._probes.append((key, spsa_probe(loss, self.params, self.zo_names, key, self.zo.eps)[0]))
        if trace is not None:
            trace.extend(("forward", op, name, t0, t1) for op, name, t0, t1 in spans)
        return super().forward_backward(inputs, labels, accumulate=accumulate, trace=trace,
                                        on_forward_end=on_forward_end, meter=meter)

    def check_finite(self, loss=None, *, gradients: bool = True) -> None:
        super().check_finite(loss, gradients=gradients)
        if gradients and not all(math.isfinite(g) for _, g in self._probes):
            raise NonFiniteStep("the ZO estimate is not finite; step rejected, parameters unchanged")

    def optimizer_step(self, trace=None) -> None:
        super().optimizer_step(trace=trace)
        # The mean over probes and micro-batches, each probe's step along its own regenerated direction.
        rate = self.zo.lr * self.schedule_factor / max(1, len(self._probes))
        for key, g in self._probes:
            add_perturbation(self.params, self.zo_names, key, -rate * g)
        self._probes.clear()

    def step_bytes(self, batch: int) -> int:
        def run(x, y, meter):
            # A probe's forward at unperturbed parameters allocates what a perturbed one does, and moves nothing.
            self.loss_graph.run({**self._feeds(x), **self.params, self.artifact.labels: y}, meter=meter)
            NumbaSession.forward_backward(self, x, y, meter=meter)

        return self._extrapolate(batch, run) + self._draw_bytes

    def optimizer_state(self) -> dict:
        if self._probes:
            raise ValueError("a ZO estimate is pending (accumulation in progress); save after the update")
        return super().optimizer_state()

