"""Backprop through part of the model: ``all``, ``last:K`` (the last K blocks, the final norm and the head),
``bias`` (biases, normalisation scales and shifts, and the head) and ``head`` (the classifier alone).

Parameters are found by name (torch ``state_dict`` names survive the export as initializer names): the presets and
timm name blocks ``blocks.<i>.`` (timm's Swin ``layers.<s>.blocks.<b>.``), heads ``head.``/``head_dist.`` and the
final norm ``norm.``/``fc_norm.``; Hugging Face ``<model>.layers.<i>.`` (older releases ``encoder.layer.<i>.``,
Swin ``encoder.layers.<s>.blocks.<b>.``), ``classifier.`` (DeiT: ``cls_classifier.``,
``distillation_classifier.``) and ``<model>.layernorm.`` (SigLIP: ``<model>.post_layernorm.``).
"""
from __future__ import annotations

import re

from edge_lbp.core.names import block_key
from edge_lbp.methods.base import Method, choose

HEAD_PREFIXES = ("head.", "head_dist.", "classifier.", "cls_classifier.", "distillation_classifier.")
_FINAL_NORM = re.compile(r"(?:norm|fc_norm|[A-Za-z_]\w*\.(?:post_)?layernorm)\.")
_NORM_OPS = ("LayerNormalization", "BatchNormalization")
_LAST = re.compile(r"last:([1-9]\d*)")


def last_blocks(names, count: int):
    """The parameters ``last:K`` trains: the last ``count`` blocks', the final norm's and the head's. A stage's own
    parameters (Swin's patch merging, ``layers.<s>.downsample``: a shorter key than its blocks') are not a block."""
    keys = {block_key(n) for n in names} - {None}
    if not keys:
        raise ValueError("last:K needs blocks named 'blocks.<i>.', 'layers.<i>.' or 'layer.<i>.' and the model has "
                         "none")
    depth = max(map(len, keys))
    kept = set(sorted(k for k in keys if len(k) == depth)[-count:])
    return {n for n in names if n.startswith(HEAD_PREFIXES) or _FINAL_NORM.match(n) or block_key(n) in kept}


def head(names):
    return {n for n in names if n.startswith(HEAD_PREFIXES)}


class Partial(Method):
    SYNTAX = "all | last:K | bias | head"

    def __init__(self, spec: str):
        self.spec = spec

    @classmethod
    def parse(cls, text: str):
        return cls(text) if text in ("all", "bias", "head") or _LAST.fullmatch(text) else None

    def split(self, names, forward):
        if self.spec == "all":
            chosen = set(names)
        elif self.spec == "head":
            chosen = head(names)
        elif self.spec == "bias":
            norms = {n.input[i] for n in forward.graph.node if n.op_type in _NORM_OPS
                     for i in (1, 2) if i < len(n.input)}
            chosen = head(names) | {n for n in names if n.endswith(".bias") or n in norms}
        else:
            chosen = last_blocks(names, int(_LAST.fullmatch(self.spec).group(1)))
        return choose(names, chosen, f"--method {self.spec}")
