"""``zo-hybrid:K`` (ElasticZO-style): backprop for the last K blocks, the final norm and the head; zeroth-order SPSA
(:mod:`edge_lbp.core.zo`) for every other parameter, on the device.

The training graph is exported as for ``last:K``; the manifest's method record names the ZO parameters, and the
numba engine's :class:`~edge_lbp.methods.zo_hybrid.session.ZOHybridSession` (:mod:`.session`, numpy and the
numba engine) trains both parts.
"""
from __future__ import annotations

import re

from edge_lbp.core.zo import ZOConfig
from edge_lbp.methods.base import Method, choose
from edge_lbp.methods.partial import last_blocks

NAME = "zo-hybrid"
_SPEC = re.compile(r"zo-hybrid:([1-9]\d*)")


class ZOHybrid(Method):
    SYNTAX = "zo-hybrid:K"
    name = NAME
    OPTIONS, OPTION_PREFIX = ZOConfig, "zo"
    PLANNED = f"{NAME}:{{blocks}}"

    def __init__(self, blocks: int):
        self.blocks, self.spec = blocks, f"{NAME}:{blocks}"

    @classmethod
    def parse(cls, text: str):
        match = _SPEC.fullmatch(text)
        return cls(int(match.group(1))) if match else None

    @classmethod
    def from_record(cls, record: dict):
        return cls(int(record["blocks"]))

    def split(self, names, forward):
        return choose(names, last_blocks(names, self.blocks), f"--method {self.spec}")

    @property
    def trainable_set(self) -> str:
        return f"last:{self.blocks}"  # what the training graph trains; the ZO part is the method record's

    def record(self, forward, training, frozen):
        return {"name": NAME, "blocks": self.blocks, "zo": list(frozen)}

    def estimate(self, memory):
        """The last K blocks' share of the held activations plus the backward's working set (at least an inference
        forward); the state of what backprops plus one parameter-sized draw."""
        if memory.depth <= self.blocks:
            return None
        last = {b for b in memory.held if b is not None and b >= memory.depth - self.blocks}
        kept = sum(v for b, v in memory.held.items() if b in last)
        trained = last_blocks(memory.parameters, self.blocks)
        draw = max((size for name, size in memory.parameters.items() if name not in trained), default=0)
        state = memory.state_copies * sum(memory.parameters[n] for n in trained) + draw
        return max(memory.inference, kept + memory.working), state

    def open_session(self, artifact, engine, *, seed, threads, options=None):
        if engine != "numba":
            raise ValueError(f"{artifact.folder}: a zo-hybrid artifact trains on the numba engine only (the {engine} "
                             "engine would train the backprop part alone)")
        from edge_lbp.methods.zo_hybrid.session import ZOHybridSession

        return ZOHybridSession(artifact, seed, options, threads)
