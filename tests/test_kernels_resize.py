"""Resize against ONNX Runtime running the same node, in every mode the kernel takes; ResizeGrad (ours: ORT has
no CPU kernel) as the adjoint of ORT's Resize, <Resize(x), dy> = <x, ResizeGrad(dy)> for every x and dy, checked
on a basis so that each of its entries is compared."""
import numpy as np
import pytest
from onnx import helper

import edge_lbp.runtime.kernels.resize  # noqa: F401  (registers the kernels)
from edge_lbp.core import ops
from edge_lbp.runtime.registry import attributes, lookup
from ort_node import run_node

MODES = [
    dict(mode="cubic", coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.75),  # DINOv2's export
    dict(mode="cubic", coordinate_transformation_mode="align_corners", cubic_coeff_a=-0.5, exclude_outside=1),
    dict(mode="cubic", coordinate_transformation_mode="pytorch_half_pixel"),
    dict(mode="linear", coordinate_transformation_mode="half_pixel"),
    dict(mode="linear", coordinate_transformation_mode="asymmetric"),
    dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
    dict(mode="nearest", coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_ceil"),
    dict(mode="nearest"),
]
# (input shape, sizes or None, scales or None)
SHAPES = [((1, 3, 8, 8), (1, 3, 12, 12), None), ((2, 2, 6, 5), (2, 2, 4, 9), None),
          ((1, 2, 5, 7), None, (1.0, 1.0, 1.5, 0.6)), ((2, 3, 4, 4), None, (1.0, 1.0, 1.0, 1.0))]


def _node(op, names, attrs, domain=""):
    return helper.make_node(op, names, ["y"], name=f"test/{op}", domain=domain, **attrs)


def _kernel(node):
    return lookup(node.domain, node.op_type)(attributes(node), node)


def _extra(sizes, scales):
    return (None if scales is None else np.array(scales, np.float32),
            None if sizes is None else np.array(sizes, np.int64))


@pytest.mark.parametrize("shape, sizes, scales", SHAPES)
@pytest.mark.parametrize("attrs", MODES, ids=lambda a: "-".join(str(v) for v in a.values()))
def test_resize_matches_ort_and_its_gradient_is_the_adjoint(attrs, shape, sizes, scales):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    scale_input, size_input = _extra(sizes, scales)
    names = ["x", "", "scales"] if sizes is None else ["x", "", "", "sizes"]
    node = _node("Resize", names, attrs)
    inputs = [x, None, scale_input, size_input][:len(names)]
    (want,) = run_node(node, inputs)
    (got,) = _kernel(node)(*inputs)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    grad = _kernel(_node(ops.RESIZE_GRAD, ["dy", "shape", *names[1:]], attrs, ops.DOMAIN))
    # Row j of ResizeGrad's matrix is ORT's Resize of the j-th basis vector: run ORT on all of them at once.
    size = int(np.prod(shape))
    basis = np.eye(size, dtype=np.float32).reshape(size, *shape)
    batched = [np.array([size * shape[0], *shape[1:]], np.int64)]
    flat = basis.reshape(size * shape[0], *shape[1:])
    if sizes is not None:
        batched = [np.array([size * shape[0], *sizes[1:]], np.int64)]
    (images,) = run_node(node, [flat, None, scale_input, *batched][:len(names)])
    images = images.reshape(size, *want.shape)
    dy = rng.standard_normal(want.shape).astype(np.float32)
    (dx,) = grad(dy, np.array(shape, np.int64), None, scale_input, size_input)
    assert dx.shape == x.shape
    expected = np.tensordot(images, dy, axes=dy.ndim).reshape(shape)
    np.testing.assert_allclose(dx, expected, rtol=1e-5, atol=1e-5)


def test_unsupported_attributes_fail_at_load_naming_the_node():
    with pytest.raises(ValueError, match="test/Resize.*tf_crop_and_resize"):
        _kernel(_node("Resize", ["x", "", "scales"], dict(coordinate_transformation_mode="tf_crop_and_resize")))
