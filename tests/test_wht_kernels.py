"""The Numba kernels against the dense-matrix reference, on grids that need padding."""
import numpy as np
import pytest

import lbp_reference as ref
from edge_lbp.core.wht import Projector

CASES = [
    # (height, width, extra, block, batch, channels, selection)
    (7, 7, 0, 8, 1, 5, "lp-tri:4"),
    (14, 14, 1, 8, 3, 13, "lp-tri:4"),
    (13, 9, 2, 8, 3, 300, "lp-tri:6"),  # 300 channels: crosses a 256-channel chunk
    (13, 9, 1, 4, 1, 7, "full"),
    (7, 7, 2, 4, 3, 33, [(0, 0), (3, 1), (1, 2)]),
    (3, 3, 1, 8, 1, 6, "lp-tri:3"),  # pads wider than the grid: reflection wraps
]


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("padding", ["reflect", "zero"])
@pytest.mark.parametrize("h, w, e, k, b, c, sel", CASES)
def test_projection_matches_reference(h, w, e, k, b, c, sel, padding):
    proj = Projector.of((h, w), e, k, sel)
    x = _rand(np.random.default_rng(0), b, e + h * w, c)
    m = ref.projection_matrix(h, w, e, k, proj.selection.pairs, padding, scale=0.25)
    got = proj.project(x, scale=0.25, padding=padding)
    np.testing.assert_allclose(got, ref.apply(m, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("h, w, e, k, b, c, sel", CASES)
def test_reconstruction_matches_reference(h, w, e, k, b, c, sel):
    proj = Projector.of((h, w), e, k, sel)
    coeffs = _rand(np.random.default_rng(1), b, proj.rows, c)
    m = ref.reconstruction_matrix(h, w, e, k, proj.selection.pairs)
    np.testing.assert_allclose(proj.reconstruct(coeffs), ref.apply(m, coeffs), rtol=1e-5, atol=1e-5)


def test_preallocated_output_is_filled_and_returned():
    proj = Projector.of((13, 9), 1, 8, "lp-tri:4")
    x = _rand(np.random.default_rng(2), 2, proj.geometry.tokens, 11)
    out = np.full((2, proj.rows, 11), np.nan, np.float32)
    assert proj.project(x, out=out) is out
    np.testing.assert_allclose(out, proj.project(x), rtol=0, atol=0)


def test_bad_shapes_and_buffers_raise_clear_errors():
    proj = Projector.of((14, 14), 1, 8, "lp-tri:4")
    with pytest.raises(ValueError, match=r"has 196 tokens but the geometry needs E \+ H\*W = 1 \+ 14\*14 = 197"):
        proj.project(np.zeros((1, 196, 4), np.float32))
    with pytest.raises(ValueError, match=r"\(batch, tokens, channels\)"):
        proj.project(np.zeros((197, 4), np.float32))
    with pytest.raises(ValueError, match="buffer must be C-contiguous float32"):
        proj.project(np.zeros((1, 197, 4), np.float32), out=np.zeros((1, proj.rows, 4), np.float64))
    with pytest.raises(ValueError, match="rows per sample"):
        proj.reconstruct(np.zeros((1, 5, 4), np.float32))
    with pytest.raises(ValueError, match="padding"):
        proj.project(np.zeros((1, 197, 4), np.float32), padding="edge")
