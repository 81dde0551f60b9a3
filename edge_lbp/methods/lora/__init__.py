"""``lora:R``: rank-R LoRA adapters beside the frozen linear layers, trained with the head.

Workstation: :mod:`.adapters` adds ``<layer>.lora_a`` (R x in) and ``<layer>.lora_b`` (out x R) to the torch model
before its export (torch). Device: :mod:`.fold` folds ``B A`` into each adapted weight when the inference model is
written (numpy and onnx only).
"""
from __future__ import annotations

import re

from edge_lbp.methods.base import Method, choose
from edge_lbp.methods.partial import head

from edge_lbp.core.names import LORA_A, LORA_B
_SPEC = re.compile(r"lora:([1-9]\d*)")


class Lora(Method):
    SYNTAX = "lora:R"
    NOT_FOR_ONNX = "LoRA adapters are added to a torch model before its export, not to an ONNX file"

    def __init__(self, rank: int):
        self.rank, self.spec = rank, f"lora:{rank}"

    @classmethod
    def parse(cls, text: str):
        match = _SPEC.fullmatch(text)
        return cls(int(match.group(1))) if match else None

    def adapt(self, model, num_classes=None):
        from edge_lbp.export.lora_adapters import add_adapters

        return add_adapters(model, self.rank)

    def split(self, names, forward):
        adapters = {n for n in names if n.endswith((f".{LORA_A}", f".{LORA_B}"))}
        return choose(names, head(names) | adapters, f"--method {self.spec}")

    def fold(self, graph, params):
        from edge_lbp.methods.lora.fold import fold_lora

        return fold_lora(graph, params)
