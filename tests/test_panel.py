"""The register panels of the fused attention's products against float64 numpy, at both lane widths (16 runs
where the CPU has no AVX-512: AVX2, NEON; 32 where it has), and the padding that makes operands fit them."""
import numpy as np
import pytest
from numba import njit

from edge_lbp.runtime.kernels import attention as panel


@pytest.fixture(scope="module", params=[16, 32])
def lanes(request):
    return request.param


@pytest.fixture(scope="module")
def product(lanes):
    inner = panel.make_product(lanes)

    @njit
    def run(a, bt, out, scale):
        inner(a, bt, out, scale)

    return run


@pytest.mark.parametrize("rows, length, cols", [(6, 1, 16), (12, 64, 32), (198, 197, 64), (66, 5, 224)])
def test_panels_equal_numpy(product, lanes, rows, length, cols):
    rng = np.random.default_rng(rows + length)
    cols = -(-cols // lanes) * lanes
    a = rng.standard_normal((rows, length + 3)).astype(np.float32)[:, :length]  # strided rows
    bt = rng.standard_normal((length, cols)).astype(np.float32)
    out = np.full((rows + 1, cols + 5), np.nan, np.float32)
    product(a, bt, out, np.float32(0.5))
    want = 0.5 * a.astype(np.float64) @ bt
    np.testing.assert_allclose(out[:rows, :cols], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert np.isnan(out[rows:]).all() and np.isnan(out[:, cols:]).all()  # nothing written outside


def test_an_empty_reduction_gives_zeros(product, lanes):
    out = np.ones((6, lanes), np.float32)
    product(np.zeros((6, 0), np.float32), np.zeros((0, lanes), np.float32), out, np.float32(1))
    assert not out.any()


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "transposed view", "strided rows"])
def test_padded_rounds_each_side_up_with_zeros(layout, transposed):
    base = np.arange(70, dtype=np.float32).reshape(5, 14)
    x = {"contiguous": base[:, :7], "transposed view": np.ascontiguousarray(base[:, :7].T).T,
         "strided rows": base[:, ::2]}[layout]
    want = x.T if transposed else x
    got = njit(lambda x: panel.padded(x, 6, 16))(want)
    assert got.shape == ((12, 16) if transposed else (6, 16)) and got.flags.c_contiguous  # (7, 5) and (5, 7)
    np.testing.assert_array_equal(got[:want.shape[0], :want.shape[1]], want)
    assert not got[want.shape[0]:].any() and not got[:, want.shape[1]:].any()
