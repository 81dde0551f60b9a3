"""``energy:r``: per layer, the r bases that carry the most energy of the projected output gradient, chosen on
the device while it trains.

Every ``every`` training passes (the first included) a layer's backward also projects its output gradient on all
``k^2`` bases, adds each basis' energy (sum of squares over samples, blocks and channels) to a running average
(``decay`` for the past), and keeps the ``r`` largest for the passes that follow. The selection changes only
after the backward that measured it, so the forward stash and the backward of one pass always use the same
bases. The state (averages, selections, pass counts) goes into checkpoints, so a resumed run selects what the
uninterrupted one would have.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from edge_lbp.core import defaults
from edge_lbp.core.bases import Selection, sequency_order
from edge_lbp.core.wht import Projector


def top_energy(energies: np.ndarray, rank: int, block: int) -> Selection:
    """The ``rank`` pairs of ``sequency_order(block)`` with the largest ``energies`` (ties: lower sequency),
    kept in sequency order."""
    order = sequency_order(block)
    if energies.shape != (len(order),):
        raise ValueError(f"{energies.shape} energies for the {len(order)} bases of block {block}")
    chosen = np.sort(np.argsort(-energies, kind="stable")[:rank])
    return Selection(tuple(order[i] for i in chosen), f"energy:{rank}")


def basis_energies(all_bases: Projector, gy: np.ndarray, padding: str) -> np.ndarray:
    """Energy of the output gradient ``gy (B, N, C)`` in each of the ``k^2`` bases (float64, sequency order)."""
    g = all_bases.geometry
    coeffs = all_bases.project(gy, scale=1.0 / (g.block * g.block), padding=padding)[:, g.extra:]
    per_basis = coeffs.reshape(coeffs.shape[0], all_bases.rank, g.blocks, -1)
    return np.einsum("bspc,bspc->s", per_basis, per_basis, dtype=np.float64)


class LayerEnergy:
    """One layer's running average and current selection."""

    def __init__(self, projector: Projector, every: int, decay: float):
        g = projector.geometry
        self.rank, self.every, self.decay = projector.rank, every, decay
        self.all_bases = Projector.of((g.height, g.width), g.extra, g.block, "full")
        self.projector = projector
        self.energy = np.zeros(len(self.all_bases.selection.pairs), np.float64)
        self.passes = 0

    def observe(self, gy: np.ndarray, padding: str) -> None:
        """After a backward pass: measure on schedule and re-select for the next pass."""
        if self.passes % self.every == 0:
            energy = basis_energies(self.all_bases, gy, padding)
            if np.isfinite(energy).all():  # a diverged pass is rejected by the trainer; keep the average clean
                self.energy = energy if self.passes == 0 else self.decay * self.energy + (1 - self.decay) * energy
                self._select(top_energy(self.energy, self.rank, self.all_bases.geometry.block))
        self.passes += 1

    def _select(self, selection: Selection) -> None:
        g = self.projector.geometry
        self.projector = Projector.of((g.height, g.width), g.extra, g.block, selection)


class AdaptiveBases:
    """The ``energy:r`` layers of one training graph, keyed by their stash tensor (shared by the forward
    projection and the backward node of a layer)."""

    def __init__(self, every: int = defaults.ENERGY_EVERY, decay: float = defaults.ENERGY_DECAY):
        self.every, self.decay = int(every), float(decay)
        self.layers: Dict[str, LayerEnergy] = {}

    def layer(self, key: str, projector: Projector) -> LayerEnergy:
        if key not in self.layers:
            self.layers[key] = LayerEnergy(projector, self.every, self.decay)
        return self.layers[key]

    def state(self) -> Dict[str, np.ndarray]:
        """Arrays that restore every layer exactly (checkpoint tensors)."""
        out = {}
        for key, layer in self.layers.items():
            out[f"{key}.energy"] = layer.energy.copy()
            out[f"{key}.pairs"] = np.array(layer.projector.selection.pairs, np.int64)
            out[f"{key}.passes"] = np.array([layer.passes], np.int64)
        return out

    def set_state(self, state: Dict[str, np.ndarray]) -> None:
        for key, layer in self.layers.items():
            layer.energy = np.array(state[f"{key}.energy"], np.float64)
            layer.passes = int(state[f"{key}.passes"][0])
            pairs = tuple((int(u), int(v)) for u, v in state[f"{key}.pairs"])
            layer._select(Selection(pairs, f"energy:{layer.rank}"))
