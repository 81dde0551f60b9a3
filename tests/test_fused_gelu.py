"""GELU's backward with the bias-gradient sum in one kernel (``runtime.passes.sum_bias_gradient_with_gelu_grad``):
the fused node against ONNX Runtime's unfused pair, and the pass on small graphs (whole models:
test_fused_graphs.py)."""
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from edge_lbp.core import ops
from edge_lbp.runtime import passes
from edge_lbp.runtime.graph import Graph
from ort_node import run_node

MS = "com.microsoft"
F = onnx.TensorProto.FLOAT


def _pair_model(axes, keepdims=0, axes_as_input=True):
    """BiasGeluGrad_dX(dy, x, b) -> dx; ReduceSum(dx, axes) -> db; both graph outputs, as in ORT's backward."""
    reduce_inputs = ["dx", "axes"] if axes_as_input else ["dx"]
    reduce_attrs = {} if axes_as_input else {"axes": axes}
    nodes = [helper.make_node("BiasGeluGrad_dX", ["dy", "x", "b"], ["dx"], name="act_Grad/BiasGeluGrad_dX",
                              domain=MS),
             helper.make_node("ReduceSum", reduce_inputs, ["db"], name="act_Grad/ReduceSum", keepdims=keepdims,
                              **reduce_attrs)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(i, F, None) for i in ("dy", "x", "b")],
                              [helper.make_tensor_value_info(o, F, None) for o in ("dx", "db")],
                              [numpy_helper.from_array(np.array(axes, np.int64), "axes")] if axes_as_input else [])
    opset = 17 if axes_as_input else 12
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)])


def _inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    return {"dy": rng.standard_normal(shape).astype(np.float32),
            "x": (2 * rng.standard_normal(shape)).astype(np.float32),
            "b": rng.standard_normal(shape[-1]).astype(np.float32)}


def _ort_pair(feeds, axes):
    """ORT's BiasGeluGrad_dX on one node, and the sum of its output: the unfused reference."""
    node = helper.make_node("BiasGeluGrad_dX", ["dy", "x", "b"], ["dx"], domain=MS)
    (dx,) = run_node(node, [feeds["dy"], feeds["x"], feeds["b"]])
    return dx, dx.sum(axis=tuple(axes), dtype=np.float64)


# 197 x 2 rows: more than one block of summed rows, the last one partial.
@pytest.mark.parametrize("shape, axes", [((2, 197, 48), [1, 0]), ((3, 5, 16), [0, 1]), ((70, 24), [0]),
                                         ((2, 3, 4, 8), [0, 1, 2]), ((2, 6, 8), [0]), ((2, 6, 8), [-3, -2])])
def test_fused_node_matches_ort(shape, axes):
    """Leading axes sum in the kernel's pass; other axes (the (2, 6, 8) over [0]) fall back to a separate sum."""
    fused = passes.sum_bias_gradient_with_gelu_grad(_pair_model(axes))
    assert [(n.domain, n.op_type) for n in fused.graph.node] == [(ops.DOMAIN, ops.BIAS_GELU_GRAD_SUM)]
    feeds = _inputs(shape)
    dx, db = Graph(fused).run(feeds)
    want_dx, want_db = _ort_pair(feeds, axes)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-6)
    assert db.shape == want_db.shape and db.dtype == np.float32
    np.testing.assert_allclose(db, want_db, rtol=1e-5, atol=1e-5 * np.abs(want_db).max())


def test_fused_sum_does_not_depend_on_the_thread_count():
    import numba

    fused = Graph(passes.sum_bias_gradient_with_gelu_grad(_pair_model([1, 0])))
    feeds = _inputs((4, 197, 32), seed=1)
    before = numba.get_num_threads()
    try:
        sums = []
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            sums.append(fused.run(feeds)[1])
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(sums[0], sums[1])


def test_pass_reads_axes_of_an_attribute_as_before_opset_13():
    fused = passes.sum_bias_gradient_with_gelu_grad(_pair_model([0, 1], axes_as_input=False))
    assert [n.op_type for n in fused.graph.node] == [ops.BIAS_GELU_GRAD_SUM]
    assert list(helper.get_attribute_value(fused.graph.node[0].attribute[0])) == [0, 1]


@pytest.mark.parametrize("model", [_pair_model([1, 0], keepdims=1), _pair_model([])], ids=["keepdims", "no-axes"])
def test_pass_leaves_other_sums_alone(model):
    assert passes.sum_bias_gradient_with_gelu_grad(model) is model
