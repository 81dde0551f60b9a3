"""The residual add and LayerNorm in one pass, and LayerNorm's backward with the residual gradient sum and the bias
gradient (``runtime.norm_passes``): the fused graphs against ONNX Runtime running the unfused graphs and against
the unfused graphs on this engine (whole models: test_fused_graphs.py)."""
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from edge_lbp.core import ops
from edge_lbp.runtime import norm_passes, passes
from edge_lbp.runtime.graph import Graph
from ort_node import run_model

F = onnx.TensorProto.FLOAT
MS = "com.microsoft"


def _model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(i, F, None) for i in inputs],
                              [helper.make_tensor_value_info(o, F, None) for o in outputs], list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)],
                             ir_version=8)


def _close(got, want, what):
    for name, g, w in zip(what, got, want):
        assert g.shape == np.shape(w), name
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * np.abs(w).max(), err_msg=name)


def _forward(residual=True, ln_bias=True, axis=-1):
    """``LayerNorm(r + (bias + h @ w))``, the operand order of ORT's graphs."""
    nodes = [helper.make_node("MatMul", ["h", "w"], ["m"]),
             helper.make_node("Add", ["bias", "m"], ["s1" if residual else "s"])]
    if residual:
        nodes.append(helper.make_node("Add", ["r", "s1"], ["s"]))
    nodes.append(helper.make_node("LayerNormalization", ["s", "g", "beta"] if ln_bias else ["s", "g"],
                                  ["y", "mean", "inv"], axis=axis, epsilon=1e-6))
    return _model(nodes, ["h", "w", "bias", "r", "g", "beta"], ["s", "y", "mean", "inv"])


def _forward_feeds(shape, bias_shape=None, norm_shape=None, seed=0):
    rng = np.random.default_rng(seed)
    rand = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    cols = 24
    norm_shape = norm_shape or (cols,)
    return {"h": rand(*shape), "w": rand(shape[-1], cols), "bias": rand(*(bias_shape or (cols,))),
            "r": rand(*shape[:-1], cols), "g": 1 + rand(*norm_shape), "beta": rand(*norm_shape)}


@pytest.mark.parametrize("residual, ln_bias", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("shape", [(2, 70, 16), (300, 16)], ids=["tokens", "rows"])
def test_add_and_layer_norm_in_one_pass(shape, residual, ln_bias):
    model = _forward(residual, ln_bias)
    fused = norm_passes.layer_norm_into_matmul_add(passes.add_into_matmul(model))
    assert [n.op_type for n in fused.graph.node] == [ops.MATMUL_ADD_LAYER_NORM]
    assert list(fused.graph.node[0].input) == ["h", "w", "bias", "r" if residual else "", "g",
                                               "beta" if ln_bias else ""]
    feeds = _forward_feeds(shape)
    got = Graph(fused).run(feeds)
    _close(got, run_model(model, feeds), ["s", "y", "mean", "inv"])
    _close(got, Graph(model).run(feeds), ["s", "y", "mean", "inv"])


@pytest.mark.parametrize("bias_shape, axis, norm_shape", [((70, 1), -1, None), (None, 1, (70, 24))],
                         ids=["broadcast-bias", "norm-over-two-axes"])
def test_other_layouts_take_the_separate_kernels(bias_shape, axis, norm_shape):
    model = _forward(axis=axis)
    fused = norm_passes.layer_norm_into_matmul_add(passes.add_into_matmul(model))
    assert [n.op_type for n in fused.graph.node] == [ops.MATMUL_ADD_LAYER_NORM]
    feeds = _forward_feeds((2, 70, 16), bias_shape, norm_shape)
    _close(Graph(fused).run(feeds), run_model(model, feeds), ["s", "y", "mean", "inv"])


def test_norm_of_a_computed_scale_is_left_alone():
    model = _forward()
    model.graph.node.insert(2, helper.make_node("Identity", ["g0"], ["g"]))
    model.graph.input.append(helper.make_tensor_value_info("g0", F, None))
    fused = norm_passes.layer_norm_into_matmul_add(passes.add_into_matmul(model))
    assert "LayerNormalization" in [n.op_type for n in fused.graph.node]


def _backward(axes, residual=True, grad_read_elsewhere=False):
    """ORT's backward of a residual stream through a LayerNorm: ``t = Sum(Identity(u), LNGrad(dy, x, ...)[0])``
    and a projection's bias gradient ``ReduceSum(Identity(t), axes)``."""
    nodes = [helper.make_node("LayerNormalizationGrad", ["dy", "x", "g", "mean", "inv"], ["dx", "dg", "db"],
                              domain=MS, axis=-1)]
    if residual:
        nodes += [helper.make_node("Identity", ["u"], ["u0"]), helper.make_node("Sum", ["u0", "dx"], ["t"])]
    else:
        nodes.append(helper.make_node("Identity", ["dx"], ["t"]))
    nodes += [helper.make_node("Identity", ["t"], ["t1"]),
              helper.make_node("ReduceSum", ["t1", "axes"], ["bias_grad"], keepdims=0)]
    outputs = ["t", "dg", "db", "bias_grad"] + (["dx"] if grad_read_elsewhere else [])
    return _model(nodes, ["dy", "x", "g", "mean", "inv", "u"], outputs,
                  [numpy_helper.from_array(np.array(axes, np.int64), "axes")])


def _backward_feeds(shape, seed=0):
    rng = np.random.default_rng(seed)
    rand = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    x = 3 * rand(*shape) + 1
    mean = x.mean(axis=-1, keepdims=True)
    inv = (1 / np.sqrt(x.var(axis=-1, keepdims=True) + 1e-6)).astype(np.float32)
    return {"dy": rand(*shape), "x": x, "g": 1 + rand(shape[-1]), "mean": mean, "inv": inv, "u": rand(*shape)}


# 2 x 197 rows: blocks of rows that do not divide evenly; axes [0] on 3-D: numpy's sum instead of the pass's.
@pytest.mark.parametrize("shape, axes", [((2, 197, 48), [0, 1]), ((300, 24), [0]), ((2, 6, 8), [0]),
                                         ((3, 5, 16), [-3, -2])])
@pytest.mark.parametrize("residual", [True, False], ids=["residual", "no-residual"])
def test_layer_norm_grad_with_residual_and_bias_gradient(shape, axes, residual):
    model = _backward(axes, residual)
    fused = norm_passes.norm_passes(model)
    kinds = [n.op_type for n in fused.graph.node]
    assert kinds.count(ops.LAYER_NORM_GRAD_ADD) == 1
    assert not {"LayerNormalizationGrad", "Sum", "ReduceSum"} & set(kinds)
    feeds = _backward_feeds(shape)
    got = Graph(fused).run(feeds)
    names = ["t", "dg", "db", "bias_grad"]
    _close(got, run_model(model, feeds), names)
    _close(got, Graph(model).run(feeds), names)
    assert got[3].dtype == np.float32


def test_norm_gradient_read_elsewhere_is_left_alone():
    """The Sum stays, so the bias gradient sums the Sum's output, not the norm gradient's: nothing to fold."""
    model = _backward([0, 1], grad_read_elsewhere=True)
    assert norm_passes.norm_passes(model) is model


def test_sums_do_not_depend_on_the_thread_count():
    import numba

    fused = Graph(norm_passes.norm_passes(_backward([0, 1])))
    feeds = _backward_feeds((4, 197, 32), seed=1)
    before = numba.get_num_threads()
    try:
        results = []
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            results.append(fused.run(feeds))
    finally:
        numba.set_num_threads(before)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
