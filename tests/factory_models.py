"""A model outside the built-in presets, loaded by ``edge-lbp export factory_models:tiny_mixer`` in the tests."""
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
