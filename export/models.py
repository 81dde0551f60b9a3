"""Vision-transformer families written for export: ViT, DeiT, Swin-style windows, EfficientFormer-style hybrid.

Every layer uses ops that ONNX Runtime 1.19's gradient builder differentiates (checked by the artifact tests):
attention is timm-style (one qkv Linear, MatMul, Softmax, MatMul, proj Linear) because ``nn.MultiheadAttention``
exports do not differentiate. All sizes except the batch are Python ints fixed at construction and reshapes put
``-1`` for the batch, so the traced graph has a dynamic batch and little shape arithmetic.
"""

from dataclasses import dataclass, replace

import torch
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    family: str  # vit | deit | swin | efficientformer
    img_size: int = 32
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 10
    dim: int = 64
    depth: int = 2
    heads: int = 2
    mlp_ratio: int = 2
    window: int = 8  # swin: window side in tokens
    shift: bool = True  # swin: every second block uses shifted windows
    stages: tuple = (1, 1)  # swin: blocks per stage; efficientformer: 4-D blocks per stage (+ depth 3-D blocks)


PRESETS = {
    # The ``-tiny`` presets are 2-block, 32-px models for tests, one per family (not DeiT-Tiny or ViT-Tiny).
    "vit-tiny": ModelConfig("vit", dim=64, depth=2, heads=2),
    "deit-tiny": ModelConfig("deit", dim=64, depth=2, heads=2),
    "swin-tiny": ModelConfig("swin", patch_size=2, dim=48, heads=2, stages=(2, 2)),
    "efficientformer-tiny": ModelConfig("efficientformer", dim=48, depth=1, heads=2, stages=(1, 1)),
    "vit-b16": ModelConfig("vit", img_size=224, patch_size=16, num_classes=1000, dim=768, depth=12, heads=12,
                           mlp_ratio=4),
    # DeiT-Ti/16 and DeiT-S/16 at 224 px (the distilled variants: CLS + distillation token, 198 tokens), the edge
    # sizes of the benchmark.
    "deit-ti16": ModelConfig("deit", img_size=224, patch_size=16, num_classes=1000, dim=192, depth=12, heads=3,
                             mlp_ratio=4),
    "deit-s16": ModelConfig("deit", img_size=224, patch_size=16, num_classes=1000, dim=384, depth=12, heads=6,
                            mlp_ratio=4),
    # The bundled CIFAR-10 backbone (``load_pretrained``; trained by ``edge_lbp.export.pretrain``): 1.2 M parameters,
    # 4.8 MB in float32, and small enough to pretrain in about half an hour on two CPU cores.
    "vit-c10": ModelConfig("vit", dim=128, depth=6, heads=4, mlp_ratio=4),
}
# Presets with bundled weights: preset name -> file in ``edge_lbp/assets``.
PRETRAINED = {"vit-c10": "vit_c10.safetensors"}


class Attention(nn.Module):
    """timm-style multi-head self-attention on (batch, tokens, dim); ``tokens`` is fixed at construction."""

    def __init__(self, dim, heads, tokens):
        super().__init__()
        self.dim, self.heads, self.tokens, self.scale = dim, heads, tokens, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, bias=None, groups=1):
        """``bias`` (groups, heads, tokens, tokens) is added to the logits; consecutive batch entries cycle through
        its ``groups`` (Swin: the windows of one image)."""
        n, h = self.tokens, self.heads
        qkv = self.qkv(x).reshape(-1, n, 3, h, self.dim // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if bias is not None:
            attn = (attn.reshape(-1, groups, h, n, n) + bias).reshape(-1, h, n, n)
        x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(-1, n, self.dim))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block on (batch, tokens, dim)."""

    def __init__(self, dim, heads, mlp_ratio, tokens):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads, tokens)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, dim * mlp_ratio)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, cfg, dim):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, dim, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class ViT(nn.Module):
    """ViT (one CLS token) or, with ``distilled``, DeiT (CLS + distillation token, the two heads averaged)."""

    def __init__(self, cfg, distilled=False):
        super().__init__()
        grid = cfg.img_size // cfg.patch_size
        self.extra_tokens = 2 if distilled else 1
        self.grid = (grid, grid)
        self.patch_embed = PatchEmbed(cfg, cfg.dim)
        self.tokens = nn.Parameter(torch.randn(1, self.extra_tokens, cfg.dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, self.extra_tokens + grid * grid, cfg.dim) * 0.02)
        n = self.extra_tokens + grid * grid
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_ratio, n) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        self.head_dist = nn.Linear(cfg.dim, cfg.num_classes) if distilled else None

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.tokens.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        if self.head_dist is None:
            return self.head(x[:, 0])
        return (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2


def _window_shift_mask(side, window, shift):
    """Additive attention mask (windows, w*w, w*w) that keeps shifted windows from mixing wrapped-around regions."""
    region = torch.zeros(side, side)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for i, rows in enumerate(cuts):
        for j, cols in enumerate(cuts):
            region[rows, cols] = i * 3 + j
    r = region.reshape(side // window, window, side // window, window).permute(0, 2, 1, 3).reshape(-1, window ** 2)
    return (r[:, :, None] != r[:, None, :]).float() * -100.0


class SwinBlock(nn.Module):
    """Window attention over non-overlapping ``window``x``window`` windows (cyclically shifted when ``shift`` > 0),
    with a learned relative-position bias. Inside attention the batch is batch x windows and the grid is a window."""

    def __init__(self, dim, heads, mlp_ratio, side, window, shift, merge=None):
        super().__init__()
        # The stage's downsampling lives in its first block, so "block i" names everything under ``blocks.<i>.``.
        self.merge = merge
        self.dim, self.side, self.window, self.shift = dim, side, window, shift
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads, window * window)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, dim * mlp_ratio)
        self.rel_bias = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]) + window - 1
        self.register_buffer("rel_index", rel[0] * (2 * window - 1) + rel[1], persistent=False)
        mask = _window_shift_mask(side, window, shift) if shift else None
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x):
        if self.merge is not None:
            x = self.merge(x)
        s, w, c = self.side, self.window, self.dim
        y = self.norm1(x).reshape(-1, s, s, c)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), dims=(1, 2))
        y = y.reshape(-1, s // w, w, s // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, c)
        bias = self.rel_bias[self.rel_index].permute(2, 0, 1).unsqueeze(0)  # 1, heads, w*w, w*w
        if self.mask is None:
            y = self.attn(y, bias)
        else:
            y = self.attn(y, bias + self.mask.unsqueeze(1), groups=(s // w) ** 2)
        y = y.reshape(-1, s // w, s // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, s, s, c)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), dims=(1, 2))
        x = x + y.reshape(-1, s * s, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> one token with twice the width (Swin's downsampling, as reshapes only)."""

    def __init__(self, dim, side):
        super().__init__()
        self.dim, self.side = dim, side
        self.norm, self.reduction = nn.LayerNorm(4 * dim), nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):
        s, c = self.side, self.dim
        x = x.reshape(-1, s // 2, 2, s // 2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(-1, (s // 2) ** 2, 4 * c)
        return self.reduction(self.norm(x))


class Swin(nn.Module):
    """Patch embedding, then stages of window-attention blocks (each stage after the first halves the grid with
    PatchMerging), final norm, token mean, head."""

    def __init__(self, cfg):
        super().__init__()
        side, dim = cfg.img_size // cfg.patch_size, cfg.dim
        self.patch_embed = PatchEmbed(cfg, dim)
        self.blocks = nn.ModuleList()
        for stage, depth in enumerate(cfg.stages):
            merge = PatchMerging(dim, side) if stage else None
            if merge is not None:
                side, dim = side // 2, dim * 2
            window = min(cfg.window, side)
            for i in range(depth):
                shift = window // 2 if cfg.shift and i % 2 and window < side else 0
                blk = SwinBlock(dim, cfg.heads, cfg.mlp_ratio, side, window, shift, merge if i == 0 else None)
                self.blocks.append(blk)
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, cfg.num_classes)

    def forward(self, x):
        x = self.patch_embed(x)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x).mean(dim=1))


class Pool3x3(nn.Module):
    """3x3 stride-1 average pooling without padded zeros in the average (EfficientFormer's token mixer), as a
    fixed depthwise convolution: ORT 1.19's CPU AveragePoolGrad returns an empty tensor, so AveragePool cannot be
    trained through, while ConvGrad works."""

    def __init__(self, dim, side):
        super().__init__()
        self.register_buffer("kernel", torch.ones(dim, 1, 3, 3), persistent=False)
        count = nn.functional.conv2d(torch.ones(1, 1, side, side), torch.ones(1, 1, 3, 3), padding=1)
        self.register_buffer("inv_count", 1.0 / count, persistent=False)

    def forward(self, x):
        return nn.functional.conv2d(x, self.kernel, padding=1, groups=self.kernel.shape[0]) * self.inv_count


class Meta4D(nn.Module):
    """EfficientFormer 4-D block: pooling token mixer, then an MLP of 1x1 convolutions on (B, C, H, W)."""

    def __init__(self, dim, mlp_ratio, side):
        super().__init__()
        self.pool = Pool3x3(dim, side)
        # No conv bias before a BatchNorm: it cancels out, so its gradient is zero up to rounding, and AdamW would
        # turn that rounding noise into full-size steps.
        self.fc1 = nn.Conv2d(dim, dim * mlp_ratio, 1, bias=False)
        self.norm1, self.act = nn.BatchNorm2d(dim * mlp_ratio), nn.GELU()
        self.fc2 = nn.Conv2d(dim * mlp_ratio, dim, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(dim)
        self.scale1 = nn.Parameter(torch.full((dim, 1, 1), 1e-2))
        self.scale2 = nn.Parameter(torch.full((dim, 1, 1), 1e-2))

    def forward(self, x):
        x = x + self.scale1 * (self.pool(x) - x)
        return x + self.scale2 * self.norm2(self.fc2(self.act(self.norm1(self.fc1(x)))))


def _conv_bn(cin, cout, act=True):
    layers = [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if act else nn.Sequential(*layers)


class EfficientFormer(nn.Module):
    """Stem (two stride-2 convs), 4-D stages separated by stride-2 downsampling convs, then the last stage's map
    flattened to tokens for ``depth`` 3-D attention blocks. The stem stride is 4 whatever ``patch_size`` says."""

    def __init__(self, cfg):
        super().__init__()
        dim, side = cfg.dim, cfg.img_size // 4
        layers = [_conv_bn(cfg.in_chans, dim // 2), _conv_bn(dim // 2, dim)]
        for stage, depth in enumerate(cfg.stages):
            if stage:
                layers.append(_conv_bn(dim, dim * 2, act=False))
                dim, side = dim * 2, side // 2
            layers.extend(Meta4D(dim, cfg.mlp_ratio, side) for _ in range(depth))
        self.stages = nn.Sequential(*layers)
        self.extra_tokens = 0
        self.grid = (side, side)
        self.blocks = nn.ModuleList(Block(dim, cfg.heads, cfg.mlp_ratio, side * side) for _ in range(cfg.depth))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, cfg.num_classes)

    def forward(self, x):
        x = self.stages(x).flatten(2).transpose(1, 2)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x).mean(dim=1))


_FAMILIES = {
    "vit": ViT,
    "deit": lambda cfg: ViT(cfg, distilled=True),
    "swin": Swin,
    "efficientformer": EfficientFormer,
}


def build_model(name_or_config, **overrides):
    """A model from a preset name (``PRESETS``) or a ``ModelConfig``; ``overrides`` replace config fields."""
    if isinstance(name_or_config, ModelConfig):
        cfg = name_or_config
    elif name_or_config in PRESETS:
        cfg = PRESETS[name_or_config]
    else:
        raise ValueError(f"unknown model {name_or_config!r}; presets: {', '.join(sorted(PRESETS))}")
    cfg = replace(cfg, **overrides)
    if cfg.family not in _FAMILIES:
        raise ValueError(f"unknown family {cfg.family!r}; families: {', '.join(_FAMILIES)}")
    model = _FAMILIES[cfg.family](cfg)
    model.config = cfg
    return model


def load_pretrained(name="vit-c10", num_classes=None):
    """Preset ``name`` with its bundled weights (``PRETRAINED``). With another ``num_classes`` the head is new:
    initialised from seed 0 (the same head on every call), everything else loaded from the file."""
    from importlib.resources import as_file, files

    from safetensors.torch import load_file

    if name not in PRETRAINED:
        raise ValueError(f"no bundled weights for {name!r}; available: {', '.join(sorted(PRETRAINED))}")
    cfg = PRESETS[name]
    num_classes = cfg.num_classes if num_classes is None else num_classes
    # A private RNG stream: the new head is reproducible and the caller's global torch RNG is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(name, num_classes=num_classes)
    with as_file(files("edge_lbp") / "assets" / PRETRAINED[name]) as path:
        state = load_file(path)
    if num_classes != cfg.num_classes:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    expected_missing = [] if num_classes == cfg.num_classes else ["head.bias", "head.weight"]
    if sorted(missing) != expected_missing or unexpected:
        raise ValueError(f"{PRETRAINED[name]} does not match preset {name!r}: missing {missing}, "
                         f"unexpected {unexpected}")
    return model
