"""The edge_lbp op contract: attributes round-trip, and the dense operators equal the reference matrices."""
import numpy as np
import pytest

import lbp_reference as ref
from edge_lbp.core import ops
from edge_lbp.core.wht import Projector


@pytest.mark.parametrize("padding", ["reflect", "zero"])
def test_attributes_round_trip(padding):
    projector = Projector.of((13, 9), 1, 8, "lp-tri:4")
    attrs = ops.node_attributes(projector, padding)
    assert ops.projector_from_attributes(attrs) == (projector, padding)
    as_onnx_gives_them = {k: v.encode() if isinstance(v, str) else v for k, v in attrs.items()}
    assert ops.projector_from_attributes(as_onnx_gives_them) == (projector, padding)


def test_missing_or_malformed_attributes_raise():
    attrs = ops.node_attributes(Projector.of((8, 8), 0, 8, "lp-tri:2"))
    with pytest.raises(ValueError, match="lacks attribute 'block'"):
        ops.projector_from_attributes({k: v for k, v in attrs.items() if k != "block"})
    with pytest.raises(ValueError, match="odd length"):
        ops.projector_from_attributes({**attrs, "pairs": [0, 0, 1]})


@pytest.mark.parametrize("padding", ["reflect", "zero"])
def test_dense_operators_equal_reference(padding):
    projector = Projector.of((7, 5), 2, 4, "lp-tri:3")
    h, w, e, k, pairs = 7, 5, 2, 4, projector.selection.pairs
    mats = ops.dense_operators(projector, padding)
    np.testing.assert_allclose(mats["projection"], ref.projection_matrix(h, w, e, k, pairs), atol=1e-6)
    np.testing.assert_allclose(mats["grad_projection"],
                               ref.projection_matrix(h, w, e, k, pairs, padding, 1 / k ** 2), atol=1e-6)
    np.testing.assert_allclose(mats["reconstruction"], ref.reconstruction_matrix(h, w, e, k, pairs), atol=1e-6)
