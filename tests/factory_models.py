"""Models outside the built-in presets, loaded by ``edge-lbp export factory_models:<factory>`` in the tests."""
import torch
from torch import nn


class TinyMixer(nn.Module):
    """Patch embedding, one residual token MLP, mean pooling, head; no ``config``, so the input shape is given."""

    def __init__(self, num_classes=10, dim=16):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 2, stride=2)
        self.norm, self.fc, self.head = nn.LayerNorm(dim), nn.Linear(dim, dim), nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = x + self.fc(self.norm(x))
        return self.head(x.mean(dim=1))


def tiny_mixer(num_classes=10):
    return TinyMixer(num_classes)


def fixed_classes():
    """A factory with no num_classes parameter: ``--num-classes`` cannot reach it."""
    return TinyMixer(3)


class MhaBlock(nn.Module):
    """A pre-norm transformer block in torchvision's ViT style, attention by ``nn.MultiheadAttention``."""

    def __init__(self, dim, heads, batch_first):
        super().__init__()
        self.batch_first = batch_first
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=batch_first)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        h = self.norm1(x) if self.batch_first else self.norm1(x).transpose(0, 1)
        h = self.attn(h, h, h, need_weights=False)[0]
        x = x + (h if self.batch_first else h.transpose(0, 1))
        return x + self.mlp(self.norm2(x))


class MhaViT(nn.Module):
    """32x32 images in 4x4 patches: CLS + an 8x8 token grid, two blocks (one batch-first, one sequence-first)."""

    def __init__(self, num_classes=10, dim=32):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 65, dim) * 0.02)
        self.blocks = nn.Sequential(MhaBlock(dim, 2, batch_first=True), MhaBlock(dim, 2, batch_first=False))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


def mha_vit(num_classes=10):
    torch.manual_seed(0)
    return MhaViT(num_classes)


class TokenMixer(nn.Module):
    """Takes tokens, not images: (batch, 2 + 8*8, 16), two leading extra tokens (CLS and distillation style)."""

    def __init__(self, num_classes=4, dim=16):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens):
        x = tokens + self.fc2(nn.functional.gelu(self.fc1(self.norm(tokens))))
        return self.head(x[:, 0] + x[:, 1])
