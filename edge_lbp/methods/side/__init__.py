"""``side``: side-tuning (SynQT-style). A small query network and head read the frozen backbone's tapped blocks;
only they train, and no gradient reaches the backbone (checked on the training graph at export).

Workstation: :mod:`edge_lbp.export.side_network` wraps the torch model (torch). Device: the plain engines train the side network.
"""
from __future__ import annotations

from edge_lbp.methods.base import Method, choose

NAME = "side"
SCOPE = "side."  # parameter-name prefix of the side network


class Side(Method):
    SYNTAX = "side"
    name = NAME
    spec = NAME
    PLANNED = NAME
    NOT_FOR_ONNX = ("side-tuning wraps a torch model with transformer blocks (a preset, a module, a factory or a "
                    "Hugging Face checkpoint), not an ONNX file")

    def __init__(self, taps=None):
        self.taps = taps  # as given (``"1,3,5"``, None: every block) until adapt() resolves them on the model

    @classmethod
    def parse(cls, text: str):
        return cls() if text == NAME else None

    @classmethod
    def from_record(cls, record: dict):
        return cls(tuple(record["taps"]))

    def adapt(self, model, num_classes=None):
        from edge_lbp.export.side_network import SideTuned

        wrapped = SideTuned(model, self.taps, num_classes)
        self.taps = tuple(wrapped.taps)
        return wrapped

    def split(self, names, forward):
        return choose(names, {n for n in names if n.startswith(SCOPE)}, "--method side")

    def estimate(self, memory):
        """An inference forward plus one normalised copy of each tapped block's output (every block tapped) but the
        last, whose copy is taken after the forward's peak; the side network's own state is small beside it and not
        counted."""
        if not memory.block_output:
            return None
        return memory.inference + (memory.depth - 1) * memory.block_output, 0

    def record(self, forward, training, frozen):
        from edge_lbp.export.side_network import backbone_reads

        read, differentiated = backbone_reads(forward, training)
        if read or differentiated:  # a guard on the wrapper itself: the backbone must be frozen and detached
            raise RuntimeError(f"side-tuning: the backward reaches the backbone ({(read + differentiated)[:3]})")
        return {"name": NAME, "taps": list(self.taps)}
