"""Plumbing kernels (elementwise, shape, optimizer) against ONNX Runtime on the same node and inputs."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_lbp.runtime import registry
import edge_lbp.runtime.kernels  # noqa: F401  (registers every kernel)
from ort_node import run_node

RNG = np.random.default_rng(7)
MS = "com.microsoft"
I64_MAX, I64_MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min


def f32(*shape, positive=False):
    x = RNG.standard_normal(shape).astype(np.float32)
    return np.abs(x) + np.float32(0.1) if positive else x


def i64(*values):
    return np.array(values, dtype=np.int64)


def node(op, n_in, n_out=1, domain="", **attrs):
    inputs = [f"x{i}" if i is not None else "" for i in (range(n_in) if isinstance(n_in, int) else n_in)]
    return helper.make_node(op, inputs, [f"y{i}" for i in range(n_out)], name=f"test_{op}", domain=domain, **attrs)


def kernel(proto):
    factory = registry.lookup(proto.domain, proto.op_type)
    assert factory is not None, f"no kernel for {proto.domain}::{proto.op_type}"
    return factory(registry.attributes(proto), proto)


def check(proto, inputs, opset=17, rtol=1e-6, atol=1e-6):
    ours = kernel(proto)(*[None if x is None else np.array(x) for x in inputs])
    ref = run_node(proto, inputs, opset=opset)
    assert len(ours) == len(ref)
    for got, want in zip(ours, ref):
        assert isinstance(got, np.ndarray)
        assert (got.dtype, got.shape) == (want.dtype, want.shape)
        if got.dtype.kind == "f":
            np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
        else:
            np.testing.assert_array_equal(got, want)
    return ours


ELEMENTWISE = [
    (node("Add", 2), [f32(2, 3, 4), f32(4)]),
    (node("Add", 2), [f32(2, 1, 4), f32(3, 1)]),
    (node("Add", 2), [np.array(2.5, np.float32), np.array(1.0, np.float32)]),
    (node("Add", 2), [i64(2, 3, 4), i64(1)]),
    (node("Sub", 2), [f32(3, 4), f32(3, 1)]),
    (node("Mul", 2), [f32(2, 3), f32(2, 3)]),
    (node("Mul", 2), [i64(3, 5), i64(2)]),
    (node("Div", 2), [f32(2, 3), f32(3, positive=True)]),
    (node("Div", 2), [i64(7, -7, 7, -7, 6, 0), i64(2, 2, -2, -2, -3, 5)]),
    (node("Div", 2), [np.array(12, np.int64), np.array(5, np.int64)]),
    (node("Neg", 1), [f32(2, 3)]),
    (node("Neg", 1), [i64(3, -4)]),
    (node("Sqrt", 1), [f32(4, 5, positive=True)]),
    (node("Pow", 2), [f32(3, 4, positive=True), np.array(2.0, np.float32)]),
    (node("Pow", 2), [f32(3, 4, positive=True), f32(4)]),
    (node("Pow", 2), [f32(3, 4), np.array(3, np.int64)]),
    (node("Equal", 2), [i64(1, 2, 3), i64(2)]),
    (node("Equal", 2), [np.array([[1.0], [2.0]], np.float32), np.array([1.0, 2.0, 3.0], np.float32)]),
    (node("Where", 3), [np.array([True, False, True]), f32(2, 3), f32(1)]),
    (node("Where", 3), [np.array([[True], [False]]), i64(1, 2, 3), i64(-1)]),
    (node("Not", 1), [np.array([[True, False], [False, False]])]),
    (node("GreaterOrEqual", 2), [np.array([1.0, 2.0, -3.0], np.float32), np.array([1.0, 2.5, -4.0], np.float32)]),
    (node("GreaterOrEqual", 2), [i64(1, 5, -2), i64(2)]),
    (node("Less", 2), [np.array([1.0, 2.0, -3.0], np.float32), np.array([1.0, 2.5, -4.0], np.float32)]),
    (node("Less", 2), [f32(3, 4), np.array(0.8, np.float32)]),
    (node("Less", 2), [i64(1, 5, -2), i64(2)]),
    (node("Floor", 1), [np.array([-2.5, -1.0, -0.2, 0.0, 0.7, 3.0], np.float32)]),
    (node("Floor", 1), [f32(3, 4) * np.float32(5)]),
    (node("Mod", 2), [i64(7, -7, 7, -7, 0, 12), i64(3, 3, -3, -3, 4, 5)]),
    (node("Mod", 2, fmod=1), [i64(7, -7, 7, -7), i64(3, 3, -3, -3)]),
    (node("Mod", 2, fmod=1),
     [np.array([5.5, -5.5, 5.5, -0.5], np.float32), np.array([2.0, 2.0, -2.0, 0.3], np.float32)]),
    (node("Mod", 2), [i64(9, -9), np.array(4, np.int64)]),
    (node("Cast", 1, to=TensorProto.INT64), [np.array([-2.7, -0.5, 0.5, 3.9], np.float32)]),
    (node("Cast", 1, to=TensorProto.FLOAT), [i64(-3, 0, 5)]),
    (node("Cast", 1, to=TensorProto.BOOL), [np.array([0.0, -1.5, 2.0], np.float32)]),
    (node("Cast", 1, to=TensorProto.FLOAT), [np.array([True, False])]),
    (node("Cast", 1, to=TensorProto.INT32), [i64(1, -2)]),
    (node("Cast", 1, to=TensorProto.DOUBLE), [f32(3)]),
    (node("Sum", 1), [f32(2, 3)]),
    (node("Sum", 2), [f32(2, 3), f32(3)]),
    (node("Sum", 3), [f32(2, 1, 3), f32(4, 1), f32(2, 4, 3)]),
    (node("Identity", 1), [f32(2, 2)]),
    (node("Identity", 1), [i64(4, 5)]),
    (node("Scale", 2, domain=MS, scale_down=1), [f32(2, 3), np.array(6, np.int64)]),
    (node("Scale", 2, domain=MS, scale_down=0), [f32(2, 3), np.array(6, np.int64)]),
    (node("Scale", 2, domain=MS, scale_down=1), [f32(4), np.array(0.3, np.float32)]),
    (node("Scale", 2, domain=MS), [f32(4), np.array([1.7], np.float32)]),
]


@pytest.mark.parametrize("proto, inputs", ELEMENTWISE, ids=lambda v: getattr(v, "op_type", ""))
def test_elementwise_matches_ort(proto, inputs):
    check(proto, inputs)


X = f32(2, 3, 4, 5)
SHAPE = [
    (node("Reshape", 2), [X, i64(0, -1, 5)], 17),
    (node("Reshape", 2), [X, i64(-1, 20)], 17),
    (node("Reshape", 2, allowzero=1), [X, i64(6, 20)], 17),
    (node("Reshape", 2), [X, i64(2, 0, 0, 5)], 17),
    (node("Shape", 1), [X], 17),
    (node("Shape", 1, start=1), [X], 17),
    (node("Shape", 1, start=-2), [X], 17),
    (node("Shape", 1, start=1, end=-1), [X], 17),
    (node("Shape", 1, start=-10, end=10), [X], 17),
    (node("Size", 1), [X], 17),
    (node("Flatten", 1), [X], 17),
    (node("Flatten", 1, axis=0), [X], 17),
    (node("Flatten", 1, axis=-1), [X], 17),
    (node("Flatten", 1, axis=4), [X], 17),
    (node("Transpose", 1, perm=[0, 2, 1, 3]), [X], 17),
    (node("Transpose", 1, perm=[3, 0, 2, 1]), [X], 17),
    (node("Transpose", 1), [X], 17),
    (node("Slice", 3), [X, i64(1, 0), i64(2, 2)], 17),
    (node("Slice", 4), [X, i64(1, -3), i64(I64_MAX, -1), i64(-1, 2)], 17),
    (node("Slice", 5), [X, i64(-1, 3), i64(I64_MIN, 0), i64(1, 3), i64(-1, -2)], 17),
    (node("Slice", 5), [X, i64(0), i64(5), i64(-1), i64(2)], 17),
    (node("Slice", 5), [X, i64(-10), i64(-20), i64(1), i64(-1)], 17),
    (node("Slice", 5), [X, i64(100), i64(-100), i64(2), i64(-2)], 17),
    (node("Slice", (0, 1, 2, None, 4)), [X, i64(1), i64(3), None, i64(1)], 17),
    (node("SliceGrad", 6, domain=MS),
     [f32(1, 2, 4, 5), i64(2, 3, 4, 5), i64(1, 0), i64(3, 2), i64(0, 1), i64(1, 1)], 17),
    (node("SliceGrad", 6, domain=MS), [f32(2, 3, 2, 5), i64(2, 3, 4, 5), i64(-1), i64(I64_MIN), i64(-2), i64(-2)], 17),
    (node("SliceGrad", 4, domain=MS), [f32(1, 3, 4, 5), i64(2, 3, 4, 5), i64(1), i64(2)], 17),
    (node("Pad", 2), [X, i64(0, 1, 2, 0, 1, 0, 1, 3)], 17),
    (node("Pad", 3), [X, i64(0, 0, -1, 2, 0, -1, 1, -2), np.array(1.5, np.float32)], 17),
    (node("Pad", 2, mode="reflect"), [X, i64(0, 0, 2, 3, 0, 0, 1, 2)], 17),
    (node("Pad", 2, mode="edge"), [X, i64(1, 0, 2, 0, 0, 1, 0, 4)], 17),
    (node("Pad", 4), [X, i64(1, -1, 2, 0), np.array(-2.0, np.float32), i64(-1, 1)], 18),
    (node("Pad", (0, 1, None, 3)), [X, i64(2, 2), None, i64(2)], 18),
    (node("Pad", 2), [i64(1, 2, 3), i64(2, -1)], 17),
    (node("Range", 3), [np.array(0, np.int64), np.array(7, np.int64), np.array(2, np.int64)], 17),
    (node("Range", 3), [np.array(5, np.int64), np.array(-3, np.int64), np.array(-3, np.int64)], 17),
    (node("Range", 3), [np.array(4, np.int64), np.array(2, np.int64), np.array(1, np.int64)], 17),
    (node("Range", 3), [np.array(0.5, np.float32), np.array(2.0, np.float32), np.array(0.25, np.float32)], 17),
    (node("GlobalAveragePool", 1), [X], 17),
    (node("GlobalAveragePool", 1), [f32(2, 3, 7)], 17),
    (node("MaxPool", 1, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), [f32(2, 3, 9, 8)], 17),  # a stem
    (node("MaxPool", 1, kernel_shape=[2, 2], strides=[2, 2]), [f32(1, 2, 7, 6)], 17),
    (node("MaxPool", 1, kernel_shape=[3, 2], strides=[2, 3], pads=[0, 1, 1, 0], ceil_mode=1), [f32(1, 2, 8, 9)], 17),
    (node("MaxPool", 1, kernel_shape=[3, 3], dilations=[2, 1], pads=[2, 1, 2, 1]), [f32(1, 2, 7, 5)], 17),
    (node("MaxPool", 1, kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"), [f32(1, 2, 8, 7)], 17),
    (node("MaxPool", 1, kernel_shape=[2, 3], strides=[1, 2], auto_pad="SAME_LOWER"), [f32(1, 2, 5, 6)], 17),
    (node("MaxPool", 1, kernel_shape=[3, 3], auto_pad="VALID"), [f32(1, 2, 5, 6)], 17),
    (node("Squeeze", 2), [f32(1, 3, 1, 2), i64(-2, 0)], 17),
    (node("Squeeze", 1), [f32(1, 3, 1, 2)], 17),
    (node("Unsqueeze", 2), [f32(3, 2), i64(0, -1)], 17),
    (node("Unsqueeze", 2), [f32(3, 2), i64(3, 1)], 17),
    (node("Unsqueeze", 2), [np.array(1.5, np.float32), i64(0)], 17),
    (node("Concat", 3, axis=-1), [f32(2, 3), f32(2, 1), f32(2, 4)], 17),
    (node("Concat", 2, axis=0), [i64(1, 2), i64(3)], 17),
    (node("ConcatTraining", 3, 2, domain=MS, axis=1), [f32(2, 3, 2), f32(2, 1, 2), f32(2, 4, 2)], 17),
    (node("ConcatTraining", 2, 2, domain=MS, axis=-1), [f32(2, 3), f32(2, 5)], 17),
    (node("ConcatTraining", 2, 1, domain=MS, axis=0), [f32(2, 3), f32(1, 3)], 17),
    (node("Split", 2, 3, axis=0), [f32(6, 2), i64(1, 2, 3)], 17),
    (node("Split", 1, 2, axis=-1), [f32(2, 3, 8)], 17),
    (node("Split", 1, 3, axis=1, num_outputs=3), [f32(2, 7)], 18),
    (node("Split", 2, 2, axis=2), [X, i64(4, 0)], 17),
    (node("SplitTraining", 2, 2, domain=MS, axis=1), [f32(2, 5, 3), i64(2, 3)], 17),
    (node("SplitTraining", 2, 3, domain=MS, axis=-1), [f32(2, 6), i64(1, 1, 4)], 17),
    (node("Expand", 2), [f32(3, 1), i64(2, 3, 4)], 17),
    (node("Expand", 2), [f32(2, 1, 4), i64(3, 1)], 17),
    (node("Expand", 2), [i64(1, 2, 3), i64(1)], 17),
    (node("Gather", 2, axis=0), [f32(5, 3), i64(0, 4, -1, 2)], 17),
    (node("Gather", 2, axis=1), [f32(2, 5, 3), np.array([[0, -2], [4, 4]], np.int64)], 17),
    (node("Gather", 2, axis=-1), [f32(2, 5), np.array(3, np.int64)], 17),
    (node("Gather", 2), [i64(10, 20, 30), i64(2, 0)], 17),
    (node("GatherGrad", 3, domain=MS, axis=0), [i64(5, 3), i64(0, 4, 0, -1), f32(4, 3)], 17),
    (node("GatherGrad", 3, domain=MS, axis=1),
     [i64(2, 6, 3), np.array([[1, 1], [-6, 5]], np.int64), f32(2, 2, 2, 3)], 17),
    (node("GatherGrad", 3, domain=MS, axis=-1), [i64(3, 4), np.array(2, np.int64), f32(3)], 17),
    (node("Constant", 0, value=numpy_helper.from_array(f32(2, 3))), [], 17),
    (node("Constant", 0, value=numpy_helper.from_array(i64(-1))), [], 17),
    (node("Constant", 0, value_float=0.25), [], 17),
    (node("Constant", 0, value_floats=[1.0, 2.5]), [], 17),
    (node("Constant", 0, value_int=-3), [], 17),
    (node("Constant", 0, value_ints=[4, 5, 6]), [], 17),
    (node("ConstantOfShape", 1), [i64(2, 3)], 17),
    (node("ConstantOfShape", 1, value=numpy_helper.from_array(i64(1))), [i64(4)], 17),
    (node("ConstantOfShape", 1, value=numpy_helper.from_array(np.array([2.5], np.float32))),
     [np.zeros(0, np.int64)], 17),
    *[(node("BroadcastGradientArgs", 2, 2, domain=MS), [i64(*a), i64(*b)], 17)
      for a, b in [((1, 5, 1, 4), (3, 5, 2, 4)), ((4,), (2, 3, 4)), ((2, 1, 4), (1, 3, 1)), ((3,), (3,)),
                   ((1, 1), (2, 3)), ((2, 3), (1,))]],
    (node("ReduceSum", 2, keepdims=0), [X, i64(1, 0)], 17),
    (node("ReduceSum", 2, keepdims=1), [X, i64(-1, 1)], 17),
    (node("ReduceSum", 1, keepdims=0), [X], 17),
    (node("ReduceSum", 2, keepdims=0), [X, np.zeros(0, np.int64)], 17),
    (node("ReduceSum", 2, noop_with_empty_axes=1), [X, np.zeros(0, np.int64)], 17),
    (node("ReduceSum", 2), [i64(1, 2, 3), i64(0)], 17),
    (node("ReduceMean", 1, axes=[1], keepdims=0), [f32(2, 7, 3)], 17),
    (node("ReduceMean", 1, axes=[-1, 0]), [X], 17),
    (node("ReduceMean", 1, keepdims=0), [X], 17),
    (node("ReduceMean", 2, keepdims=0), [X, i64(2)], 18),
]


@pytest.mark.parametrize("proto, inputs, opset", SHAPE, ids=lambda v: getattr(v, "op_type", ""))
def test_shape_ops_match_ort(proto, inputs, opset):
    check(proto, inputs, opset=opset, rtol=1e-5)


def test_max_pool_drops_a_ceil_mode_window_that_starts_in_the_padding():
    """ONNX's shape inference, its reference evaluator and PyTorch give 3 x 3 here; ONNX Runtime 1.19 returns 4 x 4
    with -FLT_MAX in the extra windows (against its own shape inference): checked against the reference."""
    from onnx.reference import ReferenceEvaluator

    proto = node("MaxPool", 1, kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)
    x = f32(1, 2, 5, 5)
    graph = helper.make_graph([proto], "g", [helper.make_tensor_value_info("x0", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y0", TensorProto.FLOAT, None)])
    want = ReferenceEvaluator(helper.make_model(graph)).run(None, {"x0": x})[0]
    (got,) = kernel(proto)(x)
    assert want.shape == (1, 2, 3, 3)
    np.testing.assert_array_equal(got, want)


def test_string_constant():
    (got,) = kernel(node("Constant", 0, value_strings=["a", "bc"]))()
    (want,) = run_node(node("Constant", 0, value_strings=["a", "bc"]), [])
    assert got.tolist() == want.tolist() == ["a", "bc"]


def test_constant_is_read_only_and_shared():
    run = kernel(node("Constant", 0, value_ints=[1, 2]))
    first, second = run()[0], run()[0]
    assert first is second and not first.flags.writeable


def test_two_dimensional_transpose_is_a_view():
    x = f32(4, 6)
    out = kernel(node("Transpose", 1, perm=[1, 0]))(x)[0]
    assert out.base is x and out.shape == (6, 4)
    np.testing.assert_array_equal(out, x.T)


def test_copying_ops_return_contiguous_arrays():
    x = f32(4, 6)
    outputs = [kernel(node("Transpose", 1, perm=[2, 0, 1]))(f32(2, 3, 4))[0],
               kernel(node("Slice", 5))(x, i64(5), i64(0), i64(1), i64(-2))[0],
               *kernel(node("Split", 2, 2, axis=1))(x, i64(2, 4)),
               kernel(node("Expand", 2))(f32(4, 1), i64(4, 6))[0]]
    assert all(o.flags.c_contiguous and o.flags.writeable for o in outputs)


@pytest.mark.parametrize("proto, message", [
    (node("Cast", 1, to=TensorProto.STRING), "Cast"),
    (node("Reshape", 2, allowzero=2), "allowzero"),
    (node("Split", 1, 2, num_outputs=3), "num_outputs"),
    (node("Constant", 0), "Constant"),
    (node("Scale", 2, domain=MS, scale_down=2), "scale_down"),
    (node("AdamWOptimizer", 6, domain=MS, adam_mode=2), "adam_mode"),
    (node("AdamWOptimizer", 6, domain=MS, adam_mode=0, correct_bias=0), "correct_bias"),
    (node("MaxPool", 1, 2, kernel_shape=[2, 2]), "Indices"),
    (node("MaxPool", 1, kernel_shape=[2, 2, 2]), "3 spatial axes"),
])
def test_unsupported_attributes_fail_at_load(proto, message):
    with pytest.raises(ValueError, match=f"test_{proto.op_type}.*{message}"):
        kernel(proto)


def test_split_lengths_must_cover_the_axis():
    with pytest.raises(ValueError, match="test_SplitTraining"):
        kernel(node("SplitTraining", 2, 2, domain=MS, axis=0))(f32(5), i64(2, 2))


# ---- gradient accumulation and optimizers ----

def test_in_place_accumulator_v2_accumulates_in_place():
    proto = helper.make_node("InPlaceAccumulatorV2", ["buf", "g", "reset"], ["flag", "out"], domain=MS, name="acc")
    run = kernel(proto)
    buffer = f32(3, 4)
    for reset in (True, False, False):
        grad = f32(3, 4)
        before = buffer.copy()
        want = run_node(proto, [before.copy(), grad, np.array([reset])])
        flag, out = run(buffer, grad, np.array([reset]))
        assert out is buffer
        np.testing.assert_array_equal(flag, want[0])
        np.testing.assert_allclose(buffer, want[1], rtol=1e-7)
        np.testing.assert_allclose(buffer, grad if reset else before + grad, rtol=1e-7)


def test_in_place_accumulator_v2_as_in_the_training_graph():
    # The artifacts declare only the flag output and feed lazy_reset_grad; no flag input means accumulate.
    (flag,) = kernel(helper.make_node("InPlaceAccumulatorV2", ["b", "g", "r"], ["flag"], domain=MS))(
        buffer := np.ones(3, np.float32), np.full(3, 2, np.float32), np.array([False]))
    assert flag.dtype == np.bool_ and flag.shape == (1,) and flag[0]
    np.testing.assert_array_equal(buffer, [3, 3, 3])
    kernel(helper.make_node("InPlaceAccumulatorV2", ["b", "g"], ["flag"], domain=MS))(buffer, np.ones(3, np.float32))
    np.testing.assert_array_equal(buffer, [4, 4, 4])


# Small tensors and one above runtime.kernels.optimizer.PARALLEL_FROM: the serial and the parallel passes.
SHAPES = [(3, 4), (5,), (2, 2, 3), (300, 256)]


def test_the_shapes_take_both_passes():
    from edge_lbp.runtime.kernels.optimizer import PARALLEL_FROM

    sizes = [int(np.prod(s)) for s in SHAPES]
    assert min(sizes) < PARALLEL_FROM <= max(sizes)


def state(scale=1.0):
    return [f32(*s) * np.float32(scale) for s in SHAPES]


def adamw_node(n_out=4, n_in=6, **attrs):
    names = ["lr", "step", "weights", "grads", "m1", "m2", "signal"][:n_in]
    outputs = ["flag", "weights_out", "m1_out", "m2_out"][:n_out]
    return helper.make_node("AdamWOptimizer", names, outputs, domain=MS, name="adamw", **attrs)


# The artifacts' attributes first (generate_artifacts' AdamW), then the other modes.
ADAMW_ATTRS = [
    dict(alpha=0.9, beta=0.999, epsilon=1e-6, weight_decay=0.0, correct_bias=1, adam_mode=1),
    dict(alpha=0.8, beta=0.99, epsilon=1e-8, weight_decay=0.05, correct_bias=1, adam_mode=1),
    dict(alpha=0.9, beta=0.999, epsilon=1e-8, weight_decay=0.01, correct_bias=1, adam_mode=0),
    dict(alpha=0.85, beta=0.95, epsilon=1e-7, weight_decay=0.1, correct_bias=1, adam_mode=0),
    dict(),  # the schema defaults: adam_mode 0, weight_decay 1e-2, epsilon 1e-8
    dict(alpha=0.9, beta=0.999, epsilon=1e-6, weight_decay=0.02, correct_bias=0, adam_mode=1),
]


@pytest.mark.parametrize("attrs", ADAMW_ATTRS, ids=lambda a: f"mode{a.get('adam_mode', 0)}-wd{a.get('weight_decay')}")
def test_adamw_matches_ort_over_steps_in_place(attrs):
    proto = adamw_node(**attrs)
    run = kernel(adamw_node(n_out=1, **attrs))  # the optimizer graph declares only the flag output
    weights, m1, m2 = state(), state(0.1), [np.abs(m) * np.float32(0.01) for m in state()]
    ref = [[a.copy() for a in seq] for seq in (weights, m1, m2)]
    objects = [id(a) for a in weights + m1 + m2]
    lr = np.array([0.01], np.float32)
    for step in range(1, 5):
        grads = state()
        (flag,) = run(lr, np.array([step], np.int64), weights, grads, m1, m2)
        want = run_node(proto, [lr, np.array([step], np.int64), ref[0], grads, ref[1], ref[2]])
        ref = [[a.copy() for a in seq] for seq in want[1:]]
        np.testing.assert_array_equal(flag, want[0])
        for ours, theirs in zip((weights, m1, m2), ref):
            for a, b in zip(ours, theirs):
                np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)
    assert [id(a) for a in weights + m1 + m2] == objects


def test_adamw_returns_the_same_sequences():
    weights, grads, m1, m2 = state(), state(), state(0), state(0)
    out = kernel(adamw_node(**ADAMW_ATTRS[0]))(np.array([0.1], np.float32), i64(1), weights, grads, m1, m2)
    assert out[1] is weights and out[2] is m1 and out[3] is m2


@pytest.mark.parametrize("adam_mode", [0, 1])
def test_adamw_one_step_closed_form(adam_mode):
    alpha, beta, eps, wd, lr, t = 0.9, 0.999, 1e-6, 0.03, 0.002, 3
    w, g, m1, m2 = f32(4, 3), f32(4, 3), f32(4, 3) * np.float32(0.1), f32(4, 3, positive=True) * np.float32(0.01)
    w64, g64, m164, m264 = (a.astype(np.float64) for a in (w, g, m1, m2))
    m1_new = alpha * m164 + (1 - alpha) * g64
    m2_new = beta * m264 + (1 - beta) * g64 ** 2
    ac, bc = 1 - alpha ** t, 1 - beta ** t
    if adam_mode == 0:  # torch.optim.AdamW
        w_new = w64 * (1 - lr * wd) - lr * (m1_new / ac) / (np.sqrt(m2_new / bc) + eps)
    else:  # Hugging Face AdamW: bias correction folded into the step size, decay after the update
        w_half = w64 - lr * np.sqrt(bc) / ac * m1_new / (np.sqrt(m2_new) + eps)
        w_new = w_half - lr * wd * w_half
    run = kernel(adamw_node(alpha=alpha, beta=beta, epsilon=eps, weight_decay=wd, correct_bias=1, adam_mode=adam_mode))
    run(np.array([lr], np.float32), i64(t), [w], [g], [m1], [m2])
    np.testing.assert_allclose(m1, m1_new, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(m2, m2_new, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(w, w_new, rtol=1e-5, atol=1e-7)


def test_adamw_update_signal_false_skips_the_step():
    attrs = ADAMW_ATTRS[1]
    weights, grads, m1, m2 = state(), state(), state(0.1), state(0.1)
    before = [a.copy() for a in weights + m1 + m2]
    inputs = [np.array([0.1], np.float32), i64(2), weights, grads, m1, m2, np.array([False])]
    want = run_node(adamw_node(n_in=7, **attrs), [[a.copy() for a in x] if isinstance(x, list) else x for x in inputs])
    flag, *_ = kernel(adamw_node(n_in=7, **attrs))(*inputs)
    np.testing.assert_array_equal(flag, want[0])
    assert not flag[0]
    for a, b in zip(weights + m1 + m2, before):
        np.testing.assert_array_equal(a, b)


def test_sgd_matches_ort_and_updates_in_place():
    proto = helper.make_node("SGDOptimizerV2", ["lr", "w", "g"], ["flag", "w_out"], domain=MS, name="sgd")
    run = kernel(helper.make_node("SGDOptimizerV2", ["lr", "w", "g"], ["flag"], domain=MS))
    weights = state()
    ref, objects = [w.copy() for w in weights], [id(w) for w in weights]
    for lr in (0.1, 0.03):
        grads, before = state(), [w.copy() for w in weights]
        (flag,) = run(np.array([lr], np.float32), weights, grads)
        want = run_node(proto, [np.array([lr], np.float32), ref, grads])
        ref = [w.copy() for w in want[1]]
        np.testing.assert_array_equal(flag, want[0])
        for w, r, b, g in zip(weights, ref, before, grads):
            np.testing.assert_allclose(w, r, rtol=1e-7, atol=1e-8)
            np.testing.assert_array_equal(w, b - np.float32(lr) * g)  # numpy's float32 arithmetic, bit for bit
    assert [id(w) for w in weights] == objects


def test_optimizers_refuse_tensors_they_could_not_update_in_place():
    sgd = kernel(helper.make_node("SGDOptimizerV2", ["lr", "w", "g"], ["flag"], domain=MS, name="sgd"))
    weight = f32(4, 6)
    with pytest.raises(ValueError, match="C-contiguous"):
        sgd(np.array([0.1], np.float32), [weight.T], [f32(6, 4)])


def test_optimizers_reject_mismatched_sequences():
    sgd = kernel(helper.make_node("SGDOptimizerV2", ["lr", "w", "g"], ["flag"], domain=MS, name="sgd"))
    with pytest.raises(ValueError, match="sgd.*length"):
        sgd(np.array([0.1], np.float32), state(), state()[:2])
    with pytest.raises(ValueError, match="sgd.*shape"):
        sgd(np.array([0.1], np.float32), [f32(3)], [f32(3, 1)])


# Shapes above the parallel kernels' threshold (runtime.kernels.elementwise.PARALLEL_SIZE): a residual add, a bias
# along the last axis, the bias first, and a broadcast the parallel loop does not take (numpy's path).
LARGE_BINARY = [((4, 197, 384), (4, 197, 384)), ((4, 197, 384), (384,)), ((384,), (4, 197, 384)),
                ((4, 197, 384), (1, 1, 384)), ((4, 197, 384), (4, 197, 1))]


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("shapes", LARGE_BINARY, ids=str)
def test_large_binary_ops_are_numpys_bits_and_match_ort(op, shapes):
    a, b = f32(*shapes[0], positive=True), f32(*shapes[1], positive=True)
    (got,) = kernel(node(op, 2))(a, b)
    want = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op](a, b)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    check(node(op, 2), [a, b])


def test_large_sum_of_tensors_is_numpys_bits():
    xs = [f32(4, 197, 384) for _ in range(3)]
    (got,) = kernel(node("Sum", 3))(*xs)
    np.testing.assert_array_equal(got, (xs[0] + xs[1]) + xs[2])

