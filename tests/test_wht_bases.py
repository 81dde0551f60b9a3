import numpy as np
import pytest

import lbp_reference as ref
from edge_lbp.core.bases import Selection, hadamard_sequency, parse_selection
from edge_lbp.core.geometry import Geometry, parse_grid


@pytest.mark.parametrize("k", [2, 4, 8, 16])
def test_hadamard_rows_are_in_sequency_order(k):
    h = hadamard_sequency(k)
    assert h.dtype == np.float32 and h.shape == (k, k)
    assert set(np.unique(h)) == {-1.0, 1.0}
    sign_changes = [(np.diff(row) != 0).sum() for row in h]
    assert sign_changes == list(range(k))
    np.testing.assert_array_equal(h @ h.T, k * np.eye(k))
    np.testing.assert_array_equal(h, ref.hadamard(k))


@pytest.mark.parametrize("order, rank", [(1, 1), (2, 3), (3, 6), (4, 10), (6, 21), (8, 36)])
def test_low_pass_triangle_ranks(order, rank):
    sel = parse_selection(f"lp-tri:{order}", 8)
    assert sel.rank == rank
    assert set(sel.pairs) == set(ref.lp_tri_pairs(order, 8))


def test_full_and_explicit_selections():
    full = parse_selection("full", 4)
    assert sorted(full.pairs) == [(u, v) for u in range(4) for v in range(4)]
    assert parse_selection("FULL", 8).rank == 64
    sel = parse_selection([(0, 0), (2, 1)], 4)
    assert sel.pairs == ((0, 0), (2, 1)) and sel.rank == 2
    assert parse_selection(sel, 4) is sel


def test_bases_are_orthogonal_with_norm_k_squared():
    b = parse_selection("full", 8).bases(8).reshape(64, 64)
    np.testing.assert_array_equal(b @ b.T, 64 * np.eye(64))


@pytest.mark.parametrize("spec, block, message", [
    ("lp-tri:4", 3, "power of two"),
    ("lp-tri:4", 6, "power of two"),
    ("lp-tri:4", 1, "power of two"),
    ("lp-tri:0", 8, "order must be >= 1"),
    ("low-pass", 8, "unknown LBP selection"),
    ([(0, 8)], 8, "outside the 8x8 bases"),
    ([(0, 0), (0, 0)], 8, "repeats a pair"),
    ([], 8, "at least one"),
])
def test_bad_selections_raise_clear_errors(spec, block, message):
    with pytest.raises(ValueError, match=message):
        parse_selection(spec, block)


def test_selection_checked_against_block():
    with pytest.raises(ValueError, match="outside the 4x4"):
        Selection(((5, 0),), "custom").check(4)


@pytest.mark.parametrize("grid, k, blocks, pads", [
    ((14, 14), 8, (2, 2), (1, 1)),
    ((13, 9), 8, (2, 2), (2, 4)),
    ((7, 7), 4, (2, 2), (1, 1)),
    ((16, 8), 8, (2, 1), (0, 0)),
    ((3, 3), 8, (1, 1), (3, 3)),
])
def test_geometry_blocks_and_centred_padding(grid, k, blocks, pads):
    g = Geometry.of(grid, 1, k)
    assert (g.blocks_h, g.blocks_w) == blocks
    assert (g.pad_top, g.pad_left) == pads
    assert g.tokens == 1 + grid[0] * grid[1]
    assert g.rows(10) == 1 + 10 * blocks[0] * blocks[1]


def test_grid_parsing():
    assert parse_grid("14x14") == (14, 14)
    assert parse_grid("13X9") == (13, 9)
    for bad in ("14", "14x", "axb", "0x4", (3, 4, 5)):
        with pytest.raises(ValueError, match="grid"):
            parse_grid(bad)


def test_negative_extra_tokens_rejected():
    with pytest.raises(ValueError, match="extra tokens"):
        Geometry.of((4, 4), -1)
