"""Walsh-Hadamard bases in sequency order and the selections of 2-D bases that define an LBP rank.

Row ``u`` of the sequency-ordered Hadamard matrix changes sign exactly ``u`` times, so low ``u`` means low
spatial frequency. A 2-D basis ``B[u, v] = outer(h_u, h_v)`` is a ``k x k`` pattern of +-1 entries.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Tuple, Union

import numpy as np

SelectionSpec = Union[str, "Selection", Iterable[Tuple[int, int]]]


def check_block(block: int) -> int:
    if not isinstance(block, (int, np.integer)) or block < 2 or block & (block - 1):
        raise ValueError(f"block size k={block!r} must be a power of two >= 2 (e.g. 4, 8, 16)")
    return int(block)


def hadamard_sequency(block: int) -> np.ndarray:
    """The ``k x k`` Hadamard matrix (entries +-1, float32) with rows in sequency order.

    Row ``u`` is Walsh function ``u``: the natural-order (Sylvester) row whose index is the bit reversal of the
    Gray code of ``u``.
    """
    k = check_block(block)
    bits = k.bit_length() - 1
    idx = np.arange(k)
    gray = idx ^ (idx >> 1)
    natural = np.zeros(k, dtype=np.int64)
    for b in range(bits):
        natural |= ((gray >> b) & 1) << (bits - 1 - b)
    # Sylvester entry (i, j) is (-1)^popcount(i & j).
    parity = np.array([[bin(int(n) & j).count("1") & 1 for j in range(k)] for n in natural])
    return (1 - 2 * parity).astype(np.float32)


@dataclass(frozen=True)
class Selection:
    """An ordered list of ``(u, v)`` sequency pairs: which 2-D bases the low-rank backward keeps."""

    pairs: Tuple[Tuple[int, int], ...]
    name: str

    @property
    def rank(self) -> int:
        return len(self.pairs)

    def check(self, block: int) -> "Selection":
        k = check_block(block)
        bad = [p for p in self.pairs if not (0 <= p[0] < k and 0 <= p[1] < k)]
        if bad:
            raise ValueError(f"selection {self.name!r} has pairs {bad} outside the {k}x{k} bases of block size {k}")
        return self

    def bases(self, block: int) -> np.ndarray:
        """The selected 2-D bases, shape ``(r, k, k)``, entries +-1."""
        self.check(block)
        h = hadamard_sequency(block)
        return np.stack([np.outer(h[u], h[v]) for u, v in self.pairs]).astype(np.float32)


def low_pass_triangle(order: int, block: int) -> Selection:
    """``lp-tri:o``: all ``(u, v)`` with ``u + v < o``, ordered by total sequency, then by ``u``."""
    if order < 1:
        raise ValueError(f"lp-tri order must be >= 1, got {order}")
    pairs = tuple((u, t - u) for t in range(order) for u in range(t + 1) if u < block and t - u < block)
    return Selection(pairs, f"lp-tri:{order}")


def sequency_order(block: int) -> Tuple[Tuple[int, int], ...]:
    """All ``k^2`` pairs, lowest total sequency first (the order of ``lp-tri`` and of ``energy:r``'s start)."""
    return low_pass_triangle(2 * block - 1, block).pairs


_LP_TRI = re.compile(r"^lp-tri:(\d+)$")
_ENERGY = re.compile(r"^energy:(\d+)$")
ENERGY_PREFIX = "energy:"


def is_adaptive(name: str) -> bool:
    """Whether a selection's bases are re-chosen during training (``energy:r``, see ``edge_lbp.core.energy``)."""
    return name.startswith(ENERGY_PREFIX)


def parse_selection(spec: SelectionSpec, block: int) -> Selection:
    """Turn ``"lp-tri:o"``, ``"full"``, a :class:`Selection` or a list of ``(u, v)`` pairs into a checked selection."""
    k = check_block(block)
    if isinstance(spec, Selection):
        return spec.check(k)
    if isinstance(spec, str):
        text = spec.strip().lower()
        match = _LP_TRI.match(text)
        if match:
            return low_pass_triangle(int(match.group(1)), k)
        match = _ENERGY.match(text)
        if match:  # the start: the r lowest sequencies, until the device has measured the gradient's energy
            rank = int(match.group(1))
            if not 1 <= rank <= k * k:
                raise ValueError(f"energy rank must be 1..{k * k} for block {k}, got {rank}")
            return Selection(sequency_order(k)[:rank], f"{ENERGY_PREFIX}{rank}")
        if text == "full":
            return Selection(sequency_order(k), "full")
        raise ValueError(f"unknown LBP selection {spec!r}: expected 'lp-tri:<order>', 'energy:<rank>', 'full' or "
                         "a list of (u, v) pairs")
    pairs = tuple((int(u), int(v)) for u, v in spec)
    if not pairs:
        raise ValueError("an LBP selection needs at least one (u, v) pair")
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"LBP selection {list(pairs)} repeats a pair")
    return Selection(pairs, "pairs:" + ",".join(f"{u}.{v}" for u, v in pairs)).check(k)
