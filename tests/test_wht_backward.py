"""linear_backward against exact backprop (Parseval), the reference, and its behaviour over rank."""
import numpy as np
import pytest

import lbp_reference as ref
from edge_lbp.core.bases import parse_selection
from edge_lbp.core.wht import Projector, linear_backward, lowrank_backward


def _layer(rng, b, n, ci, co):
    x = rng.standard_normal((b, n, ci)).astype(np.float32)
    gy = rng.standard_normal((b, n, co)).astype(np.float32)
    w = rng.standard_normal((co, ci)).astype(np.float32)
    return x, gy, w


def _exact(x, gy, w):
    x, gy, w = (a.astype(np.float64) for a in (x, gy, w))
    return gy @ w, np.einsum("bno,bnc->oc", gy, x), gy.sum(axis=(0, 1))


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("k", [4, 8])
@pytest.mark.parametrize("extra", [0, 1, 2])
@pytest.mark.parametrize("grid, b, ci, co", [((8, 8), 2, 12, 20), ((16, 8), 1, 33, 7), ((16, 16), 3, 24, 40)])
def test_full_selection_is_exact_backprop(k, extra, grid, b, ci, co):
    x, gy, w = _layer(np.random.default_rng(k + extra), b, extra + grid[0] * grid[1], ci, co)
    got = linear_backward(x, gy, w, grid=grid, extra_tokens=extra, block=k, selection="full")
    for g, e in zip(got, _exact(x, gy, w)):
        assert g.dtype == np.float32 and g.shape == e.shape
        assert _rel(g, e) < 1e-5


def test_zero_padded_gradient_makes_full_exact_on_any_grid():
    x, gy, w = _layer(np.random.default_rng(3), 2, 1 + 13 * 9, 10, 6)
    exact = _exact(x, gy, w)
    zero = linear_backward(x, gy, w, grid=(13, 9), extra_tokens=1, selection="full", grad_padding="zero")
    for g, e in zip(zero, exact):
        assert _rel(g, e) < 1e-5
    # Reflection reproduces the padded problem instead, which differs from the exact gradient here.
    reflect = linear_backward(x, gy, w, grid=(13, 9), extra_tokens=1, selection="full")
    assert _rel(reflect[1], exact[1]) > 1e-3


@pytest.mark.parametrize("padding", ["reflect", "zero"])
@pytest.mark.parametrize("grid, extra, k, sel", [((14, 14), 1, 8, "lp-tri:4"), ((13, 9), 2, 4, "lp-tri:2"),
                                                 ((7, 7), 0, 8, "lp-tri:6")])
def test_low_rank_matches_reference(grid, extra, k, sel, padding):
    x, gy, w = _layer(np.random.default_rng(5), 3, extra + grid[0] * grid[1], 19, 11)
    got = linear_backward(x, gy, w, grid=grid, extra_tokens=extra, block=k, selection=sel, grad_padding=padding)
    pairs = parse_selection(sel, k).pairs
    want = ref.linear_backward(x, gy, w, *grid, extra, k, pairs, padding)
    for g, e in zip(got, want):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4 * np.abs(e).max())


def test_extra_tokens_get_exact_gradients():
    x, gy, w = _layer(np.random.default_rng(6), 2, 2 + 14 * 14, 9, 5)
    gx, _, _ = linear_backward(x, gy, w, grid=(14, 14), extra_tokens=2, selection="lp-tri:2")
    np.testing.assert_allclose(gx[:, :2], gy[:, :2] @ w, rtol=1e-5, atol=1e-6)


def test_unwanted_gradients_are_skipped_and_the_rest_unchanged():
    x, gy, w = _layer(np.random.default_rng(8), 2, 1 + 8 * 8, 6, 5)
    projector = Projector.of((8, 8), 1, 4, "lp-tri:3")
    _, gw, _ = linear_backward(x, gy, w, grid=(8, 8), extra_tokens=1, block=4, selection="lp-tri:3")
    only_gw = lowrank_backward(projector.project(x), gy, w, projector, input_grad=False, bias_grad=False)
    assert only_gw[0] is None and only_gw[2] is None
    np.testing.assert_array_equal(only_gw[1], gw)


def _smooth(rng, b, h, w, c):
    """Low-frequency fields: a few cosines with decaying amplitude, random per channel."""
    yy, xx = np.meshgrid(np.arange(h) / h, np.arange(w) / w, indexing="ij")
    out = np.zeros((b, h * w, c))
    for fy in range(4):
        for fx in range(4):
            wave = np.cos(np.pi * (fy * yy + fx * xx + rng.random())).ravel()
            out += wave[None, :, None] * rng.standard_normal((b, 1, c)) / (1 + fy + fx) ** 2
    return out.astype(np.float32)


def test_fidelity_of_weight_gradient_grows_with_rank():
    rng = np.random.default_rng(7)
    x, gy = _smooth(rng, 2, 16, 16, 24), _smooth(rng, 2, 16, 16, 12)
    w = rng.standard_normal((12, 24)).astype(np.float32)
    exact = _exact(x, gy, w)[1].ravel()
    cosines = []
    for order in (1, 2, 4, 6, 8):
        gw = linear_backward(x, gy, w, grid=(16, 16), selection=f"lp-tri:{order}")[1].ravel()
        cosines.append(gw @ exact / np.linalg.norm(gw) / np.linalg.norm(exact))
    assert all(a < b for a, b in zip(cosines, cosines[1:])), cosines
    assert cosines[-1] > 0.99


@pytest.mark.parametrize("kwargs, message", [
    (dict(grid=(14, 14), extra_tokens=0), "needs E \\+ H\\*W = 0 \\+ 14\\*14 = 196"),
    (dict(grid=(14, 14), extra_tokens=1, block=6), "power of two"),
    (dict(grid="14by14", extra_tokens=1), "not of the form HxW"),
    (dict(grid=(14, 14), extra_tokens=1, selection="lp-tri:x"), "unknown LBP selection"),
])
def test_bad_geometry_raises_clear_error(kwargs, message):
    x, gy, w = _layer(np.random.default_rng(8), 1, 197, 4, 3)
    with pytest.raises(ValueError, match=message):
        linear_backward(x, gy, w, **kwargs)


def test_mismatched_weight_raises_clear_error():
    x, gy, w = _layer(np.random.default_rng(9), 1, 65, 4, 3)
    with pytest.raises(ValueError, match="do not fit a linear layer with weight"):
        linear_backward(x, gy, w.T, grid=(8, 8), extra_tokens=1)
