"""Side-tuning (SynQT-style, Lian et al. 2024): a small query network and head read the frozen backbone's
intermediate features; only they train, and no gradient flows into the backbone.

``SideTuned(backbone, taps)`` wraps a model with transformer blocks (:func:`transformer_blocks`: the presets',
timm's, Hugging Face ViT, DeiT and Swin): the outputs of the tapped blocks (tokens ``B x N x C``) are taken with
forward hooks and detached; the side network's
learned queries read each of them in turn by cross-attention in which the features are keys and values as they
are (normalised, not projected), so the side's backward reads nothing but the normalised taps, a few ``B x N x C``
tensors. The backbone's own head and the blocks after the last tap drop out of the graph.

Every backbone parameter is frozen in the artifact (``--method side``): ORT's gradient builder then emits no
node for the backbone, which :func:`backbone_reads` checks on the training graph.
"""
import functools
import re
import types

from edge_lbp.export.hf import input_shape
from edge_lbp.core.names import block_key

BACKBONE_SCOPE = "/backbone/"
DEFAULT_QUERIES, DEFAULT_WIDTH = 4, 64


def parse_taps(text, depth):
    """``None`` -> every block; ``"1,3,5"`` -> (1, 3, 5) (block indices, negative from the end)."""
    if text is None:
        return tuple(range(depth))
    try:
        taps = [int(t) for t in str(text).split(",")]
    except ValueError:
        raise ValueError(f"--taps {text!r} is not a list of block indices such as 1,3,5") from None
    bad = [t for t in taps if not -depth <= t < depth]
    if bad or not taps:
        raise ValueError(f"--taps {text!r}: the backbone has blocks 0..{depth - 1}")
    return tuple(sorted({t % depth for t in taps}))


@functools.lru_cache(maxsize=None)
def _torch_classes():
    """The side network's torch modules, defined on first use: torch is the workstation's, never imported on the
    device (this module is installed with the device package)."""
    import torch
    from torch import nn

    def _normalise(x, eps=1e-6):
        """Layer norm without parameters, written out: a LayerNormalization node would bring a constant scale that
        the exporter takes for a parameter."""
        centred = x - x.mean(-1, keepdim=True)
        return centred / torch.sqrt((centred * centred).mean(-1, keepdim=True) + eps)

    class QueryRead(nn.Module):
        """The queries (``B x Q x width``) attend to one tapped feature map; its tokens are keys and values as they are,
        so the only activations the backward keeps are that map and the queries' own small tensors."""

        def __init__(self, width, dim):
            super().__init__()
            self.norm, self.to_key, self.out = nn.LayerNorm(width), nn.Linear(width, dim), nn.Linear(dim, width)
            self.scale = dim ** -0.5

        def forward(self, q, features):
            scores = (self.to_key(self.norm(q)) * self.scale) @ features.transpose(1, 2)
            return q + self.out(scores.softmax(-1) @ features)

    class SideNetwork(nn.Module):
        def __init__(self, dims, num_classes, queries=DEFAULT_QUERIES, width=DEFAULT_WIDTH):
            super().__init__()
            self.queries = nn.Parameter(torch.randn(1, queries, width) * 0.02)
            self.reads = nn.ModuleList(QueryRead(width, d) for d in dims)
            self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, num_classes)

        def forward(self, taps):
            q = self.queries.expand(taps[0].shape[0], -1, -1)
            for read, features in zip(self.reads, taps):
                q = read(q, _normalise(features))
            return self.head(self.norm(q).mean(1))

    def transformer_blocks(backbone):
        """The blocks in order: ``backbone.blocks`` (the presets, timm's ViT and DeiT), else the modules whose names end
        like a block's under ``edge_lbp.methods.partial.block_key`` (Hugging Face ``<model>.layers.<i>``, Swin's
        ``layers.<s>.blocks.<b>``; a stage itself, with a shorter key, is not a block)."""
        blocks = getattr(backbone, "blocks", None)
        if isinstance(blocks, nn.ModuleList) and len(blocks):
            return list(blocks)
        found = {block_key(f"{name}."): module for name, module in backbone.named_modules()
                 if re.search(r"(?:^|\.)(?:blocks|layers|layer)\.\d+$", name)}
        depth = max(map(len, found), default=0)
        return [found[key] for key in sorted(found) if len(key) == depth]

    class SideTuned(nn.Module):
        def __init__(self, backbone, taps=None, num_classes=None, queries=DEFAULT_QUERIES, width=DEFAULT_WIDTH):
            super().__init__()
            self.blocks = transformer_blocks(backbone)
            if not self.blocks:
                raise ValueError("side-tuning taps transformer blocks ('blocks.<i>', 'layers.<i>' or 'layer.<i>'); "
                                 f"{type(backbone).__name__} has none")
            self.backbone, self.taps = backbone, parse_taps(taps, len(self.blocks))
            config = getattr(backbone, "config", None)
            if num_classes is None:
                num_classes = (getattr(config, "num_classes", None) or getattr(config, "num_labels", None)
                               or backbone.head.out_features)
            with torch.no_grad():
                shapes = [f.shape for f in self._features(torch.zeros(1, *input_shape(config)))]
            if any(len(s) != 3 for s in shapes):
                raise ValueError(f"side-tuning reads token maps (batch, tokens, dim); the tapped blocks give {shapes}")
            self.side = SideNetwork([s[-1] for s in shapes], num_classes, queries, width)
            self.config = config

        def _features(self, x):
            taken = []
            # Hugging Face blocks return a tuple whose first entry is the tokens.
            hooks = [self.blocks[i].register_forward_hook(
                lambda m, args, out: taken.append(out[0] if isinstance(out, tuple) else out)) for i in self.taps]
            try:
                self.backbone(x)  # its logits are not used: the export drops the head and the blocks after the taps
            finally:
                for hook in hooks:
                    hook.remove()
            return [f.detach() for f in taken]

        def forward(self, x):
            return self.side(self._features(x))

    return types.SimpleNamespace(SideTuned=SideTuned, transformer_blocks=transformer_blocks)


def __getattr__(name):
    # ``SideTuned`` and ``transformer_blocks`` need torch: built when first asked for.
    if name in ("SideTuned", "transformer_blocks"):
        return getattr(_torch_classes(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def backbone_reads(forward, training):
    """``(read, differentiated)``: the backbone activations that a node of the training graph's backward reads, and
    the backbone tensors that get a gradient; both empty when the backbone is frozen and detached. Backbone tensors
    are the outputs of the forward model's ``/backbone/`` nodes (the training graph keeps their names)."""
    from edge_lbp.core.ort_names import backward_phase, gradient

    backbone = {o for n in forward.graph.node if n.name.startswith(BACKBONE_SCOPE) for o in n.output}
    reads = {i for n in training.graph.node if backward_phase(n.name, n.op_type) == "backward"
             for i in n.input if i in backbone}
    produced = {o for n in training.graph.node for o in n.output}
    return sorted(reads), sorted(t for t in backbone if gradient(t) in produced)
