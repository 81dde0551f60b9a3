"""Low-rank backpropagation through a linear layer in a 2-D Walsh-Hadamard basis (LBP-WHT).

A projected tensor has ``E + r*P`` rows per sample: the ``E`` extra tokens as they are, then for each selected
basis ``s`` the ``P`` block coefficients (row ``E + s*P + p``). Keeping the extra tokens in the same tensor makes
both backward products one matrix product each, with exact gradients for the extra tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional, Tuple

import numpy as np

from edge_lbp.core import defaults, wht_kernels
from edge_lbp.core.bases import Selection, SelectionSpec, hadamard_sequency, parse_selection
from edge_lbp.core.geometry import PADDING_MODES, Geometry

__all__ = ["Projector", "linear_backward", "lowrank_backward"]


@dataclass(frozen=True)
class Projector:
    """The geometry and selection of one layer, with the constant tables the kernels take."""

    geometry: Geometry
    selection: Selection
    _tables: Tuple[np.ndarray, ...] = field(repr=False, compare=False)

    @classmethod
    def of(cls, grid, extra_tokens: int = 0, block: int = defaults.BLOCK,
           selection: SelectionSpec = defaults.SELECTION) -> "Projector":
        geometry = Geometry.of(grid, extra_tokens, block)
        sel = parse_selection(selection, geometry.block)
        return _projector(geometry, sel)

    @property
    def rank(self) -> int:
        return self.selection.rank

    @property
    def rows(self) -> int:
        """Rows per sample of a projected tensor."""
        return self.geometry.rows(self.rank)

    def project(self, x: np.ndarray, *, scale: float = 1.0, padding: str = "reflect",
                out: Optional[np.ndarray] = None) -> np.ndarray:
        """``(B, N, C)`` tokens -> ``(B, E + r*P, C)``: extra tokens copied, grid blocks projected (times ``scale``)."""
        if padding not in PADDING_MODES:
            raise ValueError(f"padding {padding!r} is not one of {PADDING_MODES}")
        x = _tokens(x, self.geometry, "input")
        out = _output(out, (x.shape[0], self.rows, x.shape[2]), "projection")
        g = self.geometry
        out[:, :g.extra] = x[:, :g.extra]
        wht_kernels.project_grid(x, out, *self._tables, g.extra, g.height, g.width, g.pad_top, g.pad_left,
                             np.float32(scale), padding == "zero")
        return out

    def reconstruct(self, coeffs: np.ndarray, *, out: Optional[np.ndarray] = None) -> np.ndarray:
        """``(B, E + r*P, C)`` coefficients -> ``(B, N, C)`` tokens: the sum of the selected bases, cropped."""
        coeffs = np.ascontiguousarray(coeffs, dtype=np.float32)
        if coeffs.ndim != 3 or coeffs.shape[1] != self.rows:
            raise ValueError(f"coefficients of shape {coeffs.shape} do not have {self.rows} rows per sample "
                             f"(E + r*P for {self.geometry}, r={self.rank})")
        g = self.geometry
        out = _output(out, (coeffs.shape[0], g.tokens, coeffs.shape[2]), "reconstruction")
        out[:, :g.extra] = coeffs[:, :g.extra]
        wht_kernels.reconstruct_grid(coeffs, out, *self._tables, g.extra, g.height, g.width, g.pad_top, g.pad_left)
        return out


@lru_cache(maxsize=256)
def _projector(geometry: Geometry, selection: Selection) -> Projector:
    hmat = hadamard_sequency(geometry.block)
    vlist = sorted({v for _, v in selection.pairs})
    tables = (
        hmat,
        np.array(vlist, dtype=np.int64),
        np.array([u for u, _ in selection.pairs], dtype=np.int64),
        np.array([vlist.index(v) for _, v in selection.pairs], dtype=np.int64),
    )
    return Projector(geometry, selection, tables)


def _tokens(a: np.ndarray, geometry: Geometry, what: str) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.ndim != 3:
        raise ValueError(f"{what} must be (batch, tokens, channels), got shape {a.shape}")
    geometry.check_tokens(a.shape[1], what)
    return a


def _output(out: Optional[np.ndarray], shape, what: str) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"{what} buffer must be C-contiguous float32 of shape {shape}, got {out.dtype} {out.shape}")
    return out


def lowrank_backward(x_hat: np.ndarray, gy: np.ndarray, weight: np.ndarray, projector: Projector, *,
                     grad_padding: str = "reflect", input_grad: bool = True, bias_grad: bool = True,
                     weight_grad_out: Optional[np.ndarray] = None):
    """Gradients of ``y = x W^T + b`` from the stashed projection ``x_hat`` of its input.

    Returns ``(gx, gw, gb)`` with shapes ``(B, N, Ci)``, ``(Co, Ci)``, ``(Co,)``; ``gx`` is None when
    ``input_grad`` is False and ``gb`` when ``bias_grad`` is False (a MatMul has no bias: the graph sums the
    Add's gradient itself). ``weight`` may be a transposed view (BLAS reads it as it is, no copy).
    ``weight_grad_out``: a C-contiguous ``(Co, Ci)`` buffer ``gw`` is written into (and returned) instead of a
    new array.
    """
    gy = _tokens(gy, projector.geometry, "output gradient")
    weight = np.asarray(weight, dtype=np.float32)
    co, ci = weight.shape
    if gy.shape[2] != co or x_hat.shape != (gy.shape[0], projector.rows, ci):
        raise ValueError(f"shapes do not fit a linear layer with weight {weight.shape}: output gradient "
                         f"{gy.shape}, stashed input {x_hat.shape} (expected {(gy.shape[0], projector.rows, ci)})")
    k = projector.geometry.block
    g_hat = projector.project(gy, scale=1.0 / (k * k), padding=grad_padding)
    gb = gy.sum(axis=(0, 1), dtype=np.float32) if bias_grad else None
    # 2-D products: numpy runs a stacked (B, rows, C) @ (C, C') matmul as B small GEMMs, about 3.5x slower here.
    g_flat = g_hat.reshape(-1, co)
    gw = np.matmul(g_flat.T, x_hat.reshape(-1, ci),
                   out=None if weight_grad_out is None else _output(weight_grad_out, (co, ci), "weight gradient"))
    gx = projector.reconstruct((g_flat @ weight).reshape(gy.shape[0], projector.rows, ci)) if input_grad else None
    return gx, gw, gb


def linear_backward(x: np.ndarray, gy: np.ndarray, weight: np.ndarray, *, grid, extra_tokens: int = 0,
                    block: int = defaults.BLOCK, selection: SelectionSpec = defaults.SELECTION,
                    grad_padding: str = "reflect") -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LBP-WHT gradients ``(gx, gw, gb)`` of ``y = x W^T + b``.

    ``x: (B, N, Ci)``, ``gy: (B, N, Co)``, ``weight: (Co, Ci)``, float32, with ``N = extra_tokens + H*W`` for
    ``grid = (H, W)`` (or ``"HxW"``). The extra tokens (CLS, distillation) get exact gradients. ``selection`` is
    ``"lp-tri:<order>"``, ``"full"`` or a list of ``(u, v)`` pairs. ``grad_padding="zero"`` pads the output
    gradient with zeros instead of reflecting it, which makes ``"full"`` exact on any grid.
    """
    projector = Projector.of(grid, extra_tokens, block, selection)
    x_hat = projector.project(x)
    return lowrank_backward(x_hat, gy, weight, projector, grad_padding=grad_padding)
