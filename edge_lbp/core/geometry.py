"""Token geometry of one linear layer: E extra tokens, then an H x W grid cut into k x k blocks after padding."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple, Union

from edge_lbp.core import defaults
from edge_lbp.core.bases import check_block

PADDING_MODES = ("reflect", "zero")


def parse_grid(grid: Union[str, Sequence[int]]) -> Tuple[int, int]:
    """``"14x14"`` or ``(14, 14)`` -> ``(14, 14)``."""
    if isinstance(grid, str):
        parts = grid.lower().replace("*", "x").split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"grid {grid!r} is not of the form HxW (e.g. 14x14)")
        grid = (int(parts[0]), int(parts[1]))
    if len(grid) != 2:
        raise ValueError(f"grid {tuple(grid)!r} must have two sides (H, W)")
    h, w = (int(g) for g in grid)
    if h < 1 or w < 1:
        raise ValueError(f"grid {h}x{w} must have positive sides")
    return h, w


@dataclass(frozen=True)
class Geometry:
    """Where the tokens of a ``(B, N, C)`` activation sit, and how the grid splits into blocks.

    Padding is centred: the top gets ``ceil(total / 2)`` rows, the bottom the rest (likewise left / right).
    """

    height: int
    width: int
    extra: int = 0
    block: int = defaults.BLOCK

    def __post_init__(self):
        parse_grid((self.height, self.width))
        check_block(self.block)
        if self.extra < 0:
            raise ValueError(f"extra tokens must be >= 0, got {self.extra}")

    @classmethod
    def of(cls, grid, extra_tokens: int = 0, block: int = defaults.BLOCK) -> "Geometry":
        h, w = parse_grid(grid)
        return cls(h, w, int(extra_tokens), check_block(block))

    @property
    def tokens(self) -> int:
        return self.extra + self.height * self.width

    @property
    def blocks_h(self) -> int:
        return -(-self.height // self.block)

    @property
    def blocks_w(self) -> int:
        return -(-self.width // self.block)

    @property
    def blocks(self) -> int:
        return self.blocks_h * self.blocks_w

    @property
    def pad_top(self) -> int:
        total = self.blocks_h * self.block - self.height
        return (total + 1) // 2

    @property
    def pad_left(self) -> int:
        total = self.blocks_w * self.block - self.width
        return (total + 1) // 2

    def rows(self, rank: int) -> int:
        """Rows per sample of a projected tensor: the extra tokens kept as they are, then ``rank`` per block."""
        return self.extra + rank * self.blocks

    def check_tokens(self, n: int, what: str = "activation") -> None:
        if n != self.tokens:
            raise ValueError(
                f"{what} has {n} tokens but the geometry needs E + H*W = {self.extra} + "
                f"{self.height}*{self.width} = {self.tokens}"
            )

    def __str__(self) -> str:
        return f"grid {self.height}x{self.width}, E={self.extra}, k={self.block}"
