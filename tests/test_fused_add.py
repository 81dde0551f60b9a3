"""Bias and residual adds done in place on a MatMul's product (``runtime.passes.add_into_matmul``): the fused
graph against ONNX Runtime running the unfused graph, and against the unfused graph on this engine bit for bit
(whole models: test_fused_graphs.py)."""
import numpy as np
import onnx
import pytest
from onnx import helper

from edge_lbp.core import ops
from edge_lbp.runtime import passes
from edge_lbp.runtime.graph import Graph
from ort_node import run_model

F = onnx.TensorProto.FLOAT


def _model(nodes, inputs, outputs):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(i, F, None) for i in inputs],
                              [helper.make_tensor_value_info(o, F, None) for o in outputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _block(extra_product_reader=False, extra_sum_reader=False):
    """proj-like ``r + (bias + h @ w)`` and qkv-like ``h @ w2 + bias2``, the operand orders ORT's graphs have."""
    nodes = [helper.make_node("MatMul", ["h", "w"], ["m"], name="proj/MatMul"),
             helper.make_node("Add", ["bias", "m"], ["s"], name="proj/Add"),
             helper.make_node("Add", ["r", "s"], ["y"], name="block/Add"),
             helper.make_node("MatMul", ["h", "w2"], ["m2"], name="qkv/MatMul"),
             helper.make_node("Add", ["m2", "bias2"], ["z"], name="qkv/Add")]
    outputs = ["y", "z"] + (["m"] if extra_product_reader else []) + (["s"] if extra_sum_reader else [])
    return _model(nodes, ["h", "w", "bias", "r", "w2", "bias2"], outputs)


def _feeds(shape=(2, 70, 24), cols=16, bias_shape=None, seed=0):
    rng = np.random.default_rng(seed)
    rand = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return {"h": rand(*shape), "w": rand(shape[-1], cols), "bias": rand(*(bias_shape or (cols,))),
            "r": rand(*shape[:-1], cols), "w2": rand(shape[-1], 3 * cols), "bias2": rand(3 * cols)}


@pytest.mark.parametrize("shape, bias_shape", [((2, 70, 24), None), ((300, 24), None), ((2, 70, 24), (70, 1))],
                         ids=["tokens", "rows", "broadcast-bias"])
def test_fused_adds_match_ort_and_the_unfused_graph(shape, bias_shape):
    """A bias that is not a vector along the last axis (the (70, 1) one) takes numpy's broadcasting adds."""
    model = _block()
    fused = passes.add_into_matmul(model)
    assert [(n.op_type, n.name) for n in fused.graph.node] == [(ops.MATMUL_ADD, "proj/MatMul"),
                                                               (ops.MATMUL_ADD, "qkv/MatMul")]
    assert list(fused.graph.node[0].input) == ["h", "w", "bias", "r"]
    feeds = _feeds(shape, bias_shape=bias_shape)
    got = Graph(fused).run(feeds)
    for g, want in zip(got, run_model(model, feeds)):
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    for g, want in zip(got, Graph(model).run(feeds)):
        np.testing.assert_array_equal(g, want)


def test_product_read_elsewhere_is_not_fused():
    model = _block(extra_product_reader=True)
    fused = passes.add_into_matmul(model)
    assert [n.op_type for n in fused.graph.node] == ["MatMul", "Add", "Add", ops.MATMUL_ADD]


def test_bias_sum_read_elsewhere_keeps_its_residual_add():
    model = _block(extra_sum_reader=True)
    fused = passes.add_into_matmul(model)
    assert [n.op_type for n in fused.graph.node] == [ops.MATMUL_ADD, "Add", ops.MATMUL_ADD]
    feeds = _feeds()
    for g, want in zip(Graph(fused).run(feeds), Graph(model).run(feeds)):
        np.testing.assert_array_equal(g, want)
