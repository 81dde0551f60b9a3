"""GELU's backward with the bias-gradient sum in one kernel (``runtime.passes.sum_bias_gradient_with_gelu_grad``):
the fused node against ONNX Runtime's unfused pair, the pass on small graphs, and every exported family's fused
training graph against its unfused graph."""
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import edge_lbp
from edge_lbp.core import ops
from edge_lbp.runtime import numba_session, passes
from edge_lbp.runtime.graph import Graph
from engine_check import ZERO_GRADIENT
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


# ---------------------------------------------------------------- every family: fused graph == unfused graph


def _unfused(model):
    return passes.accumulate_in_place(passes.fold_transpose_into_gemm(model))


def _hf_vit():
    from test_export_hf import build

    return build("vit")


FAMILIES = {"vit-tiny": ("vit-tiny", (3, 32, 32), 10), "deit-tiny": ("deit-tiny", (3, 32, 32), 10),
            "swin-tiny": ("swin-tiny", (3, 32, 32), 10),
            "efficientformer-tiny": ("efficientformer-tiny", (3, 32, 32), 10), "hf-vit": (_hf_vit, (3, 32, 32), 5)}


def _steps(folder, shape, classes, steps=3):
    """Losses and gradients of ``steps`` SGD steps of the numba engine on fixed random batches."""
    session = edge_lbp.load(folder, "numba", threads=1)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(steps):
        x = rng.standard_normal((3, *shape)).astype(np.float32)
        y = rng.integers(0, classes, 3)
        loss = session.train_step(x, y)
        out.append((loss, {k: v.copy() for k, v in session.gradients().items()}))
    return session, out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fused_training_graph_matches_the_unfused_graph(tmp_path, monkeypatch, family):
    pytest.importorskip("onnxruntime.training", reason="the export extra is not installed")
    source, shape, classes = FAMILIES[family]
    edge_lbp.export_model(source() if callable(source) else source, tmp_path, lbp="none", optimizer="sgd",
                          lr=0.05)
    fused_session, fused = _steps(tmp_path, shape, classes)
    assert any(s.op_type == ops.BIAS_GELU_GRAD_SUM for s in fused_session.training.steps)
    monkeypatch.setattr(numba_session, "training_passes", _unfused)
    plain_session, plain = _steps(tmp_path, shape, classes)
    assert not any(s.op_type == ops.BIAS_GELU_GRAD_SUM for s in plain_session.training.steps)
    for (loss, grads), (want_loss, want_grads) in zip(fused, plain):
        assert abs(loss - want_loss) <= 1e-5 * abs(want_loss)
        assert grads.keys() == want_grads.keys()
        for name, grad in grads.items():
            want = want_grads[name]
            # An exactly-zero gradient is rounding noise in both graphs: bounded absolutely, not compared.
            scale = 1e-3 if name.endswith(ZERO_GRADIENT) else np.abs(want).max()
            np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-5 * scale, err_msg=name)
