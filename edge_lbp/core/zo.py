"""Zeroth-order (ZO) optimisation, SPSA as MeZO runs it: the perturbation is regenerated from its seed, never stored.

One probe with seed ``s``: ``z ~ N(0, I)`` over the ZO parameters, drawn from ``s``; the loss at ``θ + εz`` and at
``θ - εz`` (two forward passes, no activation kept for a backward pass); ``g = (L+ - L-) / 2ε`` estimates the
directional derivative ``zᵀ∇L``, and ``g z`` is an unbiased estimate of ``∇L`` for a quadratic loss (exactly
``E[z zᵀ] ∇L``; to ``O(ε²)`` otherwise). The parameters are perturbed and restored in place, one tensor at a time,
so the only extra memory is one tensor-sized draw. The restore ``θ + εz - 2εz + εz`` rounds differently from
``θ`` in the last bit; it is deterministic, so a run and its resume from a checkpoint stay bit-identical.

numpy only: the device side (``edge_lbp.methods.zo_hybrid.session``) and the tests use it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

_KEY = 0x5A0  # separates ZO draws from every other stream derived from the same seed


@dataclass(frozen=True)
class ZOConfig:
    """Hyper-parameters of the ZO part (the first-order part keeps the artifact's optimizer and ``lr``).

    ``eps``: perturbation scale ε (MeZO's 1e-3); ``probes``: SPSA probes per step, averaged (2 forward passes
    each); ``lr``: the peak learning rate of the ZO part's plain SGD update, scaled by the same schedule as the
    first-order part. The default was chosen on the bundled backbone adapted to cifar100_10cls (seed 0, zo-hybrid:2,
    10 epochs: ZO lr 0, 1e-6, 1e-5, 1e-4, 1e-3 gave 63.3, 63.6, 64.3, 66.2, 40.6 % validation accuracy): at 1e-3
    the ZO noise erodes the pretrained blocks.
    """

    eps: float = field(default=1e-3, metadata={"help": "SPSA perturbation scale"})
    probes: int = field(default=1, metadata={"help": "SPSA probes per step"})
    lr: float = field(default=1e-4, metadata={"help": "peak learning rate of the ZO part, plain SGD, same schedule"})

    def __post_init__(self):
        if not (math.isfinite(self.eps) and self.eps > 0 and math.isfinite(self.lr) and self.lr >= 0):
            raise ValueError(f"ZO eps must be > 0 and ZO lr >= 0 (both finite); got {self.eps}, {self.lr}")
        if int(self.probes) != self.probes or self.probes < 1:
            raise ValueError(f"ZO probes must be a whole number >= 1; got {self.probes}")

    @classmethod
    def of(cls, value) -> "ZOConfig":
        """A ZOConfig from ``None`` (defaults), a ZOConfig, or a mapping (a checkpoint's record)."""
        if value is None or isinstance(value, cls):
            return value or cls()
        return cls(**dict(value))

    def record(self) -> dict:
        return asdict(self)


def probe_key(seed: int, step: int, micro: int, probe: int) -> tuple:
    """What a probe's perturbation is drawn from: the run's seed, the optimizer step, the micro-batch within the
    step and the probe (a resumed run regenerates the same perturbations)."""
    return (int(seed), _KEY, int(step), int(micro), int(probe))


def perturbations(key: Sequence[int], params: Mapping[str, np.ndarray], names: Sequence[str]):
    """Yield ``(name, z)``: standard normal float32 draws shaped like each parameter, in ``names`` order, from
    ``key``. The same key and names give the same draws bit for bit."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(key))))
    for name in names:
        yield name, rng.standard_normal(params[name].shape, dtype=np.float32)


def add_perturbation(params, names, key, scale: float) -> None:
    """``θ += scale · z(key)`` in place, one tensor at a time."""
    scale = np.float32(scale)
    for name, z in perturbations(key, params, names):
        z *= scale
        params[name] += z


def spsa_probe(loss: Callable[[], float], params, names, key, eps: float):
    """``(g, L+, L-)``: the projected gradient ``(L+ - L-) / 2ε`` along ``z(key)``; ``params`` end where they
    started (up to the last-bit rounding of the restore)."""
    add_perturbation(params, names, key, eps)
    plus = float(loss())
    add_perturbation(params, names, key, -2.0 * eps)
    minus = float(loss())
    add_perturbation(params, names, key, eps)
    return (plus - minus) / (2.0 * eps), plus, minus
