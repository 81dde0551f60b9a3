"""Dropout, DropoutGrad and RandomUniformLike: ONNX semantics, checked exactly where nothing is random (ratio 0,
inference mode, a given mask) and statistically against ONNX Runtime where it is (the two generators differ)."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from edge_lbp.runtime import registry
from edge_lbp.runtime.graph import Graph
from edge_lbp.runtime.kernels.stochastic import RandomStream
from ort_node import run_node

MS = "com.microsoft"
X = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)  # 16384 draws per call
TRUE, FALSE = np.array(True), np.array(False)


def _node(op, n_in, n_out=1, domain="", **attrs):
    return helper.make_node(op, [f"x{i}" for i in range(n_in)], [f"y{i}" for i in range(n_out)], name=f"test_{op}",
                            domain=domain, **attrs)


def _kernel(proto, seed=0):
    return registry.build(proto, RandomStream(seed))


def _ratio(r):
    return np.array(r, np.float32)


@pytest.mark.parametrize("inputs", [[X], [X, _ratio(0.4)], [X, _ratio(0.4), FALSE], [X, _ratio(0.0), TRUE]],
                         ids=["default", "ratio-only", "inference", "ratio-0-training"])
def test_dropout_without_drops_is_exactly_ort(inputs):
    proto = _node("Dropout", len(inputs), 2)
    ours, ref = _kernel(proto)(*inputs), run_node(proto, inputs)
    for got, want in zip(ours, ref):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(ours[0], X)


def _drop_fraction_bound(ratio, n):
    return 5 * np.sqrt(ratio * (1 - ratio) / n)  # 5 standard deviations of a binomial fraction


@pytest.mark.parametrize("ratio", [0.1, 0.5])
def test_dropout_in_training_drops_and_scales_like_ort(ratio):
    proto = _node("Dropout", 3, 2)
    inputs = [X, _ratio(ratio), TRUE]
    for out, mask in (_kernel(proto)(*inputs), run_node(proto, inputs)):
        assert mask.dtype == np.bool_ and out.dtype == np.float32
        assert abs((1 - mask.mean()) - ratio) < _drop_fraction_bound(ratio, X.size)
        np.testing.assert_allclose(out[mask], X[mask] / np.float32(1 - ratio), rtol=1e-6)
        assert not out[~mask].any()


def test_dropout_is_reproducible_from_the_stream_seed():
    proto = _node("Dropout", 3, 2)
    inputs = [X, _ratio(0.5), TRUE]
    first, again, other = (_kernel(proto, seed)(*inputs)[1] for seed in (3, 3, 4))
    np.testing.assert_array_equal(first, again)
    assert (first != other).mean() > 0.4
    run = _kernel(proto, 3)
    assert (run(*inputs)[1] != run(*inputs)[1]).mean() > 0.4  # successive calls draw anew


@pytest.mark.parametrize("ratio, training",
                         [(0.25, TRUE), (0.25, FALSE), (0.0, TRUE), (0.25, None), (None, None)])
def test_dropout_grad_matches_ort(ratio, training):
    mask = np.random.default_rng(1).random(X.shape) >= (0.5 if ratio is None else ratio)
    inputs = [X, mask] + [v for v in (None if ratio is None else _ratio(ratio), training) if v is not None]
    proto = _node("DropoutGrad", len(inputs), domain=MS)
    (got,), (want,) = _kernel(proto)(*inputs), run_node(proto, inputs)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_dropout_rejects_a_ratio_of_one():
    with pytest.raises(ValueError, match=r"ratio 1.0 is outside \[0, 1\)"):
        _kernel(_node("Dropout", 3, 2))(X, _ratio(1.0), TRUE)


@pytest.mark.parametrize("attrs", [{}, {"low": -2.0, "high": 3.0},
                                   {"low": 0.5, "high": 0.75, "dtype": TensorProto.FLOAT}])
def test_random_uniform_like_has_ort_distribution(attrs):
    proto = _node("RandomUniformLike", 1, **attrs)
    low, high = attrs.get("low", 0.0), attrs.get("high", 1.0)
    mean, sd = (low + high) / 2, (high - low) / np.sqrt(12)
    for (y,) in (_kernel(proto)(X), run_node(proto, [X])):
        assert y.dtype == np.float32 and y.shape == X.shape
        # [low, high) before rounding: low + u * (high - low) in float32 can round up to high (ORT's too).
        assert y.min() >= low and y.max() <= high
        assert abs(y.mean() - mean) < 5 * sd / np.sqrt(y.size)
        assert abs(y.std() - sd) < 0.02 * sd
        # Uniform, not merely the right moments: every tenth of the range holds about a tenth of the draws.
        counts = np.histogram(y, bins=10, range=(low, high))[0] / y.size
        assert np.abs(counts - 0.1).max() < 5 * np.sqrt(0.09 / y.size)


def test_random_uniform_like_seed_attribute_fixes_the_sequence():
    proto = _node("RandomUniformLike", 1, seed=1.5)
    a, b = _kernel(proto, seed=0), _kernel(proto, seed=99)  # the attribute wins over the graph's stream
    np.testing.assert_array_equal(a(X)[0], b(X)[0])


def _drop_path_graph():
    """Swin's drop-path as HF exports it: keep = Floor(keep_prob + U[0, 1)), y = x / keep_prob * keep."""
    nodes = [helper.make_node("RandomUniformLike", ["x"], ["u"], dtype=TensorProto.FLOAT),
             helper.make_node("Add", ["u", "keep_prob"], ["s"]), helper.make_node("Floor", ["s"], ["keep"]),
             helper.make_node("Div", ["x", "keep_prob"], ["scaled"]),
             helper.make_node("Mul", ["scaled", "keep"], ["y"])]
    graph = helper.make_graph(nodes, "drop_path", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [helper.make_tensor("keep_prob", TensorProto.FLOAT, [], [0.75])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_drop_path_graph_follows_its_stream():
    """A graph's random kernels draw from the stream it was given; reseeding with the same key repeats a pass."""
    stream = RandomStream(0)
    graph = Graph(_drop_path_graph(), random=stream)
    x = np.ones((20000,), np.float32)
    stream.reseed(5, 0, 1)
    (first,) = graph.run({"x": x})
    (second,) = graph.run({"x": x})
    stream.reseed(5, 0, 1)
    (again,) = graph.run({"x": x})
    np.testing.assert_array_equal(first, again)
    assert (first != second).any()
    assert set(np.unique(first).tolist()) == {0.0, np.float32(1 / 0.75)}
    assert abs((first == 0).mean() - 0.25) < _drop_fraction_bound(0.25, x.size)
